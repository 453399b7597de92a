"""pediface: a DICOM gateway that defaces head MRI and de-identifies headers for research sharing.

This package is the top of the house: the ``pediface`` command (:mod:`pediface.cli`) and the demo.
It imports every other layer and nothing imports it (docs/architecture.md).
"""

from common.version import __version__

__all__ = ["__version__"]
