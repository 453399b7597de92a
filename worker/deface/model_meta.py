"""What pediface must know about an nnU-Net model folder beyond nnU-Net's own files.

``pediface-model.json`` (optional; written by ``pediface model import``, listed in ``SHA256SUMS``):

``name``
    Recorded with every mask and in every defaced header's Derivation Description.
``folds``
    The folds to predict with (``["0"]``, ``["all"]``, or several: an ensemble, as nnU-Net v1 predicts).
``orientation``
    The voxel axes of the images the model was trained on, as three letters (nibabel's axis codes: the
    direction each of the i, j, k axes runs *to*): ``"LPS"`` for pediface's own model (trained on LPS
    grids), ``"RAS"`` for a model trained on NIfTI files in the RAS+ orientation. nnU-Net never reorients,
    so the masker resamples each volume onto a grid with these axes; a wrong one swaps the anatomical axes
    the network sees, and the guard rails (face in front of the head's centre) then quarantine.
``min_face_ml``, ``head_fraction``
    The guard rails' bounds, if the model's labels differ from pediface's (calibrated on its own model).

A folder without the file (the shipped ``models/nnunet-face``) gets the defaults below. The face and ear
labels come from ``dataset.json`` by name (``face``, ``ears``); any other label is ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

MODEL_META = "pediface-model.json"

MIN_FACE_ML = 50.0
"""Smallest plausible face label (4 mm grid, before dilation), in millilitres; less is "no face".

Calibration (shipped model, margin 0): real heads 205 ml (Seg3D, field of view cut at the
nose) to 570 ml; eight synthetic newborn-to-toddler heads (scale 0.59-0.74 of the held-out
IXI head) 54 to 192 ml; the skull-stripped children (negative controls) 14 and 45 ml.
The gap between 45 and 54 is too narrow to trust: a real newborn may be quarantined (fail
closed), and a retrained model must be recalibrated (and should see skull-stripped brains
as negatives in training).
"""

HEAD_FRACTION_RANGE = (0.01, 0.35)
"""Plausible share of the head's voxels (4 mm grid) covered by face and ears before dilation.

Teacher labels cover 5 % (Seg3D) to 17 % of the head (within 4 mm of head tissue).
"""

_AXES = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
"""Where each axis code points in LPS patient coordinates (DICOM's and SimpleITK's)."""


def orientation_direction(code: str) -> np.ndarray:
    """The 3x3 direction matrix (columns: the i, j, k axes in LPS) of an axis code such as ``"RAS"``.

    Raises
    ------
    ValueError
        Unless ``code`` names three different anatomical axes (one of L/R, one of P/A, one of S/I).
    """
    code = code.upper()
    if len(code) != 3 or any(c not in _AXES for c in code):
        raise ValueError(f"orientation {code!r} is not three of the letters L, R, P, A, S, I")
    columns = np.array([_AXES[c] for c in code], dtype=float).T
    if abs(abs(np.linalg.det(columns)) - 1.0) > 1e-6:
        raise ValueError(f"orientation {code!r} names an anatomical axis twice")
    return columns


@dataclass(frozen=True)
class ModelMeta:
    """The contents of ``pediface-model.json`` (defaults: pediface's own model)."""

    name: str = "nnunet-face"
    folds: tuple[str, ...] = ("0",)
    orientation: str = "LPS"
    min_face_ml: float = MIN_FACE_ML
    head_fraction: tuple[float, float] = field(default=HEAD_FRACTION_RANGE)

    def __post_init__(self) -> None:
        orientation_direction(self.orientation)
        if not self.folds or any(not (f == "all" or f.isdigit()) for f in self.folds):
            raise ValueError(f"folds must be fold numbers or 'all', got {list(self.folds)}")
        low, high = self.head_fraction
        if not 0 <= low < high <= 1 or self.min_face_ml < 0:
            raise ValueError(
                f"implausible guard rails: min_face_ml {self.min_face_ml}, head_fraction {low}-{high}"
            )

    @classmethod
    def read(cls, model_dir: Path) -> ModelMeta:
        """The folder's ``pediface-model.json``, else the defaults; ValueError if it is not valid."""
        path = Path(model_dir) / MODEL_META
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                name=str(raw.get("name", cls.name)),
                folds=tuple(str(f) for f in raw.get("folds", cls.folds)),
                orientation=str(raw.get("orientation", cls.orientation)),
                min_face_ml=float(raw.get("min_face_ml", MIN_FACE_ML)),
                head_fraction=tuple(float(v) for v in raw.get("head_fraction", HEAD_FRACTION_RANGE)),  # type: ignore[arg-type]
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is not a valid model description: {exc}") from exc

    def to_json(self) -> str:
        values = asdict(self)
        values["folds"], values["head_fraction"] = list(self.folds), list(self.head_fraction)
        return json.dumps(values, indent=2) + "\n"
