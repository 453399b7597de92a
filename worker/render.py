"""Surface renders of a head, as an attacker would make them: ray casting to the skin, Lambert shading.

Two users: the evaluation (:func:`render_surface`, :func:`render_views`: 1 mm renders, every view
on one square grid) and the face check of every series (:func:`face_check_renders`: a coarser grid
and one in-plane warp per axial plane, fast enough to run on every series).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import SimpleITK as sitk

from worker.types import Volume

RENDER_MM = 1.0
"""Pixel size of the surface renders (and spacing of the grid they are cast on)."""

VIEWS: dict[str, float] = {"front": 0.0, "left45": 45.0, "right45": -45.0}
"""Camera azimuths in degrees about the patient's superior axis: 0 faces the patient,
positive moves the camera towards the patient's left."""

LIGHT = (0.0, -1.0, 0.5)
"""Light direction (x, y, z) in LPS seen from the camera frame: towards the viewer and from
above, as a photograph is lit (a light at the camera flattens the orbits)."""

AMBIENT = 30.0
"""Grey level of a surface facing away from the light (0 is the background)."""


def lps_array(
    volume: Volume, spacing_mm: float = RENDER_MM, reference: sitk.Image | None = None
) -> np.ndarray:
    """``volume`` resampled (linear) onto an isotropic LPS-aligned grid, ``[z, y, x]`` float32.

    ``reference`` (from :func:`lps_reference`) puts a second volume on the same grid.
    """
    from worker.grid import lps_reference as lps_grid

    image = volume.to_sitk(np.float32)
    if reference is None:
        reference = lps_grid(image, spacing_mm)
    background = float(np.min(volume.array))
    resampled = sitk.Resample(
        image, reference, sitk.Transform(), sitk.sitkLinear, background, sitk.sitkFloat32
    )
    return sitk.GetArrayFromImage(resampled)


def lps_reference(volume: Volume, spacing_mm: float = RENDER_MM) -> sitk.Image:
    """The LPS-aligned grid :func:`lps_array` resamples ``volume`` onto."""
    from worker.grid import lps_reference as lps_grid

    return lps_grid(volume.to_sitk(np.float32), spacing_mm)


def surface_threshold(array: np.ndarray) -> float:
    """Skin/air threshold of a head (``worker.qc.head_threshold``: a fraction of Otsu's)."""
    from worker.grid import head_threshold

    return head_threshold(array)


def _smooth(array: np.ndarray, spacing_mm: float, sigma_mm: float) -> np.ndarray:
    if sigma_mm <= 0:
        return array.astype(np.float32, copy=False)
    image = sitk.GetImageFromArray(array.astype(np.float32, copy=False))
    image.SetSpacing([spacing_mm] * 3)
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma_mm))


def _turned(array: np.ndarray, spacing_mm: float, azimuth_deg: float) -> np.ndarray:
    """``array`` resampled so that a camera at ``azimuth_deg`` looks along +y (axis 1).

    Every view, the front one too, goes onto the same square (x, y) grid (the diagonal of the
    input's): Haar cascades scan an image pyramid whose levels depend on the image size, so
    views of one head compare best at one size.
    """
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([spacing_mm] * 3)
    size = np.asarray(image.GetSize(), dtype=float)  # x, y, z
    centre = (size - 1) * spacing_mm / 2
    rotation = sitk.Euler3DTransform()
    rotation.SetCenter([float(c) for c in centre])
    # Output point p' maps to input point c + R(a) (p' - c): the output's +y ray runs along
    # (-sin a, cos a) in the input, i.e. from a camera at (sin a, -cos a), the patient's left for a > 0.
    rotation.SetRotation(0.0, 0.0, math.radians(azimuth_deg))
    side = int(math.ceil(math.hypot(size[0], size[1])))
    reference = sitk.Image([side, side, int(size[2])], sitk.sitkFloat32)
    reference.SetSpacing([spacing_mm] * 3)
    reference.SetOrigin(
        [float(centre[0] - (side - 1) * spacing_mm / 2), float(centre[1] - (side - 1) * spacing_mm / 2), 0.0]
    )
    background = float(array.min())
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, rotation, sitk.sitkLinear, background))


def render_surface(
    array: np.ndarray,
    spacing_mm: float,
    azimuth_deg: float,
    *,
    threshold: float | None = None,
    smooth_mm: float = 1.0,
) -> np.ndarray:
    """A shaded surface render of a head seen from ``azimuth_deg`` about its vertical axis.

    Parameters
    ----------
    array : np.ndarray
        The head on an isotropic LPS-aligned grid, ``[z, y, x]`` (see :func:`lps_array`).
    spacing_mm : float
        Its spacing; one pixel of the render per voxel.
    azimuth_deg : float
        0 looks at the face (from anterior); +45 from the patient's front left, -45 front right.
    threshold : float, optional
        Skin/air intensity; default :func:`surface_threshold` of ``array``. Pass the *before*
        volume's threshold when rendering the defaced one, so both show the same surface.
    smooth_mm : float
        Gaussian smoothing first, so that noise in the air is not taken for skin.

    Returns
    -------
    np.ndarray
        uint8 image, superior up, 0 where the ray meets no head; each ray stops at the first
        voxel above ``threshold`` (sub-voxel depth), shaded by Lambert's law from the depth
        map's normals with the light :data:`LIGHT` plus :data:`AMBIENT`.
    """
    from worker.qc import _front_depth

    if threshold is None:
        threshold = surface_threshold(array)
    smooth = _smooth(array, spacing_mm, smooth_mm)
    return _shade(_turned(smooth, spacing_mm, azimuth_deg), spacing_mm, threshold, _front_depth)


def _shade(
    turned: np.ndarray, spacing_mm: float, threshold: float, front_depth: Callable[..., Any]
) -> np.ndarray:
    hit, depth = front_depth(turned, threshold)
    if not hit.any():
        return np.zeros(hit.shape, dtype=np.uint8)
    # Rays that miss are given the far end of the grid: the silhouette then shades the same
    # whatever else is in the volume (a content-dependent fill would change its normals).
    depth_mm = np.where(hit, depth, float(turned.shape[1])) * spacing_mm
    grad_z, grad_x = np.gradient(depth_mm, spacing_mm)
    # Surface y = d(x, z): the normal towards the camera (-y) is (dd/dx, -1, dd/dz), normalised.
    normal = np.stack([grad_x, -np.ones_like(depth_mm), grad_z], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.asarray(LIGHT, dtype=float)
    lambert = np.clip(normal @ (light / np.linalg.norm(light)), 0.0, 1.0)
    grey = np.where(hit, AMBIENT + (255.0 - AMBIENT) * lambert, 0.0)
    return np.clip(grey[::-1], 0, 255).astype(np.uint8)  # rows: superior up


def render_views(
    array: np.ndarray, spacing_mm: float, threshold: float, views: dict[str, float] = VIEWS
) -> dict[str, np.ndarray]:
    """:func:`render_surface` for each view, smoothing once."""
    from worker.qc import _front_depth

    smooth = _smooth(array, spacing_mm, 1.0)
    return {
        view: _shade(_turned(smooth, spacing_mm, azimuth), spacing_mm, threshold, _front_depth)
        for view, azimuth in views.items()
    }


FACE_CHECK_MM = 2.0
"""Grid spacing of the face check's renders: a face (7 to 14 cm wide) still spans 35 pixels or
more, and the volume resampled at 2 mm is an eighth of the 1 mm one."""

FACE_CHECK_VIEWS: dict[str, float] = {"front": 0.0, "left45": 45.0, "right45": -45.0}
"""The views the pipeline's face check looks from (azimuths as in :data:`VIEWS`): the front and
the two three-quarter views, where photographs of faces (what the detector learned from) are."""

PROFILE_VIEWS: dict[str, float] = {"left90": 90.0, "right90": -90.0}
"""The two profiles, added by ``pediface check --profiles``: the detector finds few faces there
(docs/defacing.md), so they cost the pipeline time for little."""


def _turned_planes(array: np.ndarray, azimuth_deg: float) -> np.ndarray:
    """``array`` ([z, y, x], isotropic) turned about its vertical axis so that a camera at
    ``azimuth_deg`` looks along +y, as :func:`_turned` does, one axial plane at a time.

    A turn about the superior axis moves each axial plane within itself, so a 2D affine warp per
    plane (OpenCV) gives the same picture as a 3D resampling at a fraction of its cost.
    """
    import cv2

    depth, rows, cols = array.shape  # z, y, x
    side = int(math.ceil(math.hypot(rows, cols)))
    angle = math.radians(azimuth_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    centre_in = np.array([(cols - 1) / 2, (rows - 1) / 2])
    centre_out = np.array([(side - 1) / 2, (side - 1) / 2])
    # Output pixel p (x, y) samples input c_in + R (p - c_out); R as in _turned's Euler transform.
    rotation = np.array([[cos, -sin], [sin, cos]])
    offset = centre_in - rotation @ centre_out
    matrix = np.hstack([rotation, offset[:, None]]).astype(np.float64)
    background = float(array.min())
    out = np.empty((depth, side, side), dtype=np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for z in range(depth):
        cv2.warpAffine(
            array[z],
            matrix,
            (side, side),
            dst=out[z],
            flags=flags,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=background,
        )
    return out


def _thinned(volume: Volume, spacing_mm: float) -> Volume:
    """``volume`` with every n-th voxel kept along each axis finer than half of ``spacing_mm``.

    A 0.5 mm volume is sixty times the voxels of its 2 mm grid: converting and interpolating all of
    them took most of the render's time. Two samples per grid spacing are kept, enough for linear
    interpolation and the 1 mm smoothing that follows to give the same surface.
    """
    steps = [max(1, int(spacing_mm / 2 / s + 1e-6)) for s in volume.spacing]  # x, y, z
    if steps == [1, 1, 1]:
        return volume
    sx, sy, sz = steps
    return Volume(
        array=volume.array[::sz, ::sy, ::sx],
        spacing=tuple(float(s * n) for s, n in zip(volume.spacing, steps, strict=True)),  # type: ignore[arg-type]
        origin=volume.origin,
        direction=volume.direction,
    )


def face_check_renders(
    volume: Volume,
    *,
    threshold: float | None = None,
    spacing_mm: float = FACE_CHECK_MM,
    views: dict[str, float] = FACE_CHECK_VIEWS,
) -> dict[str, np.ndarray]:
    """Shaded surface renders of ``volume``'s head from each of ``views``, for a face detector.

    Parameters
    ----------
    volume : Volume
        The head, any orientation.
    threshold : float, optional
        Skin/air intensity in stored values; default :func:`surface_threshold` of the resampled
        volume. Pass the original's when rendering the defaced volume (the same surface).
    spacing_mm : float
        Spacing of the LPS grid the head is resampled onto, and pixel size of the renders.
    views : dict
        View name to azimuth in degrees (:data:`FACE_CHECK_VIEWS`).

    Returns
    -------
    dict
        View name to a uint8 image (superior up, 0 where the ray meets no head), as
        :func:`render_surface` draws it.
    """
    import cv2

    from worker.qc import _front_depth

    array = lps_array(_thinned(volume, spacing_mm), spacing_mm)
    if threshold is None:
        threshold = surface_threshold(array)
    sigma = 1.0 / spacing_mm
    radius = max(1, int(math.ceil(3 * sigma)))
    kernel = cv2.getGaussianKernel(2 * radius + 1, sigma, cv2.CV_32F)
    smooth = np.empty_like(array)
    for z in range(array.shape[0]):
        cv2.sepFilter2D(array[z], cv2.CV_32F, kernel, kernel, dst=smooth[z], borderType=cv2.BORDER_REPLICATE)
    flat = smooth.reshape(array.shape[0], -1)
    smooth = cv2.sepFilter2D(flat, cv2.CV_32F, np.ones((1, 1), np.float32), kernel,
                             borderType=cv2.BORDER_REPLICATE).reshape(array.shape)  # fmt: skip
    return {
        view: _shade(_turned_planes(smooth, azimuth), spacing_mm, float(threshold), _front_depth)
        for view, azimuth in views.items()
    }
