"""DICOM header de-identification: PS3.15 Annex E, Basic Application Level Confidentiality Profile.

Pure functions over pydicom datasets, driven by the standard's tables (edition 2026d, vendored in
``tables/``). :func:`deidentify` returns a new dataset and leaves its input as it was;
:func:`remap_uid` and :func:`pseudonymise` are the keyed replacements it uses, exposed so that
other steps derive the same values. See :mod:`worker.deid.engine` for the design.
"""

from worker.deid.engine import deidentify
from worker.deid.options import DeidOption, DeidPolicy
from worker.deid.pseudonym import pseudonymise, remap_uid

__all__ = ["DeidOption", "DeidPolicy", "deidentify", "pseudonymise", "remap_uid"]
