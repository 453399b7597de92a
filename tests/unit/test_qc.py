"""QC pictures on real heads: one PNG, the right layout, and the face visibly gone after.

Needs the shared data (``../shared/data`` beside the project); the whole
module is skipped without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from worker.deface import load_masker
from worker.qc import PANEL_PX, QC_SIZE, TITLE_PX, render_before_after, render_front
from worker.types import FaceMask, Volume

PROJECT = Path(__file__).resolve().parents[2]
DATA = PROJECT.parent / "shared" / "data"
MODEL_DIR = PROJECT / "models" / "template-pydeface"
UIH_SERIES = DATA / "dicom" / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag"

if not DATA.is_dir():
    pytest.skip(f"shared test data not found at {DATA}", allow_module_level=True)


def defaced(volume: Volume, mask: FaceMask) -> Volume:
    array = np.where(mask.blank(), 0, volume.array).astype(volume.array.dtype)
    return Volume(array, volume.spacing, volume.origin, volume.direction)


@pytest.fixture(scope="module")
def ixi() -> tuple[Volume, Volume, FaceMask]:
    volume = Volume.from_sitk(sitk.ReadImage(str(DATA / "heads" / "IXI012-HH-1211_T1_2mm.nii.gz")))
    mask = load_masker("template", MODEL_DIR).predict(volume)
    return volume, defaced(volume, mask), mask


def panel(image: Image.Image, row: int, column: int) -> np.ndarray:
    """One panel of the QC picture as a float grey array (row 0 = before, column 1 = front view)."""
    left, top = column * PANEL_PX, TITLE_PX + row * PANEL_PX
    return np.asarray(image.crop((left, top, left + PANEL_PX, top + PANEL_PX)).convert("L"), dtype=float)


def test_png_has_two_rows_of_two_panels(ixi: tuple[Volume, Volume, FaceMask], tmp_path: Path) -> None:
    before, after, mask = ixi
    out = render_before_after(before, after, mask, tmp_path / "qc.png", title="IXI012 2 mm")
    assert out == tmp_path / "qc.png"
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.mode == "RGB"
        assert image.size == QC_SIZE == (3 * PANEL_PX, TITLE_PX + 2 * PANEL_PX)
        pixels = np.asarray(image)
    assert all(panel(Image.fromarray(pixels), r, c).max() > 100 for r in (0, 1) for c in (0, 1))
    # Only the PNG is left behind: the temp file was renamed over it.
    assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]


def test_face_differs_before_and_after_and_the_skull_top_does_not(
    ixi: tuple[Volume, Volume, FaceMask], tmp_path: Path
) -> None:
    before, after, mask = ixi
    with Image.open(render_before_after(before, after, mask, tmp_path / "qc.png")) as image:
        image.load()
        front_before, front_after = panel(image, 0, 1), panel(image, 1, 1)
        sagittal_before, sagittal_after = panel(image, 0, 0), panel(image, 1, 0)
    half = PANEL_PX // 2
    # Front view: the lower half (the face) changes, the top fifth (the vertex) does not.
    assert np.abs(front_before[half:] - front_after[half:]).mean() > 10
    assert np.abs(front_before[: PANEL_PX // 5] - front_after[: PANEL_PX // 5]).mean() < 1
    # Sagittal: the anterior-inferior quadrant changes, the posterior-superior one does not.
    assert np.abs(sagittal_before[half:, :half] - sagittal_after[half:, :half]).mean() > 10
    assert np.abs(sagittal_before[:half, half:] - sagittal_after[:half, half:]).mean() < 1


def test_mask_outline_is_drawn_in_red(ixi: tuple[Volume, Volume, FaceMask], tmp_path: Path) -> None:
    before, after, mask = ixi
    with Image.open(render_before_after(before, after, mask, tmp_path / "qc.png")) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=int)
    sagittal = rgb[TITLE_PX : TITLE_PX + PANEL_PX, :PANEL_PX]
    red = (sagittal[..., 0] > 200) & (sagittal[..., 1] < 80) & (sagittal[..., 2] < 80)
    assert red.sum() > 50
    # Without a mask there is no outline.
    with Image.open(render_before_after(before, after, None, tmp_path / "plain.png")) as image:
        plain = np.asarray(image.convert("RGB"), dtype=int)[TITLE_PX : TITLE_PX + PANEL_PX, :PANEL_PX]
    assert ((plain[..., 0] > 200) & (plain[..., 1] < 80) & (plain[..., 2] < 80)).sum() == 0


def test_existing_png_is_replaced(ixi: tuple[Volume, Volume, FaceMask], tmp_path: Path) -> None:
    before, after, mask = ixi
    out = tmp_path / "qc.png"
    out.write_bytes(b"stale")
    render_before_after(before, after, mask, out)
    with Image.open(out) as image:
        assert image.size == QC_SIZE


def test_mismatched_mask_is_refused(ixi: tuple[Volume, Volume, FaceMask], tmp_path: Path) -> None:
    before, after, _ = ixi
    wrong = FaceMask(labels=np.zeros((2, 2, 2), dtype=np.uint8), masker="test")
    with pytest.raises(ValueError, match="mask shape"):
        render_before_after(before, after, wrong, tmp_path / "qc.png")


def test_front_render_does_not_depend_on_the_acquisition_orientation(
    ixi: tuple[Volume, Volume, FaceMask],
) -> None:
    before = ixi[0]
    image = before.to_sitk(dtype=None)
    # The same head stored with other axis orders and signs (same physical space).
    for code in ("RAS", "PIL", "SLP"):
        reoriented = Volume.from_sitk(sitk.DICOMOrient(image, code))
        assert reoriented.direction != before.direction
        a, b = render_front(before).astype(float), render_front(reoriented).astype(float)
        assert a.shape == b.shape
        assert np.abs(a - b).mean() < 2, code


def test_front_render_is_an_upright_face(ixi: tuple[Volume, Volume, FaceMask]) -> None:
    front = render_front(ixi[0])
    assert front.dtype == np.uint8 and front.ndim == 2
    rows = np.flatnonzero((front > 0).any(axis=1))
    # The IXI field of view is 240 mm tall at 2 mm: the render is on a 1 mm grid.
    assert 200 < front.shape[0] < 260
    # Superior is up: the head is widest near its middle and the first rows
    # that hit it are the vertex, narrower than the cheeks further down.
    widths = (front > 0).sum(axis=1)
    assert widths[rows[0] + 5] < widths[rows[0] + 60]


def test_uih_render_of_an_oblique_sagittal_series(tmp_path: Path) -> None:
    """The real 512x460x160 oblique series renders; its time is measured in bench/run.py, not here."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(UIH_SERIES)))
    volume = Volume.from_sitk(reader.Execute())
    mask = load_masker("template", MODEL_DIR).predict(volume)
    out = render_before_after(volume, defaced(volume, mask), mask, tmp_path / "uih.png", title="UIH 3D T1")
    with Image.open(out) as picture:
        assert picture.size == QC_SIZE and picture.mode == "RGB"
        rgb = np.asarray(picture.convert("RGB"), dtype=int)
        front_before, front_after = panel(picture, 0, 1), panel(picture, 1, 1)
    # The picture shows what a person must check on this oblique series too: the mask outlined in
    # red on the sagittal slice, the face gone in the front view and the vertex untouched.
    sagittal = rgb[TITLE_PX : TITLE_PX + PANEL_PX, :PANEL_PX]
    assert ((sagittal[..., 0] > 200) & (sagittal[..., 1] < 80) & (sagittal[..., 2] < 80)).sum() > 50
    half = PANEL_PX // 2
    assert np.abs(front_before[half:] - front_after[half:]).mean() > 10
    assert np.abs(front_before[: PANEL_PX // 5] - front_after[: PANEL_PX // 5]).mean() < 1


@pytest.fixture(scope="module")
def uih_defaced() -> tuple[Volume, Volume, FaceMask]:
    """The UIH series as the worker reads it, masked by the shipped nnU-Net model (face and ears)."""
    from worker.volume.pixels import build_volume
    from worker.volume.read import read_instances

    volume = build_volume(read_instances(sorted(UIH_SERIES.glob("*.dcm"))))
    mask = load_masker("nnunet", PROJECT / "models" / "nnunet-face").predict(volume)
    return volume, defaced(volume, mask), mask


@pytest.mark.parametrize("case", ["uih", "ixi"])
def test_the_picture_is_the_one_the_straightforward_renderer_draws(
    case: str,
    ixi: tuple[Volume, Volume, FaceMask],
    uih_defaced: tuple[Volume, Volume, FaceMask],
    tmp_path: Path,
) -> None:
    """The fast renderer (boxes, one resampling, label look-ups) draws the picture the old one did,
    resampling, smoothing and labelling every voxel (tests/unit/qc_reference.py): per panel, the mean
    grey difference stays under a grey level, on the oblique UIH series and on the IXI head."""
    from tests.unit.qc_reference import reference_picture

    before, after, mask = uih_defaced if case == "uih" else ixi
    with Image.open(render_before_after(before, after, mask, tmp_path / "fast.png")) as fast:
        fast.load()
        with Image.open(reference_picture(before, after, mask, tmp_path / "reference.png")) as slow:
            slow.load()
            for row in (0, 1):
                for column in (0, 1, 2):
                    difference = np.abs(panel(fast, row, column) - panel(slow, row, column))
                    assert difference.mean() < 1.0, (row, column, difference.mean())
                    # Not a blank panel matching a blank panel: the head is drawn.
                    assert panel(fast, row, column).mean() > 10
