"""Write-back on every real vendor series: exact round trips, exact masks, lossless transfer syntaxes.

* An empty mask gives back every instance's Pixel Data exactly (the very bytes where the input is
  little endian; the same values for big endian input, written little endian).
* A synthetic mask changes exactly the masked voxels (that were not background already), in every
  stack, through frames and mosaic tiles, and the output decodes in pydicom.
* The transfer syntax is kept where a lossless encoder exists, otherwise Explicit VR Little Endian.
* The pipeline defaces every stack (each with its own mask), sets aside non-image objects, and
  records the derivation; delivery transcodes what the destination does not accept.
* The written series reads back in SimpleITK and dcm2niix with the input's geometry, and dcm2niix
  prints no warning about it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from common.errors import DeliveryError, InputError
from tests.conftest import DICOM
from tests.unit.test_volume_stacks import EXPECTED, MOSAIC_TS, files_of, run_dcm2niix, series
from worker.deid import DeidPolicy, remap_uid
from worker.delivery import fit_transfer_syntax
from worker.pipeline import deface_series
from worker.types import FaceMask, Volume
from worker.volume.pixels import stack_volume
from worker.volume.stacks import split_series
from worker.writer import StackMask, write_back

KEPT = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless}


def encoded(ds: pydicom.Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def reread(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_empty_mask_reproduces_the_pixel_data(name: str) -> None:
    datasets, split = series(name)
    masks = []
    for stack in split.stacks:
        volume = stack_volume(datasets, stack)
        masks.append(StackMask(volume, np.zeros(volume.shape, bool), int(volume.array.min())))
    written = write_back(datasets, masks)
    assert set(written) == {i for s in split.stacks for i in s.instances}
    for index, out in written.items():
        original = datasets[index]
        if original.file_meta.TransferSyntaxUID.is_little_endian:
            assert out.PixelData == original.PixelData, index
            assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        else:
            assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert np.array_equal(reread(out).pixel_array, original.pixel_array)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_only_masked_voxels_change(name: str) -> None:
    datasets, split = series(name)
    rng = np.random.default_rng(11)
    masks, volumes = [], []
    for stack in split.stacks:
        volume = stack_volume(datasets, stack)
        blank = rng.random(volume.shape) < 0.05
        blank[:, : volume.shape[1] // 4, : volume.shape[2] // 4] = True
        masks.append(StackMask(volume, blank, int(volume.array.min())))
        volumes.append(volume)
    as_read = [encoded(ds) for ds in datasets]
    written = write_back(datasets, masks)
    # Write-back edits copies that share the input's untouched elements: the input is as it was read.
    assert [encoded(ds) for ds in datasets] == as_read
    rereads = {index: reread(ds) for index, ds in written.items()}
    for index, out in rereads.items():
        ts_in, ts_out = datasets[index].file_meta.TransferSyntaxUID, out.file_meta.TransferSyntaxUID
        assert ts_out == (ts_in if ts_in in KEPT else ExplicitVRLittleEndian), (index, ts_in.name)
        assert not ts_out.is_compressed or ts_out in (RLELossless, JPEGLSLossless, JPEG2000Lossless)
        assert int(out.get("NumberOfFrames") or 1) == int(datasets[index].get("NumberOfFrames") or 1)
    after = [rereads.get(i, ds) for i, ds in enumerate(datasets)]
    split_after = split_series(after)
    assert len(split_after.stacks) == len(split.stacks)
    for part, stack in zip(masks, split_after.stacks, strict=True):
        again = stack_volume(after, stack)
        before = part.volume
        assert again.sources == before.sources and np.allclose(again.origin, before.origin)
        changed = again.array != before.array
        assert np.array_equal(changed, part.blank & (before.array != part.background))
        assert np.all(again.array[part.blank] == part.background)


def test_enhanced_mr_stays_enhanced_with_its_functional_groups() -> None:
    name = "dcm_qa_xa30/siemens_xa30_t1w_tfl3d_sag_enhanced"
    datasets, split = series(name)
    volume = stack_volume(datasets, split.stacks[0])
    blank = np.zeros(volume.shape, bool)
    blank[:, :20, :20] = True
    (out,) = write_back(datasets, [StackMask(volume, blank, 0)]).values()
    out = reread(out)
    assert out.SOPClassUID == datasets[0].SOPClassUID
    assert out.PerFrameFunctionalGroupsSequence == datasets[0].PerFrameFunctionalGroupsSequence
    assert out.SharedFunctionalGroupsSequence == datasets[0].SharedFunctionalGroupsSequence


GEOMETRY_WARNING = re.compile(r"warning.*(slice|spac|orient|position|gantry|tilt|geometr)", re.IGNORECASE)


@pytest.mark.parametrize(
    "name",
    [
        "dcm_qa_uih/uih_t1_gre_fsp_3d_sag",
        "dcm_qa_xa30/siemens_xa30_t1w_tfl3d_sag_enhanced",
        "dcm_qa_pdt2/siemens_pd_t2_tse_sag_PHANTOM",
        "dcm_qa/siemens_epi_mosaic_cor_oblique",
        "dcm_qa_ts/siemens_epi_mosaic_9_transfer_syntaxes",
    ],
)
def test_output_reads_back_in_simpleitk_and_dcm2niix(name: str, tmp_path: Path) -> None:
    datasets, split = series(name)
    stack = split.stacks[-1]  # the last: for the mosaics, a compressed transfer syntax
    volume = stack_volume(datasets, stack)
    blank = np.zeros(volume.shape, bool)
    blank[:, :8, :8] = True
    written = write_back(datasets, [StackMask(volume, blank, int(volume.array.min()))])
    folder = tmp_path / "written"
    folder.mkdir()
    paths = []
    for index in sorted(stack.instances):
        path = folder / f"{index:05d}.dcm"
        written[index].save_as(path, enforce_file_format=True)
        paths.append(path)
    files = files_of(DICOM / name)
    before, _ = run_dcm2niix([files[i] for i in sorted(stack.instances)], tmp_path / "a")
    after, printed = run_dcm2niix(paths, tmp_path / "b")
    assert not GEOMETRY_WARNING.search(printed), printed
    for getter in ("GetOrigin", "GetSpacing", "GetDirection", "GetSize"):
        assert np.allclose(getattr(before, getter)(), getattr(after, getter)(), atol=1e-4), getter
    if len(paths) > 1:  # classic series: SimpleITK (GDCM) reads it with the input's geometry
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(p) for p in paths])
        image = reader.Execute()
        reference = sitk.ImageSeriesReader()
        reference.SetFileNames([str(files[i]) for i in sorted(stack.instances)])
        original = reference.Execute()
        for getter in ("GetOrigin", "GetSpacing", "GetDirection", "GetSize"):
            assert np.allclose(getattr(original, getter)(), getattr(image, getter)(), atol=1e-4), getter
    else:
        image = sitk.ReadImage(str(paths[0]))
        assert image.GetSize()[:2] == (int(datasets[0].Columns), int(datasets[0].Rows))


# --- pipeline and delivery ---------------------------------------------------------------------


class _Box:
    """A masker that blanks a corner box of every stack (stands in for the real one)."""

    name = "box"

    def predict(self, volume: Volume) -> FaceMask:
        labels = np.zeros(volume.shape, np.uint8)
        labels[:, :8, :8] = 1
        return FaceMask(labels, self.name)


KEY = b"pediface-unit-test-key-0123456789"


@pytest.mark.parametrize(
    ("name", "instances", "filtered"),
    [
        ("dcm_qa_pdt2/siemens_pd_t2_tse_sag_PHANTOM", 70, {}),
        ("dcm_qa_cs_dl/philips_t1w_tse_ax_enhanced_PHANTOM", 1, {"non-image object": 1}),
        ("dcm_qa_ts/siemens_epi_mosaic_9_transfer_syntaxes", 9, {}),
        ("dcm_qa_xa30/siemens_xa30_t1w_tfl3d_sag_enhanced", 1, {}),
    ],
)
def test_every_stack_is_defaced_and_derived(name: str, instances: int, filtered: dict[str, int]) -> None:
    datasets, split = series(name)
    result = deface_series(datasets, _Box(), DeidPolicy(), KEY)
    assert len(result.datasets) == instances and result.filtered_counts == filtered
    assert len(result.stacks) == len(split.stacks)
    sources = {remap_uid(str(ds.SOPInstanceUID), KEY) for ds in datasets}
    for ds in result.datasets:
        assert ds.ImageType[0] == "DERIVED"
        if "SourceImageSequence" in ds:
            reference = ds.SourceImageSequence[0]
            assert ds.DerivationDescription.startswith("Face and ears removed")
        else:  # Enhanced MR: in the shared Derivation Image functional group
            group = ds.SharedFunctionalGroupsSequence[0].DerivationImageSequence[0]
            reference = group.SourceImageSequence[0]
            for frame in ds.PerFrameFunctionalGroupsSequence:
                assert frame.MRImageFrameTypeSequence[0].FrameType[0] == "DERIVED"
        assert reference.ReferencedSOPInstanceUID in sources
        assert reference.ReferencedSOPInstanceUID != ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        out = reread(ds)
        assert np.all(out.pixel_array[..., :8, :8] == result.background) or "MOSAIC" in ds.ImageType


def test_a_stack_too_small_for_a_face_is_refused() -> None:
    datasets, _ = series("dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFS")
    with pytest.raises(InputError, match="at least 8 are needed") as error:
        deface_series(datasets[:5], _Box(), DeidPolicy(), KEY)
    assert error.value.code == "input.too_few_slices"


def test_delivery_transcodes_what_the_destination_does_not_accept() -> None:
    datasets, _ = series(MOSAIC_TS)
    rle = next(ds for ds in datasets if ds.file_meta.TransferSyntaxUID == RLELossless)
    expected = rle.pixel_array.copy()
    kept = fit_transfer_syntax(copy.deepcopy(rle), {RLELossless, ExplicitVRLittleEndian})
    assert kept.file_meta.TransferSyntaxUID == RLELossless
    sent = reread(fit_transfer_syntax(copy.deepcopy(rle), {ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
    assert sent.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(sent.pixel_array, expected)
    with pytest.raises(DeliveryError):
        fit_transfer_syntax(copy.deepcopy(rle), {JPEGLSLossless})
