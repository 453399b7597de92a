"""DICOM header de-identification: PS3.15 Annex E, Basic Application Level Confidentiality Profile.

Pure functions over pydicom datasets, driven by the standard's tables (edition 2026d, vendored in
``tables/``) and by pediface's allow-list of the attributes the table does not list.
:func:`deidentify` returns a new dataset and leaves its input as it was; :func:`remap_uid` and
:func:`pseudonymise` are the keyed replacements it uses, exposed so that other steps derive the
same values, and :func:`lookup_hint` finds a patient missing from a site's lookup table
(:class:`PatientIdLookup`). See :mod:`worker.deid.engine` for the design.
"""

from worker.deid.engine import deidentify
from worker.deid.lookup import PatientIdLookup
from worker.deid.options import DeidOption, DeidPolicy
from worker.deid.pseudonym import lookup_hint, pseudonymise, remap_uid

__all__ = [
    "DeidOption",
    "DeidPolicy",
    "PatientIdLookup",
    "deidentify",
    "lookup_hint",
    "pseudonymise",
    "remap_uid",
]
