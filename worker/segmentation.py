"""The face mask as a DICOM Segmentation (highdicom), for quality control at the archive.

The SEG references the *defaced, de-identified* instances (never the originals),
so it carries no identifier the series itself does not; its UIDs are derived
from the output series' with the same keyed hash, so a resend gives the same SEG.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from common.errors import MaskingError
from common.version import __version__
from worker.deid import remap_uid
from worker.types import FaceLabel, FaceMask, Volume

_TYPE2_COPIED = (
    "StudyID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
)

_SEGMENTS = {
    FaceLabel.FACE: ("face", codes.SCT.Face),
    FaceLabel.EARS: ("ears", codes.SCT.Ear),
}


_SHARED_BY_HIGHDICOM = ("PixelMeasuresSequence", "PlaneOrientationSequence")
"""Functional groups highdicom 0.28 reads from a multi-frame source's shared groups, even when the
SEG's geometry is given (Siemens XA and Philips put them per frame)."""


def _shared_pixel_measures(ds: Dataset) -> Dataset:
    """`ds`, or for a multi-frame object with those groups per frame, a shallow copy with them shared.

    The stack is one orientation and spacing (checked when it was split), so frame 1's groups hold
    for all. The copy shares every value with `ds`, which is not changed.
    """
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    missing = [
        k
        for k in _SHARED_BY_HIGHDICOM
        if shared is not None and k not in shared and frames and k in frames[0]
    ]
    if not missing:
        return ds
    new_shared = Dataset()
    for element in shared:
        new_shared.add(element)
    for keyword in missing:
        new_shared.add(frames[0][keyword])
    out = Dataset()  # not copy.copy: a shallow copy of a Dataset shares its elements' dictionary
    for element in ds:
        out.add(element)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    # A new element, not a new value: the element object is shared with `ds`.
    out.add(DataElement(0x52009229, "SQ", DicomSequence([new_shared])))
    return out


def face_mask_segmentation(
    volume: Volume, mask: FaceMask, defaced: Mapping[int, Dataset], key: bytes
) -> Dataset:
    """A binary SEG of ``mask`` on the defaced instances of ``volume``'s stack.

    ``defaced`` maps the input instance index (``volume.sources``) to its defaced,
    de-identified dataset. The SEG's frames are placed by the volume's own geometry (plane
    positions, orientation and pixel measures given explicitly), so that one SEG serves classic
    stacks, enhanced multi-frame objects and mosaics alike, whatever the frame layout of the
    source images.
    """
    instances = sorted({s.instance_index for s in volume.sources})
    source_images = [_shared_pixel_measures(defaced[index]) for index in instances]
    for ds in source_images:
        # Type 2 attributes the SEG copies from its sources: present, possibly empty (PS3.3 C.7.1-C.7.2).
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    labels = mask.labels
    present = [label for label in _SEGMENTS if np.any(labels == label)]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=mask.masker, version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    label_map = np.zeros(labels.shape, dtype=np.uint8)
    for number, label in enumerate(present, start=1):
        name, code = _SEGMENTS[label]
        label_map[labels == label] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=code,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    if not descriptions:
        raise MaskingError("the mask is empty: no SEG to make", code="seg")
    series_uid = str(source_images[0].SeriesInstanceUID)
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(volume.origin, dtype=float)
    spacing_x, spacing_y, spacing_z = (float(v) for v in volume.spacing)
    positions = [
        hd.PlanePositionSequence("PATIENT", [float(v) for v in origin + z * spacing_z * direction[:, 2]])
        for z in range(labels.shape[0])
    ]
    with warnings.catch_warnings():
        # The pseudonym (PF-...) is a one-component Patient Name on purpose, the same as in the series
        # the SEG references; highdicom warns about every such name.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        return hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=label_map,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=remap_uid(f"{series_uid}.seg.series", key),
            series_number=9901,
            sop_instance_uid=remap_uid(f"{series_uid}.seg.instance", key),
            instance_number=1,
            manufacturer="pediface",
            manufacturer_model_name="pediface",
            software_versions=__version__,
            device_serial_number="0",
            series_description="pediface face mask",
            plane_positions=positions,
            plane_orientation=hd.PlaneOrientationSequence(
                "PATIENT", [float(v) for v in (*direction[:, 0], *direction[:, 1])]
            ),
            pixel_measures=hd.PixelMeasuresSequence(
                pixel_spacing=[spacing_y, spacing_x],
                slice_thickness=spacing_z,
                spacing_between_slices=spacing_z,
            ),
        )
