"""``pediface evaluate``: face maskers judged on the shared real heads and on synthetic children."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pediface.cli_common import need_worker_extra


def evaluate(
    masker: Annotated[
        list[str] | None,
        typer.Option(
            "--masker", "-m", metavar="KIND", help="template or nnunet; repeat for several (default: both)."
        ),
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="nnU-Net model folder (default: models/nnunet-face).")
    ] = None,
    heads: Annotated[
        list[str] | None,
        typer.Option(
            "--heads",
            metavar="NAME",
            help="Real heads to use, repeatable (default: the held-out heads, every DICOM head with a "
            "face and the two negative controls). Known: ixi012, mni305, sub-01, vrd-seg3d, decub-hfp, "
            "xa30-t1, uih-t1, decub-hfs, negctrl-6y, negctrl-1mo; none: synthetic heads only.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Also write the results: FILE.json gets JSON (every raw detector score); any other name "
            "gets the Markdown table, with the JSON beside it (same name, .json).",
        ),
    ] = None,
    synthetic: Annotated[
        int, typer.Option(metavar="N", help="Synthetic paediatric heads per contrast (0: none).")
    ] = 1,
    age_bands: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Synthetic heads per contrast in each age band (newborn, 1-5 y, 6-12 y, 13-21 y, adult; "
            "sized from head-circumference growth charts), with brain voxels changed, in a table per "
            "band and contrast (0: none).",
        ),
    ] = 0,
    age_band_mm: Annotated[
        float,
        typer.Option(
            metavar="MM",
            help="Voxel size of the age-band heads: 4 (the model's own grid; a 4 mm skin layer is one "
            "voxel) or 2 (the same heads, closer to a clinical series).",
        ),
    ] = 4.0,
    renders: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Write every surface render (before, and after each masker) there as PNG, accepted "
            "face boxes in red: look at any face still detected after defacing.",
        ),
    ] = None,
    grid: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Write one PNG of every head before and after each masker (front and 45 degrees left, "
            "accepted face boxes in red), a row per head: the page to scan by eye.",
        ),
    ] = None,
) -> None:
    """Evaluate face maskers on the real heads in ../shared/data and on synthetic children.

    For every head and masker: the head surface is rendered (ray casting, Lambert shading, 1 mm pixels)
    from the front and 45 degrees left and right, before and after defacing, and OpenCV's bundled Haar
    face cascades look for a face in each render ("yes -> no": found before, not after; "n.d.": not
    detectable even before defacing). Also measured: the share of the teacher's ear label removed, the
    voxels changed inside the registered atlas brain (must be 0), the share of non-zero voxels lost on
    the two skull-stripped children (negative controls; a refused series loses nothing), the seconds of
    predict(), and, on synthetic child-sized heads made from a held-out head, the share of their known
    face and ear labels removed, per contrast; with --age-bands, also synthetic heads of each age band
    from newborn to adult, with the voxels changed inside their atlas brain. DICOM heads go through the
    whole pipeline (defaced, de-identified, read back). Method and the latest results: docs/defacing.md.

    Prints the table to standard output (a progress bar on standard error when it is a terminal). Takes
    about a minute per head on two CPU cores. Exit status 2 when ../shared/data is missing or a name is
    unknown. Example: pediface evaluate --out /tmp/eval.md --synthetic 2
    """
    need_worker_extra("evaluate")
    from common.progress import make_progress
    from evaluation.heads import DEFAULT_HEADS, SHIPPED_MODELS, eval_heads
    from evaluation.results import markdown, to_json
    from evaluation.run import parameters, run, run_context
    from training.synth import OUT_GRIDS_MM
    from worker.deface import load_masker

    kinds = masker or ["template", "nnunet"]
    unknown = [kind for kind in kinds if kind not in SHIPPED_MODELS]
    if unknown:
        typer.echo(f"pediface: unknown masker {', '.join(unknown)}; choose template or nnunet", err=True)
        raise typer.Exit(2)
    names = heads or list(DEFAULT_HEADS)
    if names == ["none"]:
        names = []
    unknown = [name for name in names if name not in eval_heads()]
    if unknown:
        typer.echo(f"pediface: unknown head {', '.join(unknown)}; see --help for the names", err=True)
        raise typer.Exit(2)
    if age_band_mm not in OUT_GRIDS_MM:
        grids = " or ".join(f"{mm:g}" for mm in OUT_GRIDS_MM)
        typer.echo(f"pediface: --age-band-mm must be {grids}, got {age_band_mm:g}", err=True)
        raise typer.Exit(2)
    try:
        with make_progress() as progress:
            total = len(names) + (1 if synthetic > 0 else 0) + (1 if age_bands > 0 else 0)
            task = progress.add_task("loading maskers", total=total)
            maskers = {
                kind: load_masker(kind, model_dir if kind == "nnunet" and model_dir else SHIPPED_MODELS[kind])
                for kind in dict.fromkeys(kinds)
            }
            results = run(
                maskers,
                names,
                synthetic,
                on_item=lambda _name: progress.advance(task),
                on_step=lambda text: progress.update(task, description=text),
                renders_dir=renders,
                grid=grid,
                age_bands=age_bands,
                age_band_mm=age_band_mm,
            )
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"pediface: {exc}", err=True)
        raise typer.Exit(2) from exc
    table = markdown(results)
    typer.echo(table, nl=False)
    if out is not None:
        names_of = {k: {"name": m.name, "sha256": getattr(m, "checksums", {})} for k, m in maskers.items()}
        meta = {
            **run_context(),
            "maskers": names_of,
            "parameters": {**parameters(), "age_band_mm": age_band_mm},
        }
        json_path = out if out.suffix == ".json" else out.with_suffix(".json")
        if out.suffix != ".json":
            out.write_text(table)
        json_path.write_text(to_json(results, meta))
