"""Does a field of view hold no face? The evidence for sending a series the masker finds no face in.

A whole MR session holds series whose field of view shows no face: fMRI and diffusion slabs
through the brain, posterior fossa, phantoms. The masker refuses them (``mask.no_face``: less
than :data:`~worker.deface.model_meta.MIN_FACE_ML` of face predicted) and, by default
(``deface.no_face_in_fov: quarantine``), the series waits for a person. With ``deidentify`` it is
de-identified and sent without defacing when :func:`no_face_evidence` finds, for its stack
geometry:

1. the masker's face volume below its floor (real faces 205 to 570 ml, synthetic toddlers 54 ml
   and more, a brain slab 15 ml);
2. the face check finding no face: with ``deface.face_check: on`` the CNN face check of
   :mod:`worker.facecheck` on the volume as received ("no face in field of view before
   defacing"), else :func:`face_check_unavailable` (no opinion);
3. the field of view not reaching the front of the head where faces are (:func:`field_of_view`):
   the front of the imaged head does not extend :data:`FACE_REACH_RATIO` head widths below the
   top of the head. A field of view that does (a whole head, or a slab down to the eyes) is one
   where "no face" is not believable, so the series stays in quarantine.

The evidence is recorded in the job's manifest and the audit trail, never a header value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from common.errors import MaskingError
from worker.grid import head_threshold, lps_reference
from worker.types import Volume

GRID_MM = 4.0
"""Spacing of the LPS grid the field of view is measured on."""

FACE_REACH_RATIO = 0.5
"""How far below the top of the head, in head widths, the front of the field of view may reach.

On the eight real heads here the face the masker removes (forehead included, margin 0) begins
0.37 to 0.68 head widths below the top of the head; the eyes, the first feature that makes a face
recognisable, lie lower (an estimate from head proportions: about 0.6 in a newborn, 0.8 in an
adult). The shared GE fMRI slab ends 0.48 widths below it (15 ml of forehead predicted); the
axial Siemens mosaic reaches 0.85 (34 ml) and stays in quarantine. The CNN face check
(criterion 2) must agree as well, but it can miss a face it was not trained on (a render of an
unusual head), so this margin stays deliberately tight.
"""

TOP_DOME_FRACTION = 0.25
"""Largest share of the head's widest section that its top section may cover for the top of the
head, when cut by the field of view, to be estimated (as a sphere's cap) rather than unknown."""

FaceCheck = Callable[[Volume], object]
"""Whether a volume shows a face: true or false (a result whose ``describe()``, when it has one,
says what was seen), or None when the check cannot tell."""


def face_check_unavailable(volume: Volume) -> bool | None:
    """The face check when it is switched off (``deface.face_check: off``): no opinion."""
    del volume
    return None


def _seen(result: object) -> str:
    describe = getattr(result, "describe", None)
    return f" ({describe()})" if callable(describe) else ""


@dataclass(frozen=True)
class FieldOfView:
    """Where the field of view lies against the head (millimetres on a :data:`GRID_MM` grid)."""

    head_found: bool
    top_in_view: bool
    top_estimated_mm: float
    front_depth_mm: float | None
    head_width_mm: float | None
    reaches_face: bool

    def describe(self) -> str:
        if not self.head_found:
            return "no head in the field of view"
        top = "top of the head in view" if self.top_in_view else "top of the head cut by the field of view"
        if self.front_depth_mm is None or self.head_width_mm is None:
            return f"{top}, cannot tell how far down the front of the head it reaches"
        ratio = self.front_depth_mm / self.head_width_mm
        verdict = "reaches" if self.reaches_face else "does not reach"
        return (
            f"{top}; the front of the head is imaged down to {self.front_depth_mm:.0f} mm below its top "
            f"({ratio:.2f} head widths of {self.head_width_mm:.0f} mm): {verdict} where faces begin "
            f"({FACE_REACH_RATIO} widths)"
        )


def field_of_view(volume: Volume) -> FieldOfView:
    """Measure how far the field of view reaches down the front of the head in `volume`."""
    import SimpleITK as sitk
    from scipy import ndimage

    image = volume.to_sitk(np.float32)
    reference = lps_reference(image, GRID_MM)
    background = float(np.min(volume.array))
    array = sitk.GetArrayFromImage(
        sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, background, sitk.sitkFloat32)
    )
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    inside = sitk.GetArrayFromImage(
        sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ).astype(bool)
    try:
        tissue = (array > head_threshold(volume.array)) & inside
    except ValueError:  # no contrast: nothing that could be a head
        tissue = np.zeros_like(inside)
    labels, count = ndimage.label(tissue)
    if count == 0:
        return FieldOfView(False, False, 0.0, None, None, False)
    head = ndimage.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    z, y, x = np.nonzero(head)  # LPS grid: z grows towards the top of the head, y towards the back
    top = int(z.max())
    width = float(x.max() - x.min() + 1) * GRID_MM
    above = inside[top + 1][head[top]].mean() if top + 1 < inside.shape[0] else 0.0
    top_in_view = bool(above > 0.9)
    cap = 0.0
    if not top_in_view:
        areas = head.sum(axis=(1, 2))
        if areas[top] > TOP_DOME_FRACTION * areas.max():
            # cut through the head's wide part: the top of the head is too far up to place the face
            return FieldOfView(True, False, 0.0, None, width, True)
        radius, section = width / 2, float(np.sqrt(areas[top] / np.pi)) * GRID_MM
        cap = radius - float(np.sqrt(max(radius**2 - section**2, 0.0)))
    zs, ys, xs = np.nonzero(inside)
    front = (ys < y.mean()) & (np.abs(xs - x.mean()) <= width / 2 / GRID_MM)
    depth = float(top - zs[front].min()) * GRID_MM + cap
    return FieldOfView(
        True, top_in_view, round(cap, 1), round(depth, 1), width, depth >= FACE_REACH_RATIO * width
    )


@dataclass(frozen=True)
class NoFaceEvidence:
    """Why a stack geometry was sent without defacing: the three criteria of the module docstring."""

    stacks: str
    face_ml: float
    min_face_ml: float
    face_check: str
    field_of_view: FieldOfView

    def summary(self) -> str:
        return (
            f"no face in field of view ({self.stacks}): {self.face_ml:.0f} ml of face predicted "
            f"(a face is at least {self.min_face_ml:.0f} ml); face check: {self.face_check}; "
            f"{self.field_of_view.describe()}"
        )

    def as_record(self) -> dict[str, object]:
        """The evidence as the job's manifest records it (numbers and labels only)."""
        return {**asdict(self), "summary": self.summary()}


def no_face_evidence(
    volume: Volume, error: MaskingError, stacks: str, face_check: FaceCheck = face_check_unavailable
) -> tuple[NoFaceEvidence | None, str]:
    """The evidence that `volume` (whose masker raised `error`) holds no face, or None, and why not.

    Returns ``(evidence, "")`` when all three criteria hold, else ``(None, reason)``.
    """
    if error.code != "mask.no_face":
        return None, "the masker's refusal is not 'no face found'"
    face_ml = float(error.details.get("face_ml", float("nan")))
    minimum = float(error.details.get("min_face_ml", float("nan")))
    if not face_ml < minimum:
        return None, "the masker did not measure the face it did not find"
    seen = face_check(volume)
    if seen:
        return None, f"the face check finds a face{_seen(seen)}"
    fov = field_of_view(volume)
    if fov.reaches_face:
        return None, fov.describe()
    check = (
        "not available (deface.face_check: off)"
        if seen is None
        else f"no face in field of view before defacing{_seen(seen)}"
    )
    return NoFaceEvidence(stacks, round(face_ml, 1), minimum, check, fov), ""
