"""The masker evaluation: surface renders, the face detector, and the voxel measures.

The measures are checked on small arrays with known answers; the renderer and detector on
one real head from ``../shared/data`` (skipped, with the reason, when it is absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from typer.testing import CliRunner

from evaluation.detector import FaceBox, accepted_faces, detect_faces
from evaluation.metrics import changed_inside, fraction_removed, nonzero_lost
from pediface.cli import app
from worker.render import VIEWS, lps_array, lps_reference, render_surface, render_views, surface_threshold
from worker.types import Volume

PROJECT = Path(__file__).resolve().parents[2]
SHARED = PROJECT.parent / "shared"
IXI = SHARED / "data" / "heads" / "IXI012-HH-1211_T1_2mm.nii.gz"


def need_head() -> Volume:
    if not IXI.is_file():
        pytest.skip(f"shared data missing: {IXI} (the detector test needs a real head from ../shared)")
    return Volume.from_sitk(sitk.ReadImage(str(IXI)))


# -- voxel measures -------------------------------------------------------------------------


def test_changed_inside_counts_only_the_region() -> None:
    before = np.arange(27, dtype=np.int16).reshape(3, 3, 3)
    after = before.copy()
    after[0] = 0  # 9 voxels, one of which (index 0) was already 0
    region = np.zeros_like(before, dtype=bool)
    region[0, 0, :] = True  # 3 voxels of the changed slice, one unchanged
    region[2] = True  # unchanged
    assert changed_inside(before, after, region) == 2
    assert changed_inside(before, before, region) == 0
    with pytest.raises(ValueError):
        changed_inside(before, after, region[:2])


def test_fraction_removed_of_ear_label() -> None:
    ears = np.zeros((4, 4, 4), dtype=bool)
    ears[1:3, 1:3, 1:3] = True  # 8 voxels
    blank = np.zeros_like(ears)
    blank[1, :, :] = True  # takes 4 of them
    assert fraction_removed(blank, ears) == pytest.approx(0.5)
    assert fraction_removed(np.ones_like(ears), ears) == 1.0
    assert np.isnan(fraction_removed(blank, np.zeros_like(ears)))


def test_nonzero_lost_of_a_skull_stripped_brain() -> None:
    brain = np.zeros((10, 10, 10), dtype=np.float32)
    brain[2:8, 2:8, 2:8] = 100.0  # 216 non-zero voxels
    after = brain.copy()
    after[2, 2, 2:4] = 0.0  # 2 lost
    after[0, 0, 0] = 0.0  # background stays background: not counted
    assert nonzero_lost(brain, after) == pytest.approx(2 / 216)
    assert nonzero_lost(brain, brain) == 0.0


def test_face_rule_needs_two_cascades_agreeing() -> None:
    strong = FaceBox(10, 10, 100, 100, "frontalface_default", 80)
    confirm = FaceBox(15, 12, 95, 95, "frontalface_alt2", 30)
    elsewhere = FaceBox(200, 200, 90, 90, "frontalface_alt2", 90)
    weak = FaceBox(15, 12, 95, 95, "frontalface_alt2", 5)
    assert accepted_faces([strong, confirm]) == [strong]
    assert accepted_faces([strong]) == []  # one cascade alone is not enough
    assert accepted_faces([strong, elsewhere]) == []  # they must see the same place
    assert accepted_faces([strong, weak]) == []
    assert strong.iou(strong) == 1.0 and strong.iou(elsewhere) == 0.0


# -- rendering ------------------------------------------------------------------------------


def test_render_orientation_on_a_synthetic_head() -> None:
    """A ball with a rod sticking out of the patient's left side (+x), on a 2 mm LPS grid."""
    z, y, x = np.mgrid[0:40, 0:40, 0:40]
    ball = ((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2) < 12**2
    rod = (abs(z - 20) < 3) & (abs(y - 20) < 3) & (x > 20) & (x < 36)
    with_rod = (ball | rod).astype(np.float32) * 100.0
    alone = ball.astype(np.float32) * 100.0

    def views(array: np.ndarray) -> dict[float, np.ndarray]:
        return {
            a: render_surface(array, 2.0, a, threshold=50.0, smooth_mm=0.0)
            for a in (0.0, 45.0, -45.0, 90.0, -90.0)
        }

    rendered, plain = views(with_rod), views(alone)
    front = rendered[0.0]
    # Every view is cast on one square (x, y) grid, the input's diagonal wide: 57 columns.
    assert all(image.shape == (40, 57) and image.dtype == np.uint8 for image in rendered.values())
    assert (front > 0).sum() > 300  # the ball is seen
    # From the front, the patient's left is on the viewer's right: the rod widens the right half.
    columns = np.flatnonzero(front.any(axis=0))
    centre = (front.shape[1] - 1) / 2
    assert columns.max() - centre > centre - columns.min() + 3
    # Positive azimuths move the camera towards the patient's left: at +90 it looks down the rod,
    # at -90 the ball hides it entirely.
    changed = {a: rendered[a] != plain[a] for a in rendered}
    assert changed[90.0].sum() > 20 and abs(np.flatnonzero(changed[90.0].any(axis=0)).mean() - centre) < 2
    assert changed[-90.0].sum() == 0
    # At +-45 the rod stands out on the side towards the patient's left: the viewer's right.
    for azimuth in (45.0, -45.0):
        assert np.flatnonzero(changed[azimuth].any(axis=0)).min() > centre


# -- on a real head -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ixi_renders() -> tuple[Volume, float, dict[str, np.ndarray]]:
    volume = need_head()
    grid = lps_reference(volume)
    array = lps_array(volume, reference=grid)
    threshold = surface_threshold(array)
    return volume, threshold, render_views(array, 1.0, threshold)


def test_renderer_and_detector_find_the_face(
    ixi_renders: tuple[Volume, float, dict[str, np.ndarray]],
) -> None:
    _volume, _threshold, renders = ixi_renders
    assert set(renders) == set(VIEWS)
    boxes = detect_faces(renders["front"])
    assert boxes, "no face detected in the front render of a head with a face"
    box = boxes[0]
    height, width = renders["front"].shape
    # The face is in the middle third across and below the top of the head.
    assert width / 4 < box.x + box.w / 2 < 3 * width / 4
    assert box.w > 100  # mm (1 mm pixels): an adult face, not a speck


@pytest.fixture(scope="module")
def ixi_after(ixi_renders: tuple[Volume, float, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The IXI head's renders after the template masker."""
    from worker.deface import load_masker

    volume, threshold, _renders = ixi_renders
    masker = load_masker("template", PROJECT / "models" / "template-pydeface", threads=2)
    mask = masker.predict(volume)
    after = Volume(
        np.where(mask.blank(), volume.array.min(), volume.array),
        volume.spacing,
        volume.origin,
        volume.direction,
    )
    array = lps_array(after, reference=lps_reference(volume))
    return render_views(array, 1.0, threshold)


def test_no_face_after_the_template_masker(ixi_after: dict[str, np.ndarray]) -> None:
    assert detect_faces(ixi_after["front"]) == []


def test_the_grid_shows_each_head_before_and_after_with_the_faces_outlined(
    ixi_renders: tuple[Volume, float, dict[str, np.ndarray]], ixi_after: dict[str, np.ndarray], tmp_path: Path
) -> None:
    from evaluation.grid_picture import CELL_PX, GRID_VIEWS, GridPictures, write_grid

    _volume, _threshold, before = ixi_renders
    pictures = GridPictures()
    for view in VIEWS:  # as the evaluation adds them: every view; the grid keeps two
        pictures.add("ixi012", "before", view, before[view], detect_faces(before[view]))
        pictures.add("ixi012", "template", view, ixi_after[view], detect_faces(ixi_after[view]))
    pictures.refused("negctrl-6y", "template", "refused (mask.registration)")
    pictures.titles["negctrl-6y"] = "negctrl-6y\nskull-stripped"
    assert pictures.columns == ["before", "template"] and list(pictures.cells) == ["ixi012", "negctrl-6y"]
    assert set(pictures.cells["ixi012"]["before"].renders) == set(GRID_VIEWS)

    path = write_grid(pictures, tmp_path / "docs" / "grid.png")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    cell_w = len(GRID_VIEWS) * CELL_PX + 6
    assert image.shape == (22 + 2 * (CELL_PX + 6), 110 + 2 * cell_w, 3)
    red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
    first_row = slice(22, 22 + CELL_PX)
    before_cell, after_cell = slice(110, 110 + cell_w), slice(110 + cell_w, 110 + 2 * cell_w)
    assert red[first_row, before_cell].sum() > 100, "the face found before defacing is outlined"
    assert not red[first_row, after_cell].any(), "no face outlined after the template masker"
    assert (image[first_row, after_cell].max(axis=-1) > 60).mean() > 0.2, "the defaced head is drawn"
    # The negative control's "before" was never rendered, its masker refused: two dark cells.
    second_row = image[22 + CELL_PX + 6 : 22 + 2 * CELL_PX + 6]
    assert (second_row[:, 110:].max(axis=-1) < 80).mean() > 0.95
    with pytest.raises(ValueError, match="nothing to draw"):
        write_grid(GridPictures(), tmp_path / "empty.png")


def test_evaluate_help() -> None:
    result = CliRunner().invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--masker", "--model-dir", "--heads", "--out", "--synthetic"):
        assert option in result.output


def test_evaluate_refuses_unknown_names_before_loading_anything() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["evaluate", "--masker", "pydeface"]).exit_code == 2
    assert runner.invoke(app, ["evaluate", "--heads", "no-such-head"]).exit_code == 2
