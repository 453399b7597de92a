"""The face mask as a DICOM Segmentation (highdicom), for quality control at the archive.

The SEG references the *defaced, de-identified* instances (never the originals),
so it carries no identifier the series itself does not; its UIDs are derived
from the output series' with the same keyed hash, so a resend gives the same SEG.
"""

from __future__ import annotations

from collections.abc import Mapping

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from pediface import __version__
from pediface.errors import MaskingError
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


def face_mask_segmentation(
    volume: Volume, mask: FaceMask, defaced: Mapping[int, Dataset], key: bytes
) -> Dataset:
    """A binary SEG of ``mask`` on the defaced instances of ``volume``'s stack.

    ``defaced`` maps the input instance index (``volume.sources``) to its defaced,
    de-identified dataset. Classic single-frame stacks and single multi-frame
    instances are supported; anything else raises :class:`MaskingError`.
    """
    instances = sorted({s.instance_index for s in volume.sources})
    if len(instances) == len(volume.sources):
        order = sorted(range(len(volume.sources)), key=lambda z: volume.sources[z].instance_index)
        source_images = [defaced[volume.sources[z].instance_index] for z in order]
    elif len(instances) == 1:
        order = sorted(range(len(volume.sources)), key=lambda z: volume.sources[z].frame_index)
        source_images = [defaced[instances[0]]]
    else:
        raise MaskingError("a mask SEG is only made for single-frame or single multi-frame stacks", code="seg")
    for ds in source_images:
        # Type 2 attributes the SEG copies from its sources: present, possibly empty (PS3.3 C.7.1-C.7.2).
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    labels = mask.labels[order]
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
    )
