"""Synthetic heads by age band (newborn to adult) and contrast, with their atlas brain.

``pediface evaluate --age-bands N`` makes N heads per contrast in each band of
:data:`evaluation.heads.AGE_BANDS` from the held-out source head's teacher labels, and judges every
masker on them as on the other synthetic heads (face and ear labels removed, over-blanking, face
detector before and after) and, because the generator carries the atlas brain along
(``training.synth.synthesize_with_brain``), by the brain voxels changed, as on the real heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from evaluation.heads import AGE_BAND_SEED, AGE_BANDS, CONTRASTS, SYNTH_SOURCE, AgeBand

if TYPE_CHECKING:
    from evaluation.results import Result
    from evaluation.run import Evaluation


def band_head(
    tissue: np.ndarray, labels: np.ndarray, band: AgeBand, contrast: str, number: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float | str]]:
    """One head of ``band`` in ``contrast`` from a teacher's tissue and label maps: image (4 mm),
    face and ear labels, atlas brain and the drawn parameters; seed ``[AGE_BAND_SEED, number]``.

    As the other evaluation heads: no reorientation, the contrast fixed, the rest drawn from the seed.
    """
    from evaluation.run import _FixedContrast
    from training.synth import synthesize_with_brain

    rng = _FixedContrast(np.random.default_rng([AGE_BAND_SEED, number]), contrast)
    return synthesize_with_brain(
        tissue,
        labels,
        rng,  # type: ignore[arg-type]
        scale_range=band.scales,
        p_orientation=0.0,
    )


def age_band_heads(
    evaluation: Evaluation,
    per_contrast: int,
    bands: Iterable[AgeBand] = AGE_BANDS,
    source: str = SYNTH_SOURCE,
) -> list[Result]:
    """``per_contrast`` heads per contrast in each band, every masker of ``evaluation``; each result
    carries its band (``Result.age_band``) and drawn scale (``params["scale"]``)."""
    if per_contrast <= 0:
        return []
    teacher = evaluation.source_teacher(source)
    results: list[Result] = []
    for band in bands:
        for number, contrast in enumerate(c for c in CONTRASTS for _ in range(per_contrast)):
            evaluation.on_step(f"age band {band.name}: {contrast} #{number}")
            image, labels, brain, params = band_head(teacher.tissue, teacher.labels, band, contrast, number)
            name = f"synth-{band.key}-{number:02d}"
            for result in evaluation.synthetic_head(name, contrast, image, labels, params, brain):
                result.age_band = band.name
                results.append(result)
    return results
