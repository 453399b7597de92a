"""The offline commands of a research coordinator: ``pediface deface`` over folders, ``pediface model``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pediface.cli_common import ConfigOption, load, need_worker_extra


def deface(
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="A NIfTI/MGZ file, a folder of them, DICOM (a series, study or export; a DICOMDIR), or a "
            "BIDS dataset.",
        ),
    ],
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="Output folder (created; outside INPUT).")],
    config: ConfigOption = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Items defaced at once, one process each (the CPU "
            "threads are shared between them; each process loads the model once).",
        ),
    ] = 1,
    qc: Annotated[
        bool, typer.Option(help="Write a before/after picture per item to <data_dir>/qc/ (never to OUTPUT).")
    ] = True,
    retry_quarantined: Annotated[
        bool, typer.Option("--retry-quarantined", help="Run items an earlier run quarantined again.")
    ] = False,
) -> None:
    """Deface every head image in INPUT, on this machine, into OUTPUT.

    \b
    INPUT is what you have:
      - one NIfTI (.nii, .nii.gz) or MGZ file, or a folder of them (the paper's tool's input/ folder):
        OUTPUT/NAME_defaced.nii.gz and OUTPUT/NAME_face_mask.nii.gz for each NAME.nii.gz, sub-folders kept;
      - DICOM: one series, a study, a patient or a whole export, in one folder or in sub-folders of any
        depth (series are found by their Series Instance UID; several stacks in one series are split),
        or a DICOMDIR (or the folder it is in);
      - a BIDS dataset: every sub-*/anat/ image, written as a BIDS derivative (same file names, JSON
        sidecars carried over, dataset_description.json with GeneratedBy).

    DICOM comes out defaced and de-identified (DICOM PS3.15 Annex E) as
    OUTPUT/<patient>/<study>/<series>/<instance>.dcm, every name a keyed pseudonym. The key is
    <data_dir>/secrets/deid.key (data_dir is ./pediface-data unless set; or deid.secret, deid.secret_file):
    keep it, and use the same key for later batches, so that a patient keeps the same pseudonyms.

    Files that are neither DICOM nor images (sidecars, licences, thumbnails, hidden files) and series that
    are not head images (reports, presentation states, spectroscopy, localisers, other body parts) are
    skipped with one line each. An image that cannot be defaced safely is never written: the reason goes
    to OUTPUT/quarantine/. OUTPUT/pediface-report.csv lists every input with its output, kind, verdict
    (defaced, quarantined, skipped), reason and seconds; it names your input paths, so keep it out of what
    you share. Run the same command again to resume: finished items are not done twice, and a crash or
    Ctrl-C leaves no half-written file. The log is in <data_dir>/logs/.

    Exit status: 0 when every image was defaced, 1 when one was not, 130 when interrupted, 2 when INPUT,
    OUTPUT or the settings are unusable.
    """
    need_worker_extra("deface")
    from batch.run import run_batch
    from worker.deface import check_masker

    settings = load(config)
    try:
        check_masker(settings)  # a bad model folder: one clear line now, not one per item
        summary = run_batch(
            input_path, output, settings, jobs=jobs, qc=qc, retry_quarantined=retry_quarantined
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        typer.echo(f"pediface: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(summary.line())
    if summary.qc_dir is not None and summary.ran:
        typer.echo(f"  before/after pictures: {summary.qc_dir}")
    if summary.key_file is not None:
        typer.echo(f"  pseudonym key (keep it to link later batches): {summary.key_file}")
    if summary.images == 0:
        typer.echo(f"pediface: no image to deface in {input_path}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(0 if summary.ok else 130 if summary.interrupted else 1)


model_app = typer.Typer(
    help="Install and list face-mask models (nnU-Net v1 or v2, e.g. the paper's published weights).",
    no_args_is_help=True,
)


@model_app.command("import")
def model_import(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH",
            help="An nnU-Net v1 trained model (a folder or zip holding 3d_fullres/TaskNNN_*/"
            "nnUNetTrainerV2__nnUNetPlansv2.1/), an nnU-Net v2 results folder, or the zip of "
            "nnUNetv2_export_model_to_zip.",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(help="Folder name under <data_dir>/models/ (default: from the dataset's name)."),
    ] = None,
    face_label: Annotated[
        int | None,
        typer.Option(help="The model's label value of the face (default: the label named 'face')."),
    ] = None,
    ear_label: Annotated[
        int | None,
        typer.Option(
            help="The model's label value of the ears (default: the label named 'ears'; none: face only)."
        ),
    ] = None,
    fold: Annotated[
        str | None,
        typer.Option(
            help="Import one fold (0-4 or all) instead of every fold found (an ensemble: slower, as "
            "nnU-Net predicts by default)."
        ),
    ] = None,
    orientation: Annotated[
        str, typer.Option(help="Voxel axes of the images the model was trained on (RAS, LPS, LAS, ...).")
    ] = "LPS",
    min_face_ml: Annotated[
        float | None,
        typer.Option(
            help="Smallest face (ml) the guard rail accepts, if this model's face label is smaller than "
            "pediface's (default 50)."
        ),
    ] = None,
    select: Annotated[
        str | None, typer.Option(help="Part of the model's path, when PATH holds several models.")
    ] = None,
    allow_unknown_trainer: Annotated[
        bool,
        typer.Option(help="Accept a v1 trainer pediface does not know (one that changed only training)."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Install an nnU-Net model as a pediface face masker, and say how to select it.

    nnU-Net v1 models (what the paper's 2023 tool ships: plans.pkl and fold_*/model_final_checkpoint.model)
    are converted to nnU-Net v2: v1's Generic_UNet and v2's PlainConvUNet hold the same layers under other
    names, so the network's output is the same (tests/unit/test_model_import.py compares it with nnU-Net
    1.7.1's own). Nothing in the model is unpickled with code allowed to run. The labels are renumbered
    face 1, ears 2 (others are ignored by the masker); v1 folders do not name their labels, so pass
    --face-label (and --ear-label, if the model has ears). The model goes to <data_dir>/models/NAME with
    SHA256SUMS and pediface-model.json, is loaded once by the masker as a check, and is used with

    \b
      deface:
        masker: nnunet
        model_dir: <data_dir>/models/NAME

    Exit status 2 when PATH is not a model pediface can import (the reason is printed).
    """
    need_worker_extra("model import")
    from training.model_import import import_model
    from training.safe_load import ModelImportError

    settings = load(config)
    try:
        record = import_model(
            path,
            settings.data_dir / "models",
            name=name,
            fold=fold,
            face_label=face_label,
            ear_label=ear_label,
            orientation=orientation,
            min_face_ml=min_face_ml,
            select=select,
            allow_unknown_trainer=allow_unknown_trainer,
        )
    except (ModelImportError, ValueError) as exc:
        typer.echo(f"pediface model import: {exc}", err=True)
        raise typer.Exit(2) from exc
    folder = Path(record["installed"])
    labels = ", ".join(f"{k} {v}" for k, v in record["labels"].items() if v)
    typer.echo(
        f"installed {folder.name} ({record['source_kind']}, {record['configuration']}, folds "
        f"{', '.join(record['folds'])}; labels {labels}) in {folder}\n"
        f"  use it: deface.masker: nnunet and deface.model_dir: {folder}\n"
        f"  (or PEDIFACE_DEFACE__MODEL_DIR={folder})"
    )


@model_app.command("list")
def model_list(config: ConfigOption = None) -> None:
    """The shipped models and those imported into <data_dir>/models/; * marks the one in use."""
    from worker.deface import MODELS_ROOT, model_dir_of
    from worker.deface.model_meta import ModelMeta

    settings = load(config)
    in_use = model_dir_of(settings).resolve()
    folders = sorted(p for p in MODELS_ROOT.iterdir() if (p / "SHA256SUMS").is_file())
    imported = settings.data_dir / "models"
    folders += (
        sorted(p for p in imported.iterdir() if (p / "SHA256SUMS").is_file()) if imported.is_dir() else []
    )
    for folder in folders:
        mark = "*" if folder.resolve() == in_use else " "
        dataset = folder / "dataset.json"
        if dataset.is_file():
            meta = ModelMeta.read(folder)
            labels = ", ".join(k for k, v in json.loads(dataset.read_text())["labels"].items() if v)
            what = f"nnunet  folds {','.join(meta.folds)}  {meta.orientation}  labels {labels}"
        else:
            what = "template"
        typer.echo(f"{mark} {folder.name:<28} {what}  {folder}")
