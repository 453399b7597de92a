"""The face check measured: `python -m bench.facecheck` rewrites two sections.

* docs/defacing.md, ``facecheck-threshold``: every shared real head before and after defacing with
  the shipped nnU-Net masker, the detector's best score in each of the five views (front, 45 degrees
  left and right, both profiles; "-" where it reports nothing), and the tests' small series (the
  pydeface mean head at 3 mm) before and after the shipped maskers and the deliberately broken one.
  The threshold (``deface.face_check_threshold``) is chosen from this table.
* docs/benchmarks.md, ``facecheck``: seconds of the pipeline's check (front and both 45-degree views)
  per head, split into rendering and detection, the median of 3 runs, OpenCV limited to 2 threads.

Needs ../shared; about five minutes on two cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import REPORT, stamp, write_section

REPO = Path(__file__).resolve().parents[1]
DEFACING = REPO / "docs" / "defacing.md"
TEMPLATE_HEAD = REPO / "models" / "template-pydeface" / "pydeface_mean_reg2mean.nii.gz"

IN_VIEW = {
    "ixi012": "whole face",
    "sub-01": "whole face",
    "decub-hfp": "whole face",
    "decub-hfs": "whole face",
    "xa30-t1": "whole face",
    "uih-t1": "whole face",
    "mni305": "cut at the eyes (forehead and eyelids only)",
    "vrd-seg3d": "cut below the eyes (no mouth or chin)",
    "negctrl-6y": "none (skull-stripped)",
    "negctrl-1mo": "none (skull-stripped)",
}
"""What of the face each shared head's field of view holds, judged by eye on its renders."""

ALL_VIEWS = ("front", "left45", "right45", "left90", "right90")


def _volume(spec):  # noqa: ANN001, ANN202 - evaluation.heads.HeadSpec -> Volume
    if spec.kind == "dicom":
        from worker.volume.pixels import build_volume
        from worker.volume.read import read_instances

        files = sorted(p for p in spec.path.iterdir() if p.is_file() and not p.name.startswith("."))
        return build_volume(read_instances(files))
    from batch.images import load, stored, to_volume

    image = load(spec.path)
    return to_volume(image, stored(image))


def _defaced(masker, volume):  # noqa: ANN001, ANN202
    from common.errors import PedifaceError
    from worker.types import Volume

    try:
        blank = masker.predict(volume).blank(include_ears=True)
    except PedifaceError as error:
        return None, error.code
    array = np.where(blank, np.asarray(volume.array.min(), dtype=volume.array.dtype), volume.array)
    return Volume(array, volume.spacing, volume.origin, volume.direction), ""


def _scores(check, volume) -> list[str]:  # noqa: ANN001
    result = check.check(volume)
    return [f"{s:.2f}" if (s := result.best_of(view)) is not None else "-" for view in ALL_VIEWS]


def _row(name: str, state: str, cells: list[str], note: str = "") -> str:
    return f"| {name} | {state} | " + " | ".join(cells) + f" | {note} |"


def threshold_table(masker, check) -> tuple[str, dict[str, float]]:  # noqa: ANN001
    """The scores table (markdown) and the lowest score before / highest after, for the threshold."""
    from evaluation.heads import eval_heads
    from worker.deface import MODELS_ROOT, load_masker
    from worker.sample import write_sample_series
    from worker.volume.pixels import build_volume
    from worker.volume.read import read_instances

    rows, before_min, after_max = [], [], []
    heads = eval_heads()
    for name, in_view in IN_VIEW.items():
        volume = _volume(heads[name])
        before = _scores(check, volume)
        rows.append(_row(name, "before", before, in_view))
        if in_view == "whole face":
            before_min += [float(s) if s != "-" else 0.0 for s in before[:3]]
        after, refused = _defaced(masker, volume)
        if after is None:
            rows.append(_row(name, "after", ["not defaced"] * 5, f"masker refused ({refused})"))
            continue
        cells = _scores(check, after)
        after_max += [float(s) for s in cells if s != "-"]
        rows.append(_row(name, "after", cells, "shipped nnU-Net masker"))
        print(rows[-2], rows[-1], sep="\n", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        series = build_volume(
            read_instances(write_sample_series(TEMPLATE_HEAD, Path(folder), spacing_mm=3.0))
        )
    rows.append(_row("mean head, 3 mm", "before", _scores(check, series), "the tests' small series"))
    broken = _broken_masker()
    for label, each in (
        ("after nnU-Net", masker),
        ("after template", load_masker("template", MODELS_ROOT / "template-pydeface")),
        ("after upper half", load_masker("template", broken)),
    ):
        after, _ = _defaced(each, series)
        cells = _scores(check, after)
        rows.append(_row("mean head, 3 mm", label, cells, ""))
        if label == "after nnU-Net":
            after_max += [float(s) for s in cells if s != "-"]
    header = "| head | state | " + " | ".join(ALL_VIEWS) + " | face in the field of view / masker |"
    table = "\n".join([header, "|" + "---|" * (len(ALL_VIEWS) + 3), *rows])
    return table, {"before_min": min(before_min), "after_max": max(after_max, default=0.0)}


def _broken_masker() -> Path:
    """The tests' broken masker (face region cut to its upper half), in a temporary folder."""
    from evaluation.broken_masker import write_upper_face_masker

    return write_upper_face_masker(Path(tempfile.mkdtemp()) / "template-upper-face")


def timing_table(masker) -> tuple[str, float]:  # noqa: ANN001
    """Seconds of the pipeline's check per head on its defaced volume (render, detect, total)."""
    from evaluation.heads import eval_heads
    from worker.facecheck import FaceCheck, fit_head
    from worker.render import FACE_CHECK_VIEWS, face_check_renders

    check = FaceCheck()
    rows, totals = [], []
    heads = eval_heads()
    for name in ("ixi012", "sub-01", "decub-hfs", "xa30-t1", "uih-t1"):
        volume = _volume(heads[name])
        after, _ = _defaced(masker, volume)
        volume = after if after is not None else volume
        check.check(volume)  # warm-up: the detector is loaded
        render_s, detect_s, total_s, cpu_s = [], [], [], []
        for _ in range(3):
            started, cpu = time.perf_counter(), time.process_time()
            renders = face_check_renders(volume, views=FACE_CHECK_VIEWS)
            rendered = time.perf_counter()
            for image in renders.values():
                check.detector.detect(fit_head(image)[0])
            render_s.append(rendered - started)
            detect_s.append(time.perf_counter() - rendered)
            total_s.append(time.perf_counter() - started)
            cpu_s.append(time.process_time() - cpu)
        total = statistics.median(total_s)
        totals.append(total)
        shape = "x".join(str(n) for n in volume.shape[::-1])
        rows.append(
            f"| {name} ({shape}) | {statistics.median(render_s):.2f} | "
            f"{statistics.median(detect_s):.2f} | {total:.2f} | {statistics.median(cpu_s):.2f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| head (defaced) | render 3 views s | detect 3 views s | total s (wall) | CPU s, all threads |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    return table, statistics.median(totals)


def _threshold_section(masker, check, threshold: float, width_px: int) -> None:  # noqa: ANN001
    table, bounds = threshold_table(masker, check)
    write_section(
        "facecheck-threshold",
        f"{stamp()} `python -m bench.facecheck`. Best detector score per view (dlib MMOD CNN, "
        f"renders on a 2 mm grid, head scaled to {width_px} px wide, no upsampling; "
        "'-': no detection).\n\n"
        f"{table}\n\n"
        f"Lowest score before defacing in a front or 45-degree view of a head with its whole face in view: "
        f"**{bounds['before_min']:.2f}**; highest score after defacing with the shipped nnU-Net masker: "
        f"**{bounds['after_max']:.2f}**. Threshold: **{threshold}**.",
        report=DEFACING,
    )


def main() -> None:
    import cv2

    from worker.deface import MODELS_ROOT, load_masker
    from worker.facecheck import FACE_SCORE_THRESHOLD, HEAD_WIDTH_PX, FaceCheck
    from worker.render import FACE_CHECK_VIEWS, PROFILE_VIEWS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timing-only", action="store_true", help="Rewrite only the benchmarks section.")
    args = parser.parse_args()
    cv2.setNumThreads(2)
    masker = load_masker("nnunet", MODELS_ROOT / "nnunet-face", threads=2)
    if not args.timing_only:
        check = FaceCheck(threshold=FACE_SCORE_THRESHOLD, views={**FACE_CHECK_VIEWS, **PROFILE_VIEWS})
        _threshold_section(masker, check, FACE_SCORE_THRESHOLD, HEAD_WIDTH_PX)
    timings, median = timing_table(masker)
    write_section(
        "facecheck",
        f"### Face check (goal <= 0.5 s per series on 2 cores)\n\n{stamp()} `python -m bench.facecheck`: "
        "the pipeline's check on each defaced head (front, left45, right45), median of 3 runs; "
        "OpenCV limited to 2 threads, dlib single-threaded (the `dlib-bin` wheel, built without BLAS). "
        "Wall seconds include any wait for a core; CPU seconds do not, but they too grow when other "
        "work shares the cores.\n\n"
        f"{timings}\n\nMedian over the heads: **{median:.2f} s** (wall) per series.",
        report=REPORT,
    )


if __name__ == "__main__":
    main()
