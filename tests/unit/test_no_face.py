"""Series whose field of view holds no face: the evidence, the decision, and one mask per geometry.

The shared GE fMRI run (10 volumes of 15 axial slices through the top of the brain) is the series
without a face; the full-head T1s and the axial Siemens mosaic (down to the orbits) are those
where "no face" must not be believed. The real shipped masker decides what it finds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import MaskingError
from tests.conftest import DICOM, need_shared
from worker.deface.evidence import FACE_REACH_RATIO, field_of_view, no_face_evidence
from worker.deid import DeidPolicy
from worker.pipeline import deface_series, mask_series
from worker.types import Volume
from worker.volume.pixels import stack_volume
from worker.volume.read import read_instances
from worker.volume.stacks import split_series

KEY = b"pediface-unit-test-key-0123456789"
GE = DICOM / "dcm_qa_nih" / "ge_epi_fmri_ax_mr0004"
MOSAIC = DICOM / "dcm_qa_ts" / "siemens_epi_mosaic_9_transfer_syntaxes"
T1 = DICOM / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFS"


def _datasets(folder: Path, limit: int | None = None) -> list:
    need_shared(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".txt" and p.name != "LICENSE")
    return read_instances(files[:limit])


def _volume(folder: Path, limit: int | None = None) -> Volume:
    datasets = _datasets(folder, limit)
    return stack_volume(datasets, split_series(datasets).stacks[0], {})


class Counting:
    """The real masker, counting its predictions."""

    def __init__(self, masker: object) -> None:
        self.masker, self.calls = masker, 0
        self.name = masker.name  # type: ignore[attr-defined]

    def predict(self, volume: Volume):  # noqa: ANN201 - FaceMask
        self.calls += 1
        return self.masker.predict(volume)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("folder", "limit", "reaches"),
    [(GE, 15, False), (MOSAIC, 1, True), (T1, None, True)],
    ids=["ge-fmri-slab", "mosaic-to-the-orbits", "full-head-t1"],
)
def test_the_field_of_view_reaches_the_front_of_the_head_or_not(
    folder: Path, limit: int | None, reaches: bool
) -> None:
    fov = field_of_view(_volume(folder, limit))
    assert fov.head_found and fov.head_width_mm and fov.front_depth_mm is not None
    assert fov.reaches_face is reaches, fov.describe()
    assert (fov.front_depth_mm >= FACE_REACH_RATIO * fov.head_width_mm) is reaches


def test_a_masker_that_finds_no_face_in_a_whole_head_is_not_believed() -> None:
    refusal = MaskingError("no face", code="mask.no_face", details={"face_ml": 10.0, "min_face_ml": 50.0})
    evidence, why = no_face_evidence(_volume(T1), refusal, "sag")
    assert evidence is None and "reaches where faces begin" in why
    other = MaskingError(
        "implausible", code="mask.implausible", details={"face_ml": 10.0, "min_face_ml": 50.0}
    )
    assert no_face_evidence(_volume(GE, 15), other, "ax")[0] is None
    seen, why = no_face_evidence(_volume(GE, 15), refusal, "ax", face_check=lambda volume: True)
    assert seen is None and "face check finds a face" in why


def test_an_fmri_run_gets_one_mask_for_all_its_volumes_and_waits_in_quarantine_by_default(
    shipped_masker,
) -> None:  # noqa: ANN001
    datasets = _datasets(GE)
    counting = Counting(shipped_masker)
    with pytest.raises(MaskingError) as refused:
        mask_series(datasets, counting)
    assert refused.value.code == "mask.no_face" and "no face in field of view" in str(refused.value)
    assert "deface.no_face_in_fov: deidentify" in str(refused.value)
    assert counting.calls == 1  # ten volumes, one geometry, one prediction

    masked = mask_series(datasets, counting, no_face_in_fov="deidentify")
    assert len(masked.stacks) == 10 and len({id(mask) for mask in masked.masks}) == 1
    assert masked.unmasked == frozenset(range(10)) and len(masked.no_face) == 1
    evidence = masked.no_face[0]
    assert evidence.face_ml < evidence.min_face_ml and not evidence.field_of_view.reaches_face
    assert "no face in field of view" in evidence.summary() and "9 more on its grid" in evidence.stacks


def test_a_series_without_a_face_is_sent_de_identified_not_defaced(shipped_masker) -> None:  # noqa: ANN001
    datasets = _datasets(GE)
    result = deface_series(
        datasets,
        shipped_masker,
        DeidPolicy(profile="research"),
        KEY,
        mask_segmentation=True,
        no_face_in_fov="deidentify",
    )
    assert len(result.datasets) == 150 and result.blanked_voxels == 0 and result.segmentation is None
    assert len({str(ds.SeriesInstanceUID) for ds in result.datasets}) == 1
    for source, out in zip(datasets, result.datasets, strict=True):
        assert out.ImageType[0] == "ORIGINAL"  # nothing derived: the pixels are as received
        assert "Clean Recognizable Visual Features (defaced)" not in out.DeidentificationMethod
        assert np.array_equal(out.pixel_array, source.pixel_array)
        assert out.PatientID != source.PatientID and out.SOPInstanceUID != source.SOPInstanceUID
