"""Stacks of every real vendor series in ../shared/data/dicom, against its MANIFEST and two peers.

* The stacks found (count, shape, spacing, orientation) match ``MANIFEST.tsv`` and the headers.
* World coordinates of three landmark voxels of the first stack agree with SimpleITK's reading
  (where SimpleITK reads the series as a volume) and with dcm2niix's NIfTI output, to 0.01 mm,
  and the voxel values there are the same (unless the peer rescaled them to floats).
* The nine transfer syntaxes of the same Siemens mosaic decode to identical pixels.
* Localizers, derived reformats and non-image objects are set aside with a reason;
  gantry tilt, missing slices and non-uniform spacing are refused with a reason.
"""

from __future__ import annotations

import copy
import csv
import functools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from common.errors import InputError
from tests.conftest import DICOM, need_shared
from worker.volume.geometry import MosaicSource
from worker.volume.pixels import stack_volume
from worker.volume.read import read_instances
from worker.volume.stacks import SeriesStacks, split_series

#: Stacks expected per series: (count, slices per stack), from the MANIFEST's description of each.
EXPECTED = {
    "dcm_qa_uih/uih_t1_gre_fsp_3d_sag": (1, 160),
    "dcm_qa_xa30/siemens_xa30_t1w_tfl3d_sag_enhanced": (1, 96),
    "dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFS": (1, 35),
    "dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFP": (1, 35),
    "dcm_qa_nih/ge_epi_fmri_ax_mr0004": (10, 15),  # 10 volumes x 15 slices
    "dcm_qa_cs_dl/philips_t1w_tse_ax_enhanced_PHANTOM": (1, 12),  # + a Raw Data object set aside
    "dcm_qa_pdt2/siemens_pd_t2_tse_sag_PHANTOM": (2, 35),  # PD and T2 echoes
    "dcm_qa_ts/siemens_epi_mosaic_9_transfer_syntaxes": (9, 35),  # one mosaic each, 35 tiles
    "dcm_qa/siemens_epi_mosaic_cor_oblique": (2, 35),  # two mosaics (time points)
}
NO_GEOMETRY = "pydicom-data/emri_small_enhanced_mr_5_transfer_syntaxes"
MOSAIC_TS = "dcm_qa_ts/siemens_epi_mosaic_9_transfer_syntaxes"


def files_of(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name != "LICENSE" and not p.name.endswith(".txt")
    )


@functools.cache
def manifest() -> dict[str, dict[str, str]]:
    path = need_shared(DICOM / "MANIFEST.tsv")
    with open(path, newline="") as handle:
        return {row["path"].removeprefix("dicom/"): row for row in csv.DictReader(handle, delimiter="\t")}


@functools.cache
def series(name: str) -> tuple[list[pydicom.Dataset], SeriesStacks]:
    folder = need_shared(DICOM / name)
    datasets = read_instances(files_of(folder))
    return datasets, split_series(datasets)


def test_every_shared_series_is_covered() -> None:
    assert set(manifest()) == {*EXPECTED, NO_GEOMETRY}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_stacks_match_the_manifest(name: str) -> None:
    row = manifest()[name]
    datasets, split = series(name)
    count, slices = EXPECTED[name]
    assert len(split.stacks) == count, [s.label for s in split.stacks]
    rows, columns = (int(v) for v in row["dims"].split("x"))
    mosaic = row["siemens_mosaic"] == "yes"
    frames_in_images = int(row["n_frames"]) - sum(
        int(datasets[f.instance_index].get("NumberOfFrames") or 1) for f in split.filtered
    )
    if mosaic:
        assert count == frames_in_images  # one stack per mosaic frame
    else:
        assert count * slices == frames_in_images
    orientation = row["orientation"].split(";")[0]
    for stack in split.stacks:
        assert stack.shape[0] == slices
        tiles = stack.frames[0].source
        if isinstance(tiles, MosaicSource):
            assert (stack.shape[1] * tiles.tiles_per_row, stack.shape[2] * tiles.tiles_per_row) == (
                rows,
                columns,
            )
        else:
            assert stack.shape[1:] == (rows, columns)
        assert stack.orientation == orientation
        ds = datasets[stack.frames[0].source.instance_index]
        declared = ds.get("SpacingBetweenSlices")
        if declared is not None:
            assert stack.slice_spacing == pytest.approx(float(declared), abs=0.01)
        assert stack.shape[0] == len({f.source for f in stack.frames})
    # Every image instance is in exactly the stacks it belongs to; the rest is set aside, with a reason.
    covered = {i for s in split.stacks for i in s.instances}
    assert covered | {f.instance_index for f in split.filtered} == set(range(len(datasets)))
    assert not covered & {f.instance_index for f in split.filtered}


def test_philips_raw_data_is_set_aside_as_a_non_image_object() -> None:
    _, split = series("dcm_qa_cs_dl/philips_t1w_tse_ax_enhanced_PHANTOM")
    assert [(f.kind, f.detail) for f in split.filtered] == [("non-image object", "Raw Data Storage")]


def test_series_without_geometry_is_refused_with_a_reason() -> None:
    folder = need_shared(DICOM / NO_GEOMETRY)
    with pytest.raises(InputError, match="place in the head is unknown") as error:
        split_series(read_instances(files_of(folder)[:1]))
    assert error.value.code == "input.geometry"


def test_the_nine_transfer_syntaxes_decode_to_identical_pixels() -> None:
    datasets, split = series(MOSAIC_TS)
    syntaxes = {str(ds.file_meta.TransferSyntaxUID) for ds in datasets}
    assert len(syntaxes) == 7  # 9 files, JPEG Lossless SV1 and JPEG-LS twice each
    arrays = [stack_volume(datasets, stack).array for stack in split.stacks]
    for array in arrays[1:]:
        assert np.array_equal(array, arrays[0])
    assert arrays[0].std() > 0


def test_localizers_and_reformats_are_set_aside() -> None:
    datasets, _ = series("dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFS")
    datasets = [copy.deepcopy(ds) for ds in datasets[:10]]
    datasets[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    datasets[1].ImageType = ["DERIVED", "SECONDARY", "MPR"]
    split = split_series(datasets)
    assert [(f.instance_index, f.kind) for f in split.filtered] == [(0, "localizer"), (1, "derived reformat")]
    assert len(split.stacks) == 1 and split.stacks[0].shape[0] == 8


def test_gantry_tilt_is_refused() -> None:
    datasets, _ = series("dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFS")
    tilted = [copy.deepcopy(ds) for ds in datasets]
    for ds in tilted:  # shear: each slice moves 1 mm along the columns per 4.8 mm step
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + (x - 81.6) / 4.8]
    with pytest.raises(InputError, match="gantry tilt") as error:
        split_series(tilted)
    assert error.value.code == "input.tilt"


def test_non_uniform_spacing_is_refused() -> None:
    datasets, _ = series("dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFS")
    uneven = [copy.deepcopy(ds) for ds in datasets]
    x, y, z = (float(v) for v in uneven[5].ImagePositionPatient)
    uneven[5].ImagePositionPatient = [x + 1.3, y, z]
    with pytest.raises(InputError, match="non-uniform") as error:
        split_series(uneven)
    assert error.value.code == "input.spacing"


def test_missing_slices_are_counted() -> None:
    datasets, split = series("dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFS")
    order = [f.source.instance_index for f in split.stacks[0].frames]
    gone = {order[10], order[11], order[20]}
    with pytest.raises(InputError, match="3 slice\\(s\\) missing") as error:
        split_series([ds for i, ds in enumerate(datasets) if i not in gone])
    assert error.value.code == "input.missing_slices"


def test_incomplete_time_point_is_refused() -> None:
    datasets, _ = series("dcm_qa_nih/ge_epi_fmri_ax_mr0004")
    with pytest.raises(InputError, match="repeated unevenly") as error:
        split_series(datasets[:-1])
    assert error.value.code == "input.duplicate_position"


# --- landmarks against peers ------------------------------------------------------------------


def _landmarks(shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Three (x, y, z) voxel indices: first corner, an interior voxel, far corner."""
    z, y, x = shape
    return [(0, 0, 0), (x // 3, y // 2, (2 * z) // 3), (x - 1, y - 1, z - 1)]


def _agree(name: str, image: sitk.Image, peer: str) -> float:
    """Largest distance (mm) between our landmarks and the peer's voxel at the same place."""
    datasets, split = series(name)
    volume = stack_volume(datasets, split.stacks[0])
    ours = volume.to_sitk(dtype=None)
    peer_array = sitk.GetArrayViewFromImage(image)
    worst = 0.0
    for index in _landmarks(volume.shape):
        point = np.array(ours.TransformIndexToPhysicalPoint(index))
        continuous = np.array(image.TransformPhysicalPointToContinuousIndex(point.tolist()))
        nearest = np.round(continuous).astype(int)
        assert np.all(nearest >= 0) and np.all(nearest < image.GetSize()), f"{peer}: landmark outside"
        their_point = np.array(image.TransformIndexToPhysicalPoint(nearest.tolist()))
        worst = max(worst, float(np.linalg.norm(their_point - point)))
        x, y, z = index
        if np.issubdtype(peer_array.dtype, np.integer):  # a float peer has applied a vendor scaling
            assert float(peer_array[tuple(nearest[::-1])]) == float(volume.array[z, y, x]), f"{peer}: value"
    assert worst < 0.01, f"{peer} disagrees by {worst:.4f} mm"
    return worst


SITK_SERIES = [
    "dcm_qa_uih/uih_t1_gre_fsp_3d_sag",
    "dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFS",
    "dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFP",
    "dcm_qa_nih/ge_epi_fmri_ax_mr0004",
    "dcm_qa_pdt2/siemens_pd_t2_tse_sag_PHANTOM",
]


@pytest.mark.parametrize("name", SITK_SERIES)
def test_landmarks_agree_with_simpleitk(name: str) -> None:
    datasets, split = series(name)
    files = files_of(DICOM / name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(files[f.source.instance_index]) for f in split.stacks[0].frames])
    _agree(name, reader.Execute(), "SimpleITK")


def dcm2niix() -> str:
    found = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    if not Path(found).exists():
        pytest.skip("dcm2niix (PyPI dcm2niix) is not installed: landmarks NOT compared with it")
    return found


def run_dcm2niix(files: list[Path], work: Path) -> tuple[sitk.Image, str]:
    """dcm2niix's NIfTI of ``files`` (copied to a temp folder), and what it printed."""
    source, target = work / "in", work / "out"
    source.mkdir(parents=True)
    target.mkdir(parents=True)
    for k, path in enumerate(files):
        shutil.copy(path, source / f"{k:05d}.dcm")
    done = subprocess.run(
        [dcm2niix(), "-z", "n", "-b", "n", "-f", "vol", "-o", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = sorted(target.glob("*.nii"))
    assert len(outputs) == 1, [p.name for p in outputs]
    image = sitk.ReadImage(str(outputs[0]))
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    return image, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_landmarks_agree_with_dcm2niix(name: str, tmp_path: Path) -> None:
    datasets, split = series(name)
    files = files_of(DICOM / name)
    instances = sorted(split.stacks[0].instances)
    image, printed = run_dcm2niix([files[i] for i in instances], tmp_path)
    _agree(name, image, "dcm2niix")
