"""The seam between the pipeline and whatever finds the face: a :class:`FaceMasker`.

A masker is built once per worker process (loading a template or network
weights is the slow part) and then called for many series. It returns the
voxels to blank on the volume's own grid, or raises
:class:`~common.errors.MaskingError` when it cannot vouch for its result:
the pipeline fails closed and quarantines the series rather than send a face.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from common.errors import MaskingError
from worker.types import FaceMask, Volume

if TYPE_CHECKING:
    import SimpleITK as sitk


@runtime_checkable
class FaceMasker(Protocol):
    """Finds the face (and, if it can, the ears) in a head volume.

    Attributes
    ----------
    name : str
        Short stable identifier of the masker and its model, recorded with
        every mask (``FaceMask.masker``) and in the job manifest.
    """

    name: str

    def predict(self, volume: Volume) -> FaceMask:
        """The voxels of ``volume`` to blank.

        Parameters
        ----------
        volume : Volume
            A head volume in LPS patient coordinates, with its stored values.

        Returns
        -------
        FaceMask
            Labels on the grid of ``volume``.

        Raises
        ------
        common.errors.MaskingError
            If no trustworthy mask can be produced.
        """
        ...


CHECKSUM_FILE = "SHA256SUMS"
"""Name of the checksum list in a model folder (``sha256sum`` output format)."""

# A plain file name only: model folders are flat, and a listed "../x" must not
# make us hash (and so vouch for) a file outside the folder.
# A file name, optionally inside one subfolder (nnU-Net's fold_N/); no dots in the folder part,
# so a listed path can never climb out of the model folder.
_SUMS_LINE = re.compile(r"^(?P<digest>[0-9a-fA-F]{64}) [ *](?P<name>([A-Za-z0-9_-]+/)?[A-Za-z0-9._-]+)$")


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks (model checkpoints are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model_dir(model_dir: Path, required: tuple[str, ...]) -> dict[str, str]:
    """Check every file listed in ``model_dir/SHA256SUMS`` against its sha256.

    Model folders are trusted code and data (a template decides what is blanked;
    network checkpoints are unpickled), so a folder that does not match its
    checksums is refused outright rather than used with a warning.

    Parameters
    ----------
    model_dir : Path
        The model folder.
    required : tuple of str
        File names the masker reads; each must be listed (and match).

    Returns
    -------
    dict of str to str
        sha256 hex digest by file name, for the audit trail.

    Raises
    ------
    ValueError
        If the checksum list is missing or malformed, a required file is not
        listed, a listed file is missing, or a digest does not match.
    """
    sums_path = model_dir / CHECKSUM_FILE
    if not sums_path.is_file():
        raise ValueError(f"model folder {model_dir} has no {CHECKSUM_FILE}")
    expected: dict[str, str] = {}
    for number, line in enumerate(sums_path.read_text(encoding="ascii").splitlines(), start=1):
        if not line.strip():
            continue
        match = _SUMS_LINE.match(line)
        if match is None:
            raise ValueError(f"{sums_path}:{number} is not a 'sha256  filename' line: {line!r}")
        expected[match["name"]] = match["digest"].lower()
    missing = [name for name in required if name not in expected]
    if missing:
        raise ValueError(f"{sums_path} does not list {', '.join(missing)}")
    for name, digest in expected.items():
        path = model_dir / name
        if not path.is_file():
            hint = ""
            if path.name.endswith(".nii.gz") and model_dir.name.startswith("template-"):
                # Template images are other projects' data, installed beside their card, not in git.
                hint = " (install the template images: make setup, or python models/install_templates.py)"
            raise ValueError(f"model file {path} listed in {CHECKSUM_FILE} is missing{hint}")
        actual = sha256_of(path)
        if actual != digest:
            raise ValueError(
                f"model file {path} has sha256 {actual}, but {CHECKSUM_FILE} says {digest}: "
                "refusing a modified model folder"
            )
    return expected


def dilate_mm(
    region: np.ndarray, spacing_xyz: tuple[float, ...], margin_mm: float, threads: int | None = None
) -> np.ndarray:
    """``region`` (a (z, y, x) boolean array) grown by ``margin_mm``, measured in mm.

    Exact Euclidean distances that respect anisotropic spacing, computed only within
    the region's bounding box plus the margin (the distance map of a whole 0.5 mm
    series would cost several seconds): 2D distance maps of the planes when two axes
    share a spacing (:func:`_dilated_by_planes`), else a 3D distance map.
    """
    import SimpleITK as sitk

    region = region.astype(bool)
    if margin_mm == 0 or not region.any():
        return region
    spacing_zyx = np.asarray(spacing_xyz)[::-1]
    pad = np.ceil(margin_mm / spacing_zyx).astype(int) + 1
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(region.any(axis=other))
        box.append(
            slice(max(0, present[0] - pad[axis]), min(region.shape[axis], present[-1] + pad[axis] + 1))
        )
    crop = region[tuple(box)]
    grown = region.copy()
    by_planes = _dilated_by_planes(crop, spacing_zyx, margin_mm)
    if by_planes is not None:
        grown[tuple(box)] = by_planes
        return grown
    image = sitk.GetImageFromArray(crop.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    distance_map = sitk.SignedMaurerDistanceMapImageFilter()
    if threads is not None:
        distance_map.SetNumberOfThreads(threads)
    distance_map.SetInsideIsPositive(False)
    distance_map.SetSquaredDistance(False)
    distance_map.SetUseImageSpacing(True)
    distance = distance_map.Execute(image)
    grown[tuple(box)] = sitk.GetArrayViewFromImage(distance) <= margin_mm
    return grown


def _dilated_by_planes(region: np.ndarray, spacing_zyx: np.ndarray, margin_mm: float) -> np.ndarray | None:
    """``region`` grown by ``margin_mm`` from exact 2D distance maps of its planes; None unless two of
    its axes share a spacing (square pixels in the planes across the third).

    A voxel lies within the margin of the region exactly when, for some plane ``dz`` planes away,
    its in-plane distance to that plane's region is at most ``sqrt(margin^2 - (dz * slab)^2)``:
    one 2D Euclidean distance transform per plane (OpenCV, exact) and a few comparisons replace a
    3D distance map, several times faster on a 0.5 mm series.
    """
    import cv2

    candidates = [
        axis
        for axis in range(3)
        if np.isclose(*(spacing_zyx[a] for a in range(3) if a != axis), rtol=1e-6, atol=0)
    ]
    if not candidates:
        return None
    axis = max(candidates, key=lambda a: spacing_zyx[a])  # the coarsest: the fewest plane offsets
    pixel = float(spacing_zyx[(axis + 1) % 3])
    slab = float(spacing_zyx[axis])
    planes = np.moveaxis(region, axis, 0)
    distance = np.full(planes.shape, np.inf, dtype=np.float32)
    for index in np.flatnonzero(planes.any(axis=(1, 2))):
        outside = np.ascontiguousarray(~planes[index], dtype=np.uint8)
        distance[index] = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    grown = np.zeros(planes.shape, dtype=bool)
    reach = int(np.floor(margin_mm / slab))
    for dz in range(-reach, reach + 1):
        # A hair over the exact radius: float32 distances must not drop a voxel on the boundary.
        limit = np.sqrt(max(margin_mm**2 - (dz * slab) ** 2, 0.0)) / pixel * (1 + 1e-6)
        target = slice(max(0, -dz), planes.shape[0] - max(0, dz))
        source = slice(max(0, dz), planes.shape[0] - max(0, -dz))
        grown[target] |= distance[source] <= limit
    return np.moveaxis(grown, 0, axis)


def checked_volume(volume: Volume) -> None:
    """Refuse (:class:`MaskingError`) anything but a real-valued 3D image."""
    array = volume.array
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise MaskingError(f"volume has non-real voxel type {array.dtype}", code="mask.input")
    if min(volume.shape) < 2:
        raise MaskingError(f"volume of shape {volume.shape} is not a 3D head", code="mask.input")


def checked_image(volume: Volume) -> sitk.Image:
    """``volume`` as a float32 SimpleITK image, refused (:class:`MaskingError`) unless a real 3D image."""
    checked_volume(volume)
    return volume.to_sitk(np.float32)
