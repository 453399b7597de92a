"""What surrounds the walked dataset: the refusal of images that may show text, the record of the
method (PatientIdentityRemoved, DeidentificationMethod and its codes) and the file meta information.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from common.errors import DeidentificationError
from common.version import __version__
from worker.deid.elements import copy_element, element_label, joined_text
from worker.deid.options import (
    BASIC_PROFILE_CODE,
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES_CODE,
    OPTION_CODES,
    DeidOption,
    DeidPolicy,
    MethodCode,
)
from worker.deid.table import EDITION
from worker.deid.tags import (
    BURNED_IN_ANNOTATION,
    CONVERSION_TYPE,
    IMAGE_TYPE,
    MEDIA_STORAGE_SOP_CLASS_UID,
    MEDIA_STORAGE_SOP_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
)
from worker.deid.undecoded import dictionary_vr, undecoded
from worker.deid.walker import Walker

#: SOP classes whose pixels are captures of a screen, a film or a document: they may show names,
#: dates and IDs as text, which only pixel cleaning (the Clean Pixel Data option) removes.
SECONDARY_CAPTURE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.5.1.1.29": "Hardcopy Grayscale Image Storage (retired)",
    "1.2.840.10008.5.1.1.30": "Hardcopy Color Image Storage (retired)",
}


#: File meta elements carried over; the others (source, sending and receiving AE titles and
#: presentation addresses, private information) describe the sender and can identify a site.
FILE_META_KEPT = (
    0x00020001,  # FileMetaInformationVersion
    0x00020002,  # MediaStorageSOPClassUID
    0x00020010,  # TransferSyntaxUID
    0x00020012,  # ImplementationClassUID
    0x00020013,  # ImplementationVersionName
)


def top_text(ds: Dataset, number: int) -> str:
    """The text of a top-level element of `ds` (empty when absent); a value it cannot read is refused."""
    try:
        elem = ds.get_item(BaseTag(number))  # undecoded, when nothing decoded it yet
        if type(elem) is RawDataElement and elem.value is not None:
            vr = elem.VR or dictionary_vr(number)
            if vr in ("CS", "UI"):
                # ASCII VRs, read as pydicom would (UIDs lose the spaces around each value),
                # without decoding the element in `ds` for the walker to copy afterwards.
                text = elem.value.decode("latin-1")
                if vr == "UI":
                    text = "\\".join(part.strip() for part in text.split("\\"))
                return text.strip(" \x00")
        if isinstance(elem, RawDataElement):
            elem = ds[BaseTag(number)]
        return joined_text(elem.value).strip(" \x00") if elem is not None else ""
    except Exception:  # noqa: BLE001 - fail closed, and the message may quote the value
        raise DeidentificationError(
            f"cannot read {element_label(number, None)}", code="deid.element"
        ) from None


def refuse_text_in_pixels(ds: Dataset) -> None:
    """Refuse an image whose pixels may show identifying text (PS3.15 E.3.1, Clean Pixel Data).

    Raises
    ------
    DeidentificationError
        If BurnedInAnnotation is YES, or the object is a secondary capture or screen save.
    """
    if top_text(ds, BURNED_IN_ANNOTATION).upper() == "YES":
        raise DeidentificationError(
            "(0028,0301) BurnedInAnnotation is YES: the pixels may show identifying text, and pediface "
            "does not clean pixel data (Clean Pixel Data option), so the series is not forwarded",
            code="deid.burned_in_annotation",
        )
    sop_class = top_text(ds, SOP_CLASS_UID)
    meta = getattr(ds, "file_meta", None)
    if not sop_class and meta is not None:
        sop_class = top_text(meta, MEDIA_STORAGE_SOP_CLASS_UID)
    conversion = top_text(ds, CONVERSION_TYPE).upper()
    image_type = {value.strip().upper() for value in top_text(ds, IMAGE_TYPE).split("\\")}
    if sop_class in SECONDARY_CAPTURE_SOP_CLASSES:
        name: str | None = f"a {SECONDARY_CAPTURE_SOP_CLASSES[sop_class]} object"
    elif conversion == "WSD":
        name = "a workstation screen save ((0008,0064) ConversionType WSD)"
    elif "SCREEN SAVE" in image_type:
        name = "a screen save ((0008,0008) ImageType SCREEN SAVE)"
    elif conversion:
        name = "a secondary capture ((0008,0064) ConversionType is present)"
    else:
        name = None
    if name is not None:
        raise DeidentificationError(
            f"the instance is {name}: captured screens and documents may show identifying text in "
            "their pixels, and pediface does not clean pixel data (Clean Pixel Data option), so the "
            "series is not forwarded",
            code="deid.secondary_capture",
        )


RESEARCH_PRIVATE_DESCRIPTION = "Research profile: private physics beyond Table E.3.10-1"
"""Recorded in (0012,0063) under the research profile, which keeps private attributes that Retain
Safe Private alone would not (an LO value: 64 characters at most)."""


def record_method(out: Dataset, policy: DeidPolicy, defaced: bool) -> None:
    """Add the attributes that record the de-identification (PS3.15 E.1.1, PS3.3 C.7.1.1)."""
    options = policy.ordered_options()
    codes = [BASIC_PROFILE_CODE, *(OPTION_CODES[option] for option in options)]
    descriptions = [
        f"DICOM PS3.15 {EDITION} Basic Application Confidentiality Profile",
        *(option.value for option in options),
    ]
    if policy.research:
        # Retain Safe Private keeps only Table E.3.10-1; the research profile keeps more, and says so.
        descriptions.append(RESEARCH_PRIVATE_DESCRIPTION)
    if defaced:
        codes.append(CLEAN_RECOGNIZABLE_VISUAL_FEATURES_CODE)
        descriptions.append("Clean Recognizable Visual Features (defaced)")
    descriptions.append(f"pediface {__version__}")

    # By tag rather than keyword: this runs for every instance, and the keyword lookups showed.
    out.add_new(0x00120062, "CS", "YES")  # PatientIdentityRemoved
    # Earlier de-identifications, recorded in the input, stay on record before this one.
    previous = out.get("DeidentificationMethod")
    earlier = [value for value in _as_list(previous) if value] if previous else []
    out.add_new(0x00120063, "LO", [*earlier, *descriptions])  # DeidentificationMethod
    items = list(out.get("DeidentificationMethodCodeSequence", []))
    present = {(item.get("CodingSchemeDesignator"), item.get("CodeValue")) for item in items}
    items.extend(_code_item(code) for code in codes if ("DCM", code.value) not in present)
    out.add_new(0x00120064, "SQ", Sequence(items))  # DeidentificationMethodCodeSequence

    if DeidOption.RETAIN_LONGITUDINAL_FULL_DATES in policy.options:
        modified = "UNMODIFIED"
    elif DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in policy.options:
        modified = "MODIFIED"
    else:
        modified = "REMOVED"
    out.add_new(0x00280303, "CS", modified)  # LongitudinalTemporalInformationModified


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _code_item(code: MethodCode) -> Dataset:
    item = Dataset()
    item.add_new(0x00080100, "SH", code.value)  # CodeValue
    item.add_new(0x00080102, "SH", "DCM")  # CodingSchemeDesignator
    item.add_new(0x00080104, "LO", code.meaning)  # CodeMeaning
    return item


def file_meta(source: Dataset, out: Dataset, walker: Walker) -> FileMetaDataset:
    """File meta information for `out`: an allow-list of `source`'s, with the new instance UID."""
    meta = FileMetaDataset()
    for number in FILE_META_KEPT:
        elem = source.get_item(BaseTag(number))
        if elem is not None:
            kept = undecoded(elem, number)
            meta[elem.tag] = kept if kept is not None else copy_element(source[elem.tag])
    new_uid = out.get_item(BaseTag(SOP_INSTANCE_UID))
    if type(new_uid) is RawDataElement and new_uid.value is not None and new_uid.VR == "UI":
        if new_uid.value.strip(b" \x00"):
            # The walker's replacement, still as bytes: the same value under the file meta's tag.
            media_tag = BaseTag(MEDIA_STORAGE_SOP_INSTANCE_UID)
            meta[media_tag] = new_uid._replace(tag=media_tag)
            return meta
    elif out.get("SOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        return meta
    media = source.get(BaseTag(MEDIA_STORAGE_SOP_INSTANCE_UID))
    if media is not None:
        new = walker.element(media, walker.rules.lookup(MEDIA_STORAGE_SOP_INSTANCE_UID), blank=False)
        if new is not None:
            meta.add(new)
    return meta
