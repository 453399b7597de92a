"""Face maskers side by side: `python -m bench.masker` rewrites the "masker" section of docs/benchmarks.md.

For the template masker and the nnU-Net masker, on the same volumes in one run:

* seconds per head from volume to mask (``predict`` wall time, after the masker is built), with the
  process limited to 1 and then 2 threads (torch and SimpleITK);
* agreement with the teacher labels (worker/deface/training/teacher.py) on the 2 mm LPS teacher grid,
  inside the teacher's domain (within 4 mm of head tissue): Dice of the face at margin 0, and the share
  of the teacher's face and ears blanked at the default 4 mm margin (the safety-relevant figure).

Held-out heads (never trained on) are marked. Needs ../shared; teacher labels are read from
``/tmp/pediface-train/teacher`` or rebuilt there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench.report import stamp, write_section

REPO = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/pediface-train")
BENCH_HEADS = ("ixi012", "decub-hfp", "sub-01", "uih-t1")


def _teacher(name: str) -> dict[str, np.ndarray]:
    path = WORK / "teacher" / f"{name}.npz"
    if not path.exists():
        from worker.deface.training.train import build_teachers

        build_teachers(WORK, None, [name])
    return dict(np.load(path))


def _on_teacher_grid(
    labels: np.ndarray, volume_image: sitk.Image, teacher: dict[str, np.ndarray]
) -> np.ndarray:
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(volume_image)
    ref = sitk.Image([int(v) for v in teacher["image"].shape[::-1]], sitk.sitkUInt8)
    ref.SetSpacing([float(v) for v in teacher["spacing"]])
    ref.SetOrigin([float(v) for v in teacher["origin"]])
    return sitk.GetArrayFromImage(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from pediface.errors import MaskingError
    from worker.deface import load_masker
    from worker.deface.training.heads import HEADS, HELD_OUT
    from worker.deface.training.teacher import HEAD_MARGIN_MM, _within, head_mask, read_head
    from worker.types import FaceLabel, Volume

    models = {"template": REPO / "models" / "template-pydeface", "nnunet": REPO / "models" / "nnunet-face"}
    volumes = {name: read_head(HEADS[name]) for name in BENCH_HEADS}
    rows = []
    speed: dict[tuple[str, str, int], float] = {}
    for kind, model_dir in models.items():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            build_started = time.perf_counter()
            masker = load_masker(kind, model_dir, threads=threads)
            build_s = time.perf_counter() - build_started
            zero = load_masker(kind, model_dir, threads=threads, margin_mm=0.0) if threads == 2 else None
            for name, image in volumes.items():
                volume = Volume.from_sitk(image)
                times = []
                outcome = "ok"
                mask = None
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    try:
                        mask = masker.predict(volume)
                    except MaskingError as error:
                        outcome = f"MaskingError ({error.code})"
                    times.append(time.perf_counter() - started)
                speed[(kind, name, threads)] = statistics.median(times)
                if zero is None or mask is None:
                    if zero is not None:
                        rows.append((kind, name, outcome, "", "", ""))
                    continue
                teacher = _teacher(name)
                domain = _within(head_mask(teacher["image"]), HEAD_MARGIN_MM)
                truth = teacher["labels"]
                mask0 = zero.predict(volume)
                face0 = _on_teacher_grid(mask0.labels, image, teacher) == FaceLabel.FACE
                blanked = _on_teacher_grid(mask.blank().astype(np.uint8), image, teacher) > 0
                t_face, t_ears = (truth == FaceLabel.FACE) & domain, (truth == FaceLabel.EARS) & domain
                dice = _dice(face0 & domain, t_face)
                face_cov = int((blanked & t_face).sum()) / max(int(t_face.sum()), 1)
                ear_cov = int((blanked & t_ears).sum()) / max(int(t_ears.sum()), 1)
                rows.append((kind, name, outcome, f"{dice:.3f}", f"{face_cov:.1%}", f"{ear_cov:.1%}"))
            print(kind, threads, f"build {build_s:.1f}s", flush=True)

    shapes = {
        name: "x".join(str(s) for s in image.GetSize())
        + " @ "
        + "x".join(f"{s:.2g}" for s in image.GetSpacing())
        + " mm"
        for name, image in volumes.items()
    }
    lines = [
        "## Face maskers: template registration vs nnU-Net (`python -m bench.masker`)",
        "",
        stamp(),
        "",
        "Seconds of `predict()` per head (volume to mask, masker already built), the process limited to "
        f"1 and 2 threads; median of {args.repeat} run(s). Held-out heads were never used to train "
        "the nnU-Net model (decub-hfp is the same person as the training head decub-hfs, "
        "prone instead of supine).",
        "",
        "| head | grid | held out | template 1 thr | template 2 thr | nnunet 1 thr | nnunet 2 thr |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in BENCH_HEADS:
        cells = [f"{speed[(k, name, t)]:.1f}" for k in models for t in (1, 2)]
        lines.append(
            f"| {name} | {shapes[name]} | {'yes' if name in HELD_OUT else 'no'} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Agreement with the teacher labels (2 mm LPS grid, within 4 mm of head tissue). "
        "Dice: face at margin 0. Covered: share of the teacher's face / ears blanked by the default "
        "mask (4 mm margin; the template masker has no ear label).",
        "",
        "| masker | head | outcome | face Dice (margin 0) | teacher face blanked | teacher ears blanked |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {k} | {n} | {o} | {d} | {f} | {e} |" for k, n, o, d, f, e in rows]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("masker", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
