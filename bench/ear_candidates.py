"""Ear post-processing candidates of the nnU-Net masker, measured as ``pediface evaluate`` measures.

Each candidate is the shipped model with another ear margin (how far the predicted ear is grown along
the side of the head) and ear depth (how far under the skin ear voxels may be blanked). For every head
the table gives the teacher's face and ear label removed, the over-blanking, the voxels changed in the
temporalis region and in the brain; ``--pictures DIR`` also writes the temporalis region on each real
head (``evaluation.region_pictures``), ``--ear-pictures DIR`` slices through the teacher's left ear.

Usage::

    python -m bench.ear_candidates --heads ixi012 mni305 --synthetic 1 --out /tmp/ears.md \\
        --candidate 10:4 --candidate 10:5 --pictures docs/temporalis --ear-pictures docs/teacher-labels/ears

``--heads`` with no name runs no real head; ``--age-bands N`` adds N synthetic heads per contrast in each
age band (``evaluation.age_bands``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _masker(
    margin: float | None,
    depth: float | None,
    face_margin: float | None = None,
    model_dir: Path | None = None,
    face_depth: float = 0.0,
) -> object:
    from evaluation.heads import SHIPPED_MODELS
    from worker.deface.nnunet import EAR_SHELL_MM, NnUNetMasker

    return NnUNetMasker(
        model_dir or SHIPPED_MODELS["nnunet"],
        threads=1,
        margin_mm=4.0 if face_margin is None else face_margin,
        ear_margin_mm=margin,
        ear_shell_mm=EAR_SHELL_MM if depth is None else depth,
        face_depth_mm=face_depth,
    )


def _with_logit_bias(masker: object, face: float, ears: float) -> object:
    """``masker`` with ``face`` and ``ears`` added to those classes' logits before the argmax: the
    decision threshold moved (a bias b takes a voxel whose odds against the class are up to e^b). For
    measuring only; ONNX backend only (the CPU's), the masker's other steps unchanged."""
    backend = masker._backend  # type: ignore[attr-defined]  # noqa: SLF001 - a measurement hook
    window = backend._sliding_window  # noqa: SLF001

    def biased(data: object) -> object:
        logits = window(data)
        logits[1] += face
        logits[2] += ears
        return logits

    backend._sliding_window = biased  # noqa: SLF001
    return masker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--heads", nargs="*", default=["ixi012"])
    parser.add_argument("--synthetic", type=int, default=0, help="synthetic heads per contrast")
    parser.add_argument(
        "--age-bands", type=int, default=0, help="synthetic heads per contrast in each age band"
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="MARGIN:DEPTH[:FACE[:FACE_BIAS:EAR_BIAS[:FACE_DEPTH]]]",
        help="ear margin and ear depth in mm, optionally the face margin (default 4), biases added to the "
        "face and ear logits before the argmax (default 0:0) and how far the face is carried further back "
        "(default 0 mm); repeatable (the model with its shipped settings always runs, as --name)",
    )
    parser.add_argument(
        "--age-band-mm", type=float, default=4.0, help="the age-band heads' voxel size: 4 (default) or 2"
    )
    parser.add_argument("--model-dir", type=Path, help="another nnU-Net model folder (default: shipped)")
    parser.add_argument("--name", default="v2", help="the model's name in the table (default: v2)")
    parser.add_argument("--out", type=Path, help="Markdown table (and .json beside it)")
    parser.add_argument("--pictures", type=Path, help="folder for the temporalis pictures")
    parser.add_argument(
        "--ear-pictures", type=Path, help="folder for pictures through the teacher's left ear label"
    )
    args = parser.parse_args(argv)

    from evaluation.heads import AGE_BANDS, eval_heads
    from evaluation.region_pictures import save_temporalis_picture
    from evaluation.results import markdown, to_json
    from evaluation.run import Evaluation, run_context

    maskers = {args.name: _masker(None, None, None, args.model_dir)}
    for text in args.candidate:
        values = [float(v) for v in text.split(":")]
        margin, depth = values[:2]
        face = values[2] if len(values) > 2 else None
        bias = (values[3], values[4]) if len(values) > 4 else (0.0, 0.0)
        face_depth = values[5] if len(values) > 5 else 0.0
        label = f"ears {margin:g} mm, {depth:g} mm deep" + ("" if face is None else f", face {face:g} mm")
        if bias != (0.0, 0.0):
            label += f", logits face +{bias[0]:g} ears +{bias[1]:g}"
        if face_depth:
            label += f", face {face_depth:g} mm deeper"
        if args.model_dir is not None:
            label = f"{args.name}, {label}"
        masker = _masker(margin, depth, face, args.model_dir, face_depth)
        maskers[label] = _with_logit_bias(masker, *bias) if bias != (0.0, 0.0) else masker
    evaluation = Evaluation(maskers, on_step=lambda text: print(text, file=sys.stderr, flush=True))
    known = eval_heads()
    results = []

    def save() -> None:  # after every head: a long run on a loaded machine keeps what it measured
        table = markdown(results)
        if args.out is not None:
            args.out.write_text(table)
            args.out.with_suffix(".json").write_text(to_json(results, run_context()))

    for name in args.heads:
        results.extend(evaluation.real_head(known[name]))
        save()
        teacher = evaluation.teachers.get(name)
        if args.pictures is not None and teacher is not None and teacher.temporalis is not None:
            voxels = int(teacher.temporalis.sum())
            title = f"{name}: temporalis region {voxels * 8 / 1000:.1f} ml (green), ears red, face blue"
            save_temporalis_picture(teacher, args.pictures / f"{name}.png", title)
        if args.ear_pictures is not None and teacher is not None:
            voxels = int((teacher.labels == 2).sum())
            title = f"{name}: teacher ears {voxels * 8 / 1000:.1f} ml (red), temporalis green, face blue"
            save_temporalis_picture(teacher, args.ear_pictures / f"{name}.png", title, centre_on="ears")
    results.extend(evaluation.synthetic_heads(args.synthetic))
    save()
    for band in AGE_BANDS if args.age_bands > 0 else ():
        results.extend(evaluation.age_band_heads(args.age_bands, [band], grid_mm=args.age_band_mm))
        save()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
