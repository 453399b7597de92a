"""Small typed objects that flow through the pipeline.

Conventions (the same as SimpleITK's, so that a :class:`Volume` converts to an
``sitk.Image`` without reordering anything):

* ``array`` is indexed ``[z, y, x]`` = ``[slice, row, column]``;
* ``spacing``, ``origin`` are given in ``(x, y, z)`` order, in millimetres;
* ``direction`` is the 3x3 direction cosine matrix, row-major, whose *columns* are
  the unit vectors of the x, y and z voxel axes in patient coordinates;
* patient coordinates are DICOM's LPS (+x towards the patient's left, +y towards
  the back, +z towards the head), whatever the file format the volume came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # SimpleITK is only needed by callers that convert
    import SimpleITK as sitk

Vec3 = tuple[float, float, float]
Mat3 = tuple[float, float, float, float, float, float, float, float, float]


@dataclass(frozen=True)
class SliceSource:
    """Where one z-slice of a volume came from: an instance file and a frame in it."""

    instance_index: int
    frame_index: int = 0


@dataclass(frozen=True)
class Volume:
    """A 3D scalar image with its geometry in LPS patient coordinates.

    ``array`` holds the *stored* pixel values (before Modality LUT / rescale), so
    that a mask computed on it maps back to the original pixel data without any
    loss. ``sources`` is empty for volumes that did not come from DICOM.
    """

    array: np.ndarray
    spacing: Vec3
    origin: Vec3
    direction: Mat3
    sources: tuple[SliceSource, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D (z, y, x), got shape {self.array.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"Volume.spacing must be three positive numbers, got {self.spacing}")
        if len(self.direction) != 9:
            raise ValueError(f"Volume.direction must have 9 values, got {len(self.direction)}")
        if self.sources and len(self.sources) != self.array.shape[0]:
            raise ValueError(
                f"Volume.sources has {len(self.sources)} entries for {self.array.shape[0]} slices"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return (z, y, x)

    def to_sitk(self, dtype: np.dtype | type | None = np.float32) -> sitk.Image:
        """The volume as a SimpleITK image (a copy; ``dtype=None`` keeps the array's type)."""
        import SimpleITK as sitk

        array = self.array if dtype is None else self.array.astype(dtype, copy=False)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """A volume from a 3D scalar SimpleITK image (its physical space is taken as LPS)."""
        import SimpleITK as sitk

        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"need a 3D scalar image, got {image.GetDimension()}D with "
                f"{image.GetNumberOfComponentsPerPixel()} components"
            )
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in image.GetDirection()),  # type: ignore[arg-type]
        )


class FaceLabel:
    """Label values of a face mask (the same as the nnU-Net model's)."""

    BACKGROUND = 0
    FACE = 1
    EARS = 2


@dataclass(frozen=True)
class FaceMask:
    """Voxels to blank, on the grid of the volume it was computed for.

    ``labels`` is a uint8 array of the volume's shape holding :class:`FaceLabel`
    values. ``details`` carries numbers worth logging (registration metric, time),
    never identifiers.
    """

    labels: np.ndarray
    masker: str
    details: dict[str, float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels.ndim != 3 or self.labels.dtype != np.uint8:
            raise ValueError(
                f"FaceMask.labels must be a 3D uint8 array, got {self.labels.ndim}D {self.labels.dtype}"
            )

    def blank(self, include_ears: bool = True) -> np.ndarray:
        """Boolean array of the voxels to set to background."""
        if include_ears:
            return self.labels != FaceLabel.BACKGROUND
        return self.labels == FaceLabel.FACE
