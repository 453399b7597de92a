"""Synthetic training pairs from label maps (SynthSeg-style), for the face-and-ear model.

Input: one teacher head on its 2 mm LPS grid (``tissue``: 0 air, 1-4 intensity
clusters outside the atlas brain, 5-8 inside; ``labels``: 0 / 1 face / 2 ears).
Output: an image and its labels on a 4 mm grid, after, in this order:

* a random spatial map (labels follow the anatomy exactly, nearest neighbour):
  head scale 0.55-1.15 with +-8 % per-axis jitter, child-like proportions
  (the lower-anterior face shrunk by up to 30 % relative to the cranium, more
  for small heads), rotation up to 20 degrees per axis, a smooth elastic
  displacement (up to ~4 mm), a random shift of the field of view;
* random intensities per tissue class: T1-, T2-, PD-, FLAIR-like or arbitrary,
  with within-class texture; or contrast-enhanced T1 (T1 with bright dura and vessels);
* slice thickness 1-7 mm along a random axis (blur, then sample-and-hold);
* a smooth multiplicative bias field, Gaussian or Rician-like noise, a gamma;
* 2x2x2 block averaging to 4 mm (labels by majority of the block), unless a 2 mm output is asked for;
* a field-of-view crop (cutting the top of the head, the face or the chin),
  then, with some probability, one of the 48 axis permutations and flips of
  the voxel grid (the labels move with the image).

:func:`synthesize_with_brain` makes the same pair and also carries the atlas brain (tissue classes
5-8) to the output grid, for the evaluation; training uses :func:`synthesize`.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy import ndimage as ndi

SOURCE_MM = 2.0
WORK_MM = 2.0
OUT_MM = 4.0
OUT_GRIDS_MM = (WORK_MM, OUT_MM)
"""Output grids the generator can make: the training grid (4 mm, the model's) or the working grid itself."""
WORK_SHAPE = (128, 128, 128)
"""Working grid (z, y, x) at :data:`WORK_MM`: 256 mm, a whole adult head."""

N_TISSUE = 9
BRAIN_CLASSES = (5, 6, 7, 8)
"""Tissue classes inside the registered atlas brain (``training.teacher.tissue_map``: 1-4 outside)."""
CONTRASTS = ("t1", "t2", "pd", "flair", "random")
"""Contrasts the training draw chooses from (version 2 was trained on these)."""
ENHANCED = "t1ce"
"""Contrast-enhanced T1 (gadolinium): T1-like tissue with bright dura and vessels (:func:`_enhance`).
Not in the training draw unless asked for (``contrasts=``); :class:`FixedContrast` can give it."""
ORIENTATIONS = [
    (perm, flips)
    for perm in itertools.permutations(range(3))
    for flips in itertools.product((False, True), repeat=3)
]
"""All 48 axis permutations and flips of a 3D voxel grid."""


def _rotation(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], control: int, amplitude: float
) -> np.ndarray:
    """A smooth random field of `shape`: `control` normal values per axis, cubic-spline interpolated.

    The result is ``ndi.zoom(coarse, shape / control, order=3, mode="nearest")``, computed one axis
    at a time: the interpolation is a tensor product, so each axis is a small matrix (the zoom of
    each unit vector) applied along that axis, some 25 times faster than zooming the 3-D array.
    """
    coarse = rng.normal(0.0, amplitude, size=(control,) * len(shape))
    field = coarse
    for axis, size in enumerate(shape):
        zoomed = [ndi.zoom(unit, size / control, order=3, mode="nearest")[:size] for unit in np.eye(control)]
        weights = np.stack(zoomed, axis=1)  # (size, control)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return field


def class_means(rng: np.random.Generator, contrast: str) -> np.ndarray:
    """Mean intensity (0..1) of the 9 tissue classes for one contrast."""
    means = np.empty(N_TISSUE)
    means[0] = rng.uniform(0.0, 0.08)  # air
    ranks = np.arange(4)  # clusters sorted dark to bright on the source T1
    if contrast == "random":
        means[1:] = rng.uniform(0.05, 1.0, size=8)
        return means
    if contrast == "t1":
        base = 0.15 + 0.25 * ranks
    elif contrast == "t2":
        base = 0.9 - 0.22 * ranks
    elif contrast == "pd":
        base = 0.45 + 0.12 * rng.permutation(ranks)
    else:  # flair: dark fluid, grey/white close together, fat bright
        base = np.array([0.1, 0.5, 0.6, 0.7])
    for offset in (1, 5):
        means[offset : offset + 4] = np.clip(base + rng.normal(0, 0.07, size=4), 0.02, 1.0)
    return means


def _to_work_coords(
    rng: np.random.Generator, head: np.ndarray, scale_range: tuple[float, float]
) -> tuple[np.ndarray, dict[str, float]]:
    """Source voxel coordinates (3, *WORK_SHAPE) for every working voxel, and the drawn parameters."""
    centre = np.array([c.mean() for c in np.nonzero(head)]) * SOURCE_MM  # (z, y, x) mm
    scale = rng.uniform(*scale_range)
    per_axis = scale * rng.uniform(0.92, 1.08, size=3)
    # Smaller heads get more child-like proportions (face shrunk relative to the cranium).
    child = 1.0 - rng.uniform(0.0, 0.3) * np.clip((1.15 - scale) / 0.6, 0.0, 1.0)
    angles = np.deg2rad(rng.uniform(-20, 20, size=3)) * (rng.random() < 0.8)
    rot = _rotation(angles)
    shift = rng.normal(0, 12.0, size=3)
    grid = np.stack(
        np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * WORK_MM for n in WORK_SHAPE], indexing="ij")
    ).reshape(3, -1)  # mm about the working centre
    grid = grid - shift[:, None]
    src = (rot.T @ grid) / per_axis[:, None]  # mm about the head centre, in source space
    # Child-like: source points below and in front of the centre are spread out, so
    # that the lower face occupies less of the output relative to the cranium.
    w = 1.0 / (1.0 + np.exp(-(-src[0] - 10.0) / 8.0)) * 1.0 / (1.0 + np.exp(-(-src[1] - 10.0) / 10.0))
    stretch = 1.0 + (1.0 / child - 1.0) * w
    src[0] *= stretch
    src[1] *= stretch
    if rng.random() < 0.7:
        for axis in range(3):
            src[axis] += _smooth_field(rng, WORK_SHAPE, 5, rng.uniform(0, 2.0)).reshape(-1)
    coords = (src + centre[:, None]) / SOURCE_MM
    params = {
        "scale": float(scale),
        "child_face": float(child),
        "max_angle_deg": float(np.rad2deg(abs(angles).max())),
    }
    return coords.reshape(3, *WORK_SHAPE), params


def _thick_slices(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, float]:
    thickness = rng.uniform(1.0, 7.0)
    axis = int(rng.integers(3))
    sigma = thickness / 2.355 / WORK_MM
    out = ndi.gaussian_filter1d(image, sigma, axis=axis) if sigma > 0.3 else image
    step = max(1, int(round(thickness / WORK_MM)))
    if step > 1:
        index = (np.arange(image.shape[axis]) // step) * step + step // 2
        index = np.clip(index, 0, image.shape[axis] - 1)
        out = np.take(out, index, axis=axis)
    return out, thickness


def _block_majority(mask: np.ndarray) -> np.ndarray:
    """True where at least 5 of a 2x2x2 block's 8 voxels are (a strict majority)."""
    z, y, x = (s // 2 * 2 for s in mask.shape)
    blocks = mask[:z, :y, :x].reshape(z // 2, 2, y // 2, 2, x // 2, 2)
    return blocks.sum(axis=(1, 3, 5)) >= 5


def _block_labels(labels: np.ndarray) -> np.ndarray:
    """Majority label of each 2x2x2 block (background wins ties only when it has 5 or more)."""
    z, y, x = (s // 2 * 2 for s in labels.shape)
    blocks = labels[:z, :y, :x].reshape(z // 2, 2, y // 2, 2, x // 2, 2)
    counts = [(blocks == v).sum(axis=(1, 3, 5)) for v in (0, 1, 2)]
    return np.argmax(np.stack(counts), axis=0).astype(np.uint8)


def _crop_box(rng: np.random.Generator, image: np.ndarray) -> tuple[slice, ...] | None:
    """The head plus a random margin; sometimes cut through the head (top, face, chin). None: no head."""
    border = np.concatenate([image[0].ravel(), image[-1].ravel(), image[:, 0].ravel(), image[:, -1].ravel()])
    air = float(np.median(border))
    fg = ndi.uniform_filter(image, 3) > air + 0.25 * (float(np.percentile(image, 99)) - air)
    if not fg.any():
        return None
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(fg.any(axis=other))
        lo, hi = int(present[0]), int(present[-1]) + 1
        margin = rng.integers(0, 6, size=2)
        slices.append([max(0, lo - int(margin[0])), min(image.shape[axis], hi + int(margin[1]))])
    if rng.random() < 0.35:
        axis = int(rng.integers(3))
        lo, hi = slices[axis]
        cut = int(rng.uniform(0.1, 0.45) * (hi - lo))
        if rng.random() < 0.5:
            slices[axis][0] = lo + cut
        else:
            slices[axis][1] = hi - cut
    return tuple(slice(a, b) for a, b in slices)


def _enhance(rng: np.random.Generator, image: np.ndarray, t_work: np.ndarray, brightest: float) -> np.ndarray:
    """What gadolinium adds to a T1 image on the 2 mm working grid: the dura and the vessels bright.

    After contrast, the normal dura (a thin smooth lining inside the skull) and the blood in veins,
    venous sinuses and the scalp's and face's vessels shorten their T1 and turn as bright as fat or
    brighter: here 1.1-1.5 times the brightest tissue's mean (``brightest``). The dura: the one
    working voxel (2 mm) of tissue outside the atlas brain that touches it. The vessels: thin winding
    tubes where two smooth random fields (8 control points per axis) are both near zero, anywhere in
    the head (scalp, face, muscle, brain surface and inside the brain), about 0.3-0.6 % of the grid.
    Enhancing mucosa (nose, sinuses) and lesions are not modelled.
    """
    head = t_work > 0
    brain = t_work >= BRAIN_CLASSES[0]
    dura = head & ~brain & ndi.binary_dilation(brain)
    first, second = (_smooth_field(rng, t_work.shape, 8, 1.0) for _ in range(2))
    width = rng.uniform(0.06, 0.1) * min(first.std(), second.std())
    vessels = head & (np.abs(first) < width) & (np.abs(second) < width)
    out = image.copy()
    for where in (dura, vessels):
        level = brightest * rng.uniform(1.1, 1.5)
        out[where] = level * (1.0 + rng.uniform(0.005, 0.05) * rng.normal(size=int(where.sum())))
    return out


class FixedContrast:
    """A random generator that draws as ``rng`` does but answers the generator's contrast choice
    with ``contrast`` (the draw is still made, so the other parameters are those of the seed): the
    evaluation's heads, one contrast each."""

    def __init__(self, rng: np.random.Generator, contrast: str) -> None:
        if contrast not in (*CONTRASTS, ENHANCED):
            raise ValueError(f"unknown contrast {contrast!r}: one of {', '.join((*CONTRASTS, ENHANCED))}")
        self._rng = rng
        self._contrast = contrast

    def choice(self, options: Any, *args: Any, **kwargs: Any) -> Any:
        drawn = self._rng.choice(options, *args, **kwargs)
        if isinstance(options, tuple) and set(options) <= {*CONTRASTS, ENHANCED}:
            return self._contrast  # the generator's contrast draw (the only choice among contrasts)
        return drawn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rng, name)


def synthesize(
    tissue: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    scale_range: tuple[float, float] = (0.55, 1.15),
    p_orientation: float = 0.15,
    contrasts: tuple[str, ...] = CONTRASTS,
) -> tuple[np.ndarray, np.ndarray, dict[str, float | str]]:
    """One synthetic (image float32, labels uint8) pair on a 4 mm grid, (z, y, x), and its parameters.

    ``contrasts`` are those the draw chooses from; :data:`ENHANCED` may be one of them."""
    image, out_labels, _brain, params = _generate(
        tissue, labels, rng, scale_range, p_orientation, False, contrasts
    )
    return image, out_labels, params


def synthesize_with_brain(
    tissue: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    scale_range: tuple[float, float] = (0.55, 1.15),
    p_orientation: float = 0.15,
    contrasts: tuple[str, ...] = CONTRASTS,
    out_mm: float = OUT_MM,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float | str]]:
    """:func:`synthesize`'s image and labels, from the same draws, and the atlas brain on their grid.

    The brain (bool) is the tissue classes inside the registered atlas brain (:data:`BRAIN_CLASSES`),
    warped, cropped and reoriented with the image; a 4 mm voxel is brain when at least 5 of its 8 2 mm
    voxels are (a strict majority). The teacher's face and ear labels never lie on the brain, so those
    5 voxels are background and the block's label is too: brain and labels never share a voxel. Nothing
    more is drawn from ``rng``: a seed gives the same image and labels as :func:`synthesize`. The
    evaluation counts brain voxels changed with it (training never sees it).

    ``out_mm`` 2 (:data:`WORK_MM`) skips the block averaging: the same head on the working grid, as a
    clinical series is finer than the model's 4 mm grid (the same draws, so the same head; the
    field-of-view crop's margins are counted in voxels of the output grid).
    """
    image, out_labels, brain, params = _generate(
        tissue, labels, rng, scale_range, p_orientation, True, contrasts, out_mm
    )
    assert brain is not None
    return image, out_labels, brain, params


def _generate(
    tissue: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    scale_range: tuple[float, float],
    p_orientation: float,
    with_brain: bool,
    contrasts: tuple[str, ...] = CONTRASTS,
    out_mm: float = OUT_MM,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, float | str]]:
    if out_mm not in OUT_GRIDS_MM:
        raise ValueError(f"out_mm must be one of {OUT_GRIDS_MM}, got {out_mm}")
    coords, params = _to_work_coords(rng, tissue > 0, scale_range)
    t_work = ndi.map_coordinates(tissue, coords, order=0, mode="constant", cval=0)
    l_work = ndi.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
    contrast = str(rng.choice(contrasts))
    means = class_means(rng, "t1" if contrast == ENHANCED else contrast)
    stds = rng.uniform(0.005, 0.06, size=N_TISSUE)
    image = means[t_work] + stds[t_work] * rng.normal(size=t_work.shape)
    if contrast == ENHANCED:  # its own stream: the rest of the head is the seed's T1 head, draw for draw
        image = _enhance(rng.spawn(1)[0], image, t_work, float(means[1:].max()))
    image = ndi.gaussian_filter(image, rng.uniform(0.3, 1.0))
    thickness = 0.0
    if rng.random() < 0.6:
        image, thickness = _thick_slices(rng, image)
    image = image * np.exp(_smooth_field(rng, image.shape, 4, rng.uniform(0.0, 0.3)))
    noise = rng.uniform(0.0, 0.05)
    if rng.random() < 0.5:  # magnitude image: Rician-like
        image = np.hypot(image + noise * rng.normal(size=image.shape), noise * rng.normal(size=image.shape))
    else:
        image = image + noise * rng.normal(size=image.shape)
    image = np.clip(image, 0, None)
    image = (image / max(float(image.max()), 1e-6)) ** np.exp(rng.normal(0, 0.25))
    if out_mm == WORK_MM:
        out_labels = l_work.astype(np.uint8)
        brain = t_work >= BRAIN_CLASSES[0] if with_brain else None
    else:
        z, y, x = (s // 2 * 2 for s in image.shape)
        image = image[:z, :y, :x].reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5))
        out_labels = _block_labels(l_work)
        brain = _block_majority(t_work >= BRAIN_CLASSES[0]) if with_brain else None
    box = _crop_box(rng, image)
    if box is not None:
        image, out_labels = image[box], out_labels[box]
        brain = brain[box] if brain is not None else None
    orientation = "LPS"
    if rng.random() < p_orientation:
        perm, flips = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
        image, out_labels = np.transpose(image, perm), np.transpose(out_labels, perm)
        brain = np.transpose(brain, perm) if brain is not None else None
        for axis, flip in enumerate(flips):
            if flip:
                image, out_labels = np.flip(image, axis), np.flip(out_labels, axis)
                brain = np.flip(brain, axis) if brain is not None else None
        orientation = f"perm{perm}flip{tuple(int(f) for f in flips)}"
    params.update(
        contrast=contrast, thickness_mm=round(thickness, 2), noise=round(noise, 3), orientation=orientation
    )
    return (
        np.ascontiguousarray(image, dtype=np.float32) * 1000.0,
        np.ascontiguousarray(out_labels, dtype=np.uint8),
        None if brain is None else np.ascontiguousarray(brain, dtype=bool),
        params,
    )
