"""The age bands of the synthetic evaluation heads: their scales, the heads made in them, their brain map.

The heads are made from a toy label map (an ellipsoid head with a brain, a face and two ears) instead
of a real head's teacher labels: no registration, a few generator calls of about half a second each.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from typer.testing import CliRunner

from evaluation.age_bands import band_head
from evaluation.heads import AGE_BANDS, SYNTH_SCALES
from evaluation.results import Result, ViewResult, markdown
from pediface.cli import app
from worker.grid import head_threshold
from worker.types import FaceLabel


def _head(image: np.ndarray) -> np.ndarray:
    return ndi.binary_fill_holes(image > head_threshold(image))


def test_age_bands_grow_from_newborn_to_adult() -> None:
    assert [band.name for band in AGE_BANDS] == ["newborn", "1-5 y", "6-12 y", "13-21 y", "adult"]
    lows = [band.scales[0] for band in AGE_BANDS]
    highs = [band.scales[1] for band in AGE_BANDS]
    assert all(low < high for low, high in zip(lows, highs, strict=True))
    assert lows == sorted(set(lows)) and highs == sorted(set(highs)), "bands out of order"
    # A newborn's head is about 0.6 of an adult's (34 of 56 cm around); the adult band holds the source.
    assert 0.58 < AGE_BANDS[0].scales[0] < 0.65 and AGE_BANDS[0].scales[1] < 0.7
    assert AGE_BANDS[-1].scales[0] < 1.0 < AGE_BANDS[-1].scales[1]
    # Contiguous from one year on (infancy lies between newborn and 1-5 y: SYNTH_SCALES covers it).
    assert all(highs[i] >= lows[i + 1] for i in range(1, len(AGE_BANDS) - 1))
    assert SYNTH_SCALES[0] < AGE_BANDS[0].scales[0] and SYNTH_SCALES[1] < AGE_BANDS[1].scales[1]
    # Inside the scales the model was trained on (training.synth.synthesize's default).
    assert 0.55 <= lows[0] and highs[-1] <= 1.15


def test_a_newborn_head_is_smaller_than_an_adult_one_and_its_brain_is_inside_it(
    toy_head: tuple[np.ndarray, np.ndarray],
) -> None:
    tissue, labels = toy_head
    heads = {}
    for band in (AGE_BANDS[0], AGE_BANDS[-1]):
        image, out, brain, params = band_head(tissue, labels, band, "t1", 0)
        assert params["contrast"] == "t1" and params["orientation"] == "LPS"
        assert band.scales[0] <= float(params["scale"]) <= band.scales[1]
        assert image.shape == out.shape == brain.shape and brain.dtype == bool
        head = _head(image)
        assert brain.sum() > 500, band.name
        assert not (brain & ~head).any(), f"{band.name}: brain outside the head"
        assert not (brain & (out != 0)).any(), f"{band.name}: brain under the face or ear label"
        assert (out == FaceLabel.FACE).any() and (out == FaceLabel.EARS).any()
        heads[band.name] = (int(head.sum()), int(brain.sum()))
    # Same seed, so the same place in each band: the size ratio is about (1.0 / 0.64) ** 3 = 3.8.
    assert heads["adult"][0] > 2.5 * heads["newborn"][0], heads
    assert heads["adult"][1] > 2.5 * heads["newborn"][1], heads


def test_the_brain_map_leaves_the_training_pairs_unchanged(toy_head: tuple[np.ndarray, np.ndarray]) -> None:
    """With the brain, the generator draws the same numbers: training's pairs stay what they were. The
    brain follows the image through crop, axis permutation and flips."""
    from training.synth import FixedContrast, synthesize, synthesize_with_brain

    tissue, labels = toy_head
    seed = [0, 3]  # a permutation and flips of two axes
    image, out, params = synthesize(
        tissue, labels, FixedContrast(np.random.default_rng(seed), "t1"), p_orientation=1.0
    )
    image_b, out_b, brain, params_b = synthesize_with_brain(
        tissue, labels, FixedContrast(np.random.default_rng(seed), "t1"), p_orientation=1.0
    )
    assert params == params_b and params["orientation"] == "perm(2, 1, 0)flip(1, 0, 1)", params
    np.testing.assert_array_equal(image, image_b)
    np.testing.assert_array_equal(out, out_b)
    assert brain.shape == image.shape and brain.sum() > 100
    assert not (brain & (out != 0)).any()
    head = _head(image)
    assert not (brain & ~head).any()
    # The map lies on the bright brain, not beside it.
    assert image[brain].mean() > 1.5 * image[head & ~brain].mean()


def _row(band: str, contrast: str, face: float, brain: int, scale: float, detected_after: bool) -> Result:
    result = Result(f"synth-{band}", "synthetic", "nnunet", True, "ok", seconds=2.0, contrast=contrast)
    result.age_band, result.params = band, {"scale": scale}
    result.face_fraction, result.ear_fraction, result.over_blanked = face, 0.5, 0.25
    result.brain_changed, result.brain_changed_deep = brain, 0
    result.views["front"] = ViewResult(before=True, after=detected_after)
    return result


def test_markdown_reports_age_bands_by_contrast_apart_from_the_synthetic_set() -> None:
    plain = Result("synth-00", "synthetic", "nnunet", True, "ok", seconds=1.0, contrast="t1")
    plain.face_fraction, plain.ear_fraction, plain.over_blanked = 1.0, 0.75, 0.125
    rows = [
        _row("newborn", "t1", 0.9, 0, 0.62, False),
        _row("newborn", "t2", 1.0, 4, 0.65, True),
        _row("adult", "t1", 0.98, 0, 1.01, False),
    ]
    table = markdown([plain, *rows])
    # The --synthetic table keeps its one row, the age-band heads have their own table.
    assert "| t1 | nnunet | 1 | 0 | 100.0 % | 75.0 % | 75.0 % | 12.5 % |" in table
    assert "| age band | head scale | contrast | masker | heads |" in table
    assert (
        "| newborn | 0.62 | t1 | nnunet | 1 | 0 | 90.0 % | 50.0 % | 25.0 % | 0 (0) | 1 of 1 | 0 of 1 |"
        in table
    )
    assert (
        "| newborn | 0.62-0.65 | all | nnunet | 2 | 0 | 95.0 % | 50.0 % | 25.0 % | 4 (0) | 2 of 2 | 1 of 2 |"
        in table
    )
    assert "| adult | 1.01 | t1 | nnunet |" in table and "| adult | 1.01 | all |" not in table
    assert "age band" not in markdown([plain])


def test_evaluate_offers_age_bands() -> None:
    result = CliRunner().invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0, result.output
    assert "--age-bands" in result.output and "--age-band-mm" in result.output


def test_evaluate_refuses_an_age_band_grid_it_cannot_make() -> None:
    args = ["evaluate", "--heads", "none", "--age-bands", "1", "--age-band-mm", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--age-band-mm must be 2 or 4, got 3" in result.output


def test_a_contrast_enhanced_head_is_its_t1_head_with_a_bright_dura(
    toy_head: tuple[np.ndarray, np.ndarray],
) -> None:
    """``t1ce`` is the same seed's T1 head, draw for draw (scale, pose, warp, slices, noise), with the
    lining of the brain (and vessels) brighter than any tissue. The field-of-view crop is found on the
    image, so its edges may move by a voxel or two; seed 0 gives the same box in this band."""
    tissue, labels = toy_head
    band = AGE_BANDS[2]
    ratios = {}
    for contrast in ("t1", "t1ce"):
        image, out, brain, params = band_head(tissue, labels, band, contrast, 0)
        assert params.pop("contrast") == contrast
        ratios[contrast] = params, out, brain, image
    (params_t1, out_t1, brain_t1, t1), (params_ce, out_ce, brain_ce, ce) = ratios.values()
    assert params_ce == params_t1
    np.testing.assert_array_equal(out_ce, out_t1)
    np.testing.assert_array_equal(brain_ce, brain_t1)
    assert not np.array_equal(ce, t1)

    # Each image is scaled to its own maximum: compare the lining with the brain inside each.
    lining = ndi.binary_dilation(brain_t1) & ~brain_t1 & _head(t1)
    inner = ndi.binary_erosion(brain_t1, iterations=2)
    assert lining.sum() > 100 and inner.sum() > 100
    ratio_t1 = t1[lining].mean() / t1[inner].mean()
    ratio_ce = ce[lining].mean() / ce[inner].mean()
    # Measured 0.50 and 0.80: the 2 mm dura shares its 4 mm voxels with the dark scalp and bone.
    assert ratio_ce > 1.4 * ratio_t1, (ratio_t1, ratio_ce)


def test_the_generator_draws_contrast_enhanced_heads_only_when_asked(
    toy_head: tuple[np.ndarray, np.ndarray],
) -> None:
    from training.synth import CONTRASTS, ENHANCED, FixedContrast, synthesize

    tissue, labels = toy_head
    assert ENHANCED not in CONTRASTS  # version 2's training draw is unchanged
    _, _, params = synthesize(tissue, labels, np.random.default_rng(5), contrasts=(ENHANCED,))
    assert params["contrast"] == ENHANCED
    with pytest.raises(ValueError, match="unknown contrast 't1c'"):
        FixedContrast(np.random.default_rng(0), "t1c")


def test_a_2_mm_head_is_the_4_mm_head_on_the_working_grid(toy_head: tuple[np.ndarray, np.ndarray]) -> None:
    """The same seed at 2 mm is the same head (the same draws), twice as many voxels per axis, with its
    labels and brain on the finer grid; block-averaged it is the 4 mm head's anatomy."""
    tissue, labels = toy_head
    band = AGE_BANDS[0]
    image4, out4, brain4, params4 = band_head(tissue, labels, band, "t2", 1)
    image2, out2, brain2, params2 = band_head(tissue, labels, band, "t2", 1, grid_mm=2.0)
    assert params2 == params4, "the 2 mm head drew other numbers"
    assert image2.shape == out2.shape == brain2.shape
    assert all(abs(a - 2 * b) <= 12 for a, b in zip(image2.shape, image4.shape, strict=True)), (
        image2.shape,
        image4.shape,
    )
    assert not (brain2 & (out2 != 0)).any()
    assert not (brain2 & ~_head(image2)).any()
    # The face's volume agrees between the grids; a thin ear loses most of its label to the 4 mm
    # blocks' majority rule, which the 2 mm grid keeps.
    ml = {
        (value, mm): np.count_nonzero(out == value) * mm**3 / 1000
        for value in (FaceLabel.FACE, FaceLabel.EARS)
        for out, mm in ((out2, 2), (out4, 4))
    }
    assert ml[FaceLabel.FACE, 2] == pytest.approx(ml[FaceLabel.FACE, 4], rel=0.25), ml
    assert ml[FaceLabel.EARS, 2] > 1.5 * ml[FaceLabel.EARS, 4], ml
    assert np.count_nonzero(brain2) * 8 == pytest.approx(np.count_nonzero(brain4) * 64, rel=0.1)


def test_the_generator_refuses_a_grid_it_cannot_make(toy_head: tuple[np.ndarray, np.ndarray]) -> None:
    tissue, labels = toy_head
    with pytest.raises(ValueError, match="out_mm"):
        band_head(tissue, labels, AGE_BANDS[0], "t1", 0, grid_mm=1.0)
