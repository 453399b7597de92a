"""``python -m training MODEL_DIR [options]``: the whole training recipe (see train.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument(
        "model_dir", type=Path, help="where to write the model folder (e.g. models/nnunet-face)"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/pediface-train"))
    parser.add_argument("--cases", type=int, default=120, help="synthetic training pairs")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--budget-s", type=float, default=None, help="stop training after this many seconds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-teachers", action="store_true", help="reuse work_dir/teacher/*.npz")
    parser.add_argument("--resume", action="store_true", help="keep synthetic cases already written")
    parser.add_argument(
        "--negatives", type=float, default=0.15, help="share of skull-stripped cases labelled all background"
    )
    parser.add_argument(
        "--init-from", type=Path, default=None, help="start from this checkpoint's weights (fine-tuning)"
    )
    parser.add_argument("--png-dir", type=Path, default=None, help="write teacher QC PNGs here")
    parser.add_argument(
        "--contrasts",
        nargs="+",
        default=None,
        help="contrasts the synthetic cases are drawn from (default: t1 t2 pd flair random; t1ce adds "
        "contrast-enhanced T1)",
    )
    parser.add_argument(
        "--initial-lr", type=float, default=None, help="SGD's first learning rate (nnU-Net's default: 0.01)"
    )
    args = parser.parse_args(argv)
    from training.synth import CONTRASTS, ENHANCED
    from training.train import train_model

    contrasts = tuple(args.contrasts or CONTRASTS)
    unknown = sorted(set(contrasts) - {*CONTRASTS, ENHANCED})
    if unknown:
        parser.error(
            f"unknown contrast(s) {', '.join(unknown)}: choose from {' '.join((*CONTRASTS, ENHANCED))}"
        )

    out = train_model(
        args.model_dir,
        work_dir=args.work_dir,
        n_cases=args.cases,
        iterations=args.iterations,
        budget_s=args.budget_s,
        threads=args.threads,
        seed=args.seed,
        teachers=not args.skip_teachers,
        png_dir=args.png_dir,
        resume=args.resume,
        negatives=args.negatives,
        init_from=args.init_from,
        contrasts=contrasts,
        initial_lr=args.initial_lr,
    )
    print(f"model written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
