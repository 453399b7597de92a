"""Reading the instances of a series, and setting aside those that are not part of any volume."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from common.errors import InputError

#: ImageType values (any position) that mark a localizer / scout.
_LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "LOCALISER"}


#: ImageType values that mark a derived reformat or projection rather than acquired slices.
_REFORMAT_TYPES = {"MPR", "REFORMATTED", "PROJECTION IMAGE", "MIP", "MINIP", "CPR", "CURVED", "VOLUME RENDER"}


def read_instances(paths: Sequence[Path]) -> list[Dataset]:
    """Read every file of a series; an unreadable one is an :class:`InputError` naming the file."""
    datasets = []
    for path in paths:
        try:
            datasets.append(dcmread(path))
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise InputError(
                f"{path.name} is not a readable DICOM file: {exc}", code="input.unreadable"
            ) from exc
    if not datasets:
        raise InputError("the series has no instances", code="input.empty")
    return datasets


def classify(ds: Dataset) -> tuple[str, str] | None:
    """Why an instance is not part of any stack (``(kind, detail)``), or None if it is an image to deface."""
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        name = sop_class.name if sop_class else "unknown SOP class"
        return "non-image object", name
    image_type = {str(v).upper().strip() for v in (ds.get("ImageType") or [])}
    if image_type & _LOCALIZER_TYPES:
        return "localizer", "ImageType " + "/".join(sorted(image_type & _LOCALIZER_TYPES))
    if image_type & _REFORMAT_TYPES and "DERIVED" in image_type:
        return "derived reformat", "ImageType " + "/".join(sorted(image_type & _REFORMAT_TYPES))
    return None
