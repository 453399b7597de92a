"""Synthetic heads by age band (newborn to adult) and contrast, with their atlas brain.

``pediface evaluate --age-bands N`` makes N heads per contrast in each band of
:data:`evaluation.heads.AGE_BANDS` from the held-out source head's teacher labels (:func:`band_head`);
:meth:`evaluation.run.Evaluation.age_band_heads` judges every masker on them as on the other synthetic
heads (face and ear labels removed, over-blanking, face detector before and after) and, because the
generator carries the atlas brain along (``training.synth.synthesize_with_brain``), by the brain voxels
changed, as on the real heads.
"""

from __future__ import annotations

import numpy as np

from evaluation.heads import AGE_BAND_SEED, AgeBand
from training.synth import OUT_MM


def band_head(
    tissue: np.ndarray,
    labels: np.ndarray,
    band: AgeBand,
    contrast: str,
    number: int,
    grid_mm: float = OUT_MM,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float | str]]:
    """One head of ``band`` in ``contrast`` from a teacher's tissue and label maps: image (``grid_mm``,
    4 or 2), face and ear labels, atlas brain and the drawn parameters; seed ``[AGE_BAND_SEED, number]``.

    As the other evaluation heads: no reorientation, the contrast fixed, the rest drawn from the seed.
    """
    from training.synth import FixedContrast, synthesize_with_brain

    rng = FixedContrast(np.random.default_rng([AGE_BAND_SEED, number]), contrast)
    return synthesize_with_brain(
        tissue,
        labels,
        rng,  # type: ignore[arg-type]
        scale_range=band.scales,
        p_orientation=0.0,
        out_mm=grid_mm,
    )
