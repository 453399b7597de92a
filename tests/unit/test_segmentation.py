"""The optional face-mask SEG: valid, referencing the defaced instances, carrying no original identifier."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from worker.deface import load_masker
from worker.deid import DeidPolicy
from worker.pipeline import deface_series
from worker.sample import write_sample_series

MODEL = Path(__file__).resolve().parents[2] / "models" / "template-pydeface"
KEY = b"segmentation-test-key-0123456789"


@pytest.fixture(scope="module")
def defaced(tmp_path_factory: pytest.TempPathFactory):
    files = write_sample_series(MODEL / "pydeface_mean_reg2mean.nii.gz", tmp_path_factory.mktemp("s"), 3.0)
    datasets = [pydicom.dcmread(p) for p in files]
    result = deface_series(
        datasets, load_masker("template", MODEL), DeidPolicy(), KEY, mask_segmentation=True
    )
    return datasets, result


def test_seg_is_valid_and_references_the_defaced_series(defaced) -> None:
    originals, result = defaced
    seg = result.segmentation
    assert seg is not None and seg.Modality == "SEG"
    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    read = hd.seg.Segmentation.from_dataset(pydicom.dcmread(BytesIO(buffer.getvalue())))
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for item in read.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {str(ds.SOPInstanceUID) for ds in result.datasets}
    assert read.ReferencedSeriesSequence[0].SeriesInstanceUID == result.datasets[0].SeriesInstanceUID
    assert [d.SegmentLabel for d in read.SegmentSequence] == ["face"]
    # Every masked voxel is in the SEG, and nothing else.
    assert int(np.count_nonzero(read.pixel_array)) == int(np.count_nonzero(result.mask.labels))


def test_seg_carries_no_original_identifier(defaced) -> None:
    originals, result = defaced
    buffer = BytesIO()
    result.segmentation.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    first = originals[0]
    for value in (first.PatientName, first.PatientID, first.StudyInstanceUID, first.SeriesInstanceUID,
                  first.SOPInstanceUID, first.InstitutionName):  # fmt: skip
        assert str(value).encode() not in data
    assert result.segmentation.PatientID == result.datasets[0].PatientID
    assert result.segmentation.StudyInstanceUID == result.datasets[0].StudyInstanceUID
