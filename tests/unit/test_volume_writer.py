"""Volumes from real vendor series, and pixel-exact write-back of a mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from common.errors import InputError
from tests.conftest import DICOM, UIH, need_shared
from worker.types import Volume
from worker.volume.pixels import build_volume
from worker.volume.read import read_instances
from worker.writer import StackMask, write_back


def blank_instances(
    datasets: list[pydicom.Dataset], volume: Volume, blank: np.ndarray, background: int
) -> list[pydicom.Dataset]:
    """``write_back`` with one stack covering every instance: the copies, in the instances' order."""
    written = write_back(datasets, [StackMask(volume, blank, background)])
    assert sorted(written) == list(range(len(datasets))), "an instance is not in the volume"
    return [written[i] for i in range(len(datasets))]


SERIES_WITH_ONE_STACK = [
    "dcm_qa_uih/uih_t1_gre_fsp_3d_sag",
    "dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFS",
    "dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFP",
]


def _files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name not in ("LICENSE",) and not p.name.endswith(".txt")
    )


def _saved(ds: pydicom.Dataset) -> pydicom.filebase.DicomBytesIO:
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


@pytest.fixture(scope="module")
def uih() -> tuple[list[pydicom.Dataset], list[Path]]:
    need_shared(UIH)
    files = _files(UIH)
    return read_instances(files), files


@pytest.mark.parametrize("name", SERIES_WITH_ONE_STACK)
def test_geometry_and_voxels_match_simpleitk(name: str) -> None:
    folder = need_shared(DICOM / name)
    volume = build_volume(read_instances(_files(folder)))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()
    assert np.allclose(volume.origin, reference.GetOrigin(), atol=1e-3)
    assert np.allclose(volume.spacing, reference.GetSpacing(), atol=1e-4)
    assert np.allclose(volume.direction, reference.GetDirection(), atol=1e-4)
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(reference))
    # Three landmark voxels land on the same world point in both.
    image = volume.to_sitk()
    for index in [(0, 0, 0), (5, 17, 3), tuple(s - 1 for s in image.GetSize())]:
        assert np.allclose(
            image.TransformIndexToPhysicalPoint(index),
            reference.TransformIndexToPhysicalPoint(index),
            atol=0.01,
        )


def test_enhanced_multiframe_gets_one_slice_per_frame() -> None:
    folder = need_shared(DICOM / "dcm_qa_xa30" / "siemens_xa30_t1w_tfl3d_sag_enhanced")
    datasets = read_instances(_files(folder))
    volume = build_volume(datasets)
    assert volume.shape == (96, 128, 128)
    assert {s.instance_index for s in volume.sources} == {0}
    assert sorted(s.frame_index for s in volume.sources) == list(range(96))


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("dcm_qa_pdt2/siemens_pd_t2_tse_sag_PHANTOM", "input.multi_stack"),
        ("dcm_qa_nih/ge_epi_fmri_ax_mr0004", "input.multi_stack"),
    ],
)
def test_series_that_are_not_one_stack_are_refused_with_a_reason(name: str, code: str) -> None:
    folder = need_shared(DICOM / name)
    with pytest.raises(InputError) as error:
        build_volume(read_instances(_files(folder)))
    assert error.value.code == code and str(error.value)


def test_missing_slice_is_refused(uih: tuple[list[pydicom.Dataset], list[Path]]) -> None:
    datasets, _ = uih
    volume = build_volume(datasets)
    missing = volume.sources[80].instance_index
    with pytest.raises(InputError, match="1 slice\\(s\\) missing") as error:
        build_volume([ds for i, ds in enumerate(datasets) if i != missing])
    assert error.value.code == "input.missing_slices"


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "not-dicom.dcm"
    bad.write_bytes(b"hello")
    with pytest.raises(InputError, match="not-dicom.dcm"):
        read_instances([bad])


def test_empty_mask_reproduces_pixel_data_exactly(uih: tuple[list[pydicom.Dataset], list[Path]]) -> None:
    datasets, _ = uih
    volume = build_volume(datasets)
    out = blank_instances(datasets, volume, np.zeros(volume.shape, bool), background=0)
    assert all(a.PixelData == b.PixelData for a, b in zip(datasets, out, strict=False))


def test_only_masked_voxels_change(uih: tuple[list[pydicom.Dataset], list[Path]]) -> None:
    datasets, _ = uih
    volume = build_volume(datasets)
    rng = np.random.default_rng(7)
    mask = rng.random(volume.shape) < 0.05
    mask[:, :10, :10] = True
    out = blank_instances(datasets, volume, mask, background=0)
    after = build_volume(out)
    changed = after.array != volume.array
    assert np.all(after.array[mask] == 0)
    assert np.array_equal(changed, mask & (volume.array != 0))
    assert datasets[0].PixelData != out[0].PixelData or not mask[0].any()


def test_compressed_input_keeps_a_lossless_transfer_syntax_with_identical_values() -> None:
    folder = need_shared(DICOM / "pydicom-data" / "emri_small_enhanced_mr_5_transfer_syntaxes")
    files = _files(folder)
    reference = None
    for path in files:
        ds = pydicom.dcmread(path)
        frames = ds.pixel_array
        n = frames.shape[0]
        # These test objects have no plane geometry; give them a plain stack to exercise write-back.
        from pydicom import Dataset
        from pydicom.sequence import Sequence

        shared = Dataset()
        shared.PlaneOrientationSequence = Sequence([Dataset()])
        shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        shared.PixelMeasuresSequence = Sequence([Dataset()])
        shared.PixelMeasuresSequence[0].PixelSpacing = [1, 1]
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        per_frame = []
        for k in range(n):
            item = Dataset()
            item.PlanePositionSequence = Sequence([Dataset()])
            item.PlanePositionSequence[0].ImagePositionPatient = [0, 0, float(k)]
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
        volume = build_volume([ds])
        mask = np.zeros(volume.shape, bool)
        mask[:, :8, :8] = True
        (out,) = blank_instances([ds], volume, mask, background=0)
        ts_in, ts_out = ds.file_meta.TransferSyntaxUID, out.file_meta.TransferSyntaxUID
        assert ts_out == (ts_in if ts_in.is_little_endian else pydicom.uid.ExplicitVRLittleEndian), path.name
        out = pydicom.dcmread(_saved(out))
        written = out.pixel_array
        assert np.all(written[:, :8, :8] == 0)
        untouched = np.ones_like(written, dtype=bool)
        untouched[:, :8, :8] = False
        assert np.array_equal(written[untouched], frames[untouched]), path.name
        reference = written if reference is None else reference
        assert np.array_equal(written, reference), f"{path.name} decodes differently from the others"
