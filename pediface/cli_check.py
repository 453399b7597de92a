"""``pediface check``: is there a recognisable face in any of these images? For release audits.

A data-sharing coordinator runs it on a dataset defaced by any tool (pydeface, the paper's tool,
pediface) before release. Each volume is rendered and looked at by the pipeline's own face check
(:mod:`worker.facecheck`), so a file that passes here would pass the gateway's guard rail too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from pediface.cli_common import ConfigOption, load, need_worker_extra

FACE, NO_FACE, NO_FACE_IN_FOV, UNREADABLE = "face", "no-face", "no-face-in-fov", "unreadable"


def check(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATH...",
            help="NIfTI/MGZ files, DICOM series folders, or folders of them (BIDS, a DICOM export, the "
            "output of pediface deface).",
        ),
    ],
    config: ConfigOption = None,
    pictures: Annotated[
        Path | None,
        typer.Option(
            "--pictures", help="Write each volume's renders, detections boxed, to this folder (created)."
        ),
    ] = None,
    profiles: Annotated[
        bool,
        typer.Option("--profiles", help="Also look from both sides (90 degrees), not only the front and 45."),
    ] = False,
) -> None:
    """Look for a recognisable face on renders of every head image in PATH...; one line per volume.

    \b
    Each line: the volume, its verdict, the best detector score and the view it was in:
      face            a face is detectable (score >= deface.face_check_threshold)
      no-face         no face, and the field of view reaches where a face would be (defaced)
      no-face-in-fov  no face, and the field of view does not reach the face (a slab, a skull-stripped
                      brain, no head at all)
      unreadable      the volume could not be read (the reason follows)

    The skin surface is rendered from the front and 45 degrees left and right (with --profiles also
    from each side) and dlib's CNN face detector (shipped with pediface) looks at each render: the
    check the gateway's workers run on every defaced series (deface.face_check).

    Exit status: 0 when no volume holds a face, 1 when any does (whatever else happened), 2 when an
    input is unreadable or missing and none holds a face.
    """
    need_worker_extra("check")
    from worker.facecheck import FaceCheck
    from worker.render import FACE_CHECK_VIEWS, PROFILE_VIEWS

    settings = load(config)
    views = {**FACE_CHECK_VIEWS, **(PROFILE_VIEWS if profiles else {})}
    face_check = FaceCheck(threshold=settings.deface.face_check_threshold, views=views)
    try:
        face_check.detector  # noqa: B018 - dlib and the checked weights, before any volume
    except (ValueError, RuntimeError) as exc:
        typer.echo(f"pediface check: {exc}", err=True)
        raise typer.Exit(2) from exc
    if pictures is not None:
        pictures.mkdir(parents=True, exist_ok=True)
    faces = unreadable = 0
    for label, volume, error in _volumes(paths):
        if volume is None:
            unreadable += 1
            typer.echo(f"{label}\t{UNREADABLE}\t-\t-\t{error}")
            continue
        try:
            verdict, score, view = _verdict(face_check, volume, label, pictures)
        except Exception as exc:  # noqa: BLE001 - one bad volume must not hide the others' verdicts
            unreadable += 1
            typer.echo(f"{label}\t{UNREADABLE}\t-\t-\t{type(exc).__name__}: {exc}")
            continue
        faces += verdict == FACE
        typer.echo(f"{label}\t{verdict}\t{score}\t{view}")
    raise typer.Exit(1 if faces else 2 if unreadable else 0)


def _verdict(face_check, volume, label: str, pictures: Path | None) -> tuple[str, str, str]:  # noqa: ANN001
    from worker.deface.evidence import field_of_view
    from worker.facecheck import draw_detections

    result = face_check.check(volume, keep_renders=pictures is not None)
    if pictures is not None:
        draw_detections(result, pictures / f"{_file_name(label)}.png")
    best = result.best
    score, view = (f"{best.score:.2f}", best.view) if best else ("-", "-")
    if result.face_found:
        return FACE, score, view
    return (NO_FACE if field_of_view(volume).reaches_face else NO_FACE_IN_FOV), score, view


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "volume"


def _volumes(paths: list[Path]) -> Iterator[tuple[str, object, str]]:
    """``(label, volume or None, why not)`` for every volume under ``paths``, in a stable order."""
    from batch.discover import DicomSeries, discover

    for path in paths:
        try:
            found = discover(path)
        except (FileNotFoundError, ValueError, OSError) as exc:
            yield str(path), None, str(exc)
            continue
        prefix = "" if found.layout == "file" else f"{path.as_posix().rstrip('/')}/"
        for item in found.items:
            # A path that is itself one series or file is labelled as given.
            label = (
                str(path) if found.layout == "file" or item.label == path.name else f"{prefix}{item.label}"
            )
            if isinstance(item, DicomSeries):
                yield from _dicom_volumes(label, list(item.files))
            else:
                yield _nifti_volume(label, item.path)
        if not found.items:
            reasons = "; ".join(sorted({s.reason for s in found.skipped})) or "empty"
            yield str(path), None, f"no head image found ({reasons})"


def _nifti_volume(label: str, path: Path) -> tuple[str, object, str]:
    from batch.images import load as load_image
    from batch.images import stored, to_volume
    from common.errors import PedifaceError

    try:
        image = load_image(path)
        return label, to_volume(image, stored(image)), ""
    except (PedifaceError, OSError, ValueError) as exc:
        return label, None, str(exc)


def _dicom_volumes(label: str, files: list[Path]) -> Iterator[tuple[str, object, str]]:
    """Every stack geometry of one DICOM series (the volumes of an fMRI series share one)."""
    from common.errors import PedifaceError
    from worker.volume.pixels import stack_volume
    from worker.volume.read import read_instances
    from worker.volume.stacks import split_series

    try:
        datasets = read_instances(files)
        split = split_series(datasets)
        if not split.stacks:
            yield label, None, "the series holds no image stack"
            return
        decoded: dict = {}
        seen: set[tuple] = set()
        for stack in split.stacks:
            volume = stack_volume(datasets, stack, decoded)
            key = (volume.shape, volume.spacing, volume.origin, volume.direction)
            if key in seen:
                continue
            seen.add(key)
            yield (label if len(split.stacks) == 1 else f"{label} [{stack.label}]"), volume, ""
    except (PedifaceError, OSError, ValueError) as exc:
        yield label, None, str(exc)
