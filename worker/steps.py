"""The steps of one job, each a named function: masked, written, checked, de-identified, sent.

A job's state in ``job.json`` says how far it got, in the manner of mercure's folder per job state::

    received       spool/incoming/<series>/ (the gateway)
    sealed         spool/jobs/<job>/, dispatched by name to a worker
    processing     a worker holds the job (its lock) and starts an attempt
    masked         :func:`mask`: instances read, split into stacks, a face mask per stack
    written        :func:`write`: each mask blanked in the original instances' pixel data
    checked        :func:`check`: no face detectable on renders of the defaced head (fail closed)
    deidentified   :func:`deidentify`: each destination's copy complete in out/<destination>/
    sent           :func:`send`: every destination acknowledged every instance (spool/done/)
    quarantined    any step refused the series (spool/quarantine/, with the reason)

The first four steps work in memory on :class:`Job`; :func:`deidentify` is the one that writes,
and it writes the whole output or nothing (``out.partial`` renamed to ``out``), so a later attempt
either reuses a complete output (:func:`outputs_complete`) or starts again from the instances.
Each step raises :class:`PermanentError` (quarantine) with a reason a person can read; only
:func:`send` reports faults worth retrying, per destination.
"""

from __future__ import annotations

import gc
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import SegmentationStorage

from common.audit import JsonLines
from common.errors import MaskingError, PermanentError, RetryableError
from common.files import utcnow
from common.logs import get_logger
from config.sections import DestinationSettings
from config.settings import Settings
from spool.manifest import Delivery, JobManifest, JobState
from spool.store import Spool
from worker.deface.base import FaceMasker
from worker.deface.evidence import NoFaceEvidence, face_check_unavailable
from worker.deid import DeidPolicy
from worker.delivery import deliver
from worker.facecheck import FaceCheck, FaceCheckResult, draw_detections
from worker.pipeline import (
    DefacedPixels,
    DefacedSeries,
    MaskedSeries,
    blank_pixels,
    deidentify_series,
    mask_series,
)
from worker.types import Volume
from worker.volume.read import read_instances

log = get_logger("pediface.worker.steps")

COMPLETE = "COMPLETE"
"""Marker file of a complete output folder (its text: the number of defaced instances)."""


@dataclass
class JobContext:
    """What every step of every job of one worker process needs; built once per process."""

    settings: Settings
    spool: Spool
    masker_factory: Callable[[], FaceMasker]
    policies: dict[str, DeidPolicy]  # by destination name
    key: bytes
    audit: JsonLines
    honest_broker: JsonLines | None = None
    _masker: FaceMasker | None = field(default=None, init=False, repr=False)
    _face_check: FaceCheck | None = field(default=None, init=False, repr=False)

    @property
    def masker(self) -> FaceMasker:
        """Built on first use (slow: a model is loaded), then kept for every job of the process."""
        if self._masker is None:
            self._masker = self.masker_factory()
            # Everything alive now (modules, the model, settings) lives as long as the process: kept
            # out of the garbage collector's generations, it is no longer traversed by every
            # collection a job's hundreds of thousands of DICOM elements trigger.
            gc.freeze()
        return self._masker

    @property
    def face_check(self) -> FaceCheck:
        """The CNN face check (:mod:`worker.facecheck`) with the configured threshold.

        Built on first use (dlib is imported and the detector's weights checked and loaded on its
        first check), then kept for every job of the process.
        """
        if self._face_check is None:
            self._face_check = FaceCheck(threshold=self.settings.deface.face_check_threshold)
        return self._face_check

    @property
    def face_check_on(self) -> bool:
        return self.settings.deface.face_check == "on"

    def record(self, event: str, **fields: object) -> None:
        """One audit line; a full disk must not stop a series that is otherwise fine."""
        try:
            self.audit.write(event, **fields)
        except OSError as exc:
            log.error("audit_write_failed", error=str(exc))


@dataclass
class Job:
    """One job while a worker holds it: its manifest and what the steps have made so far."""

    manifest: JobManifest
    destinations: list[DestinationSettings]
    instances: list[Dataset] = field(default_factory=list)
    masked: MaskedSeries | None = None
    pixels: DefacedPixels | None = None
    outputs: dict[str, list[Path]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[JobState, str] = field(default_factory=dict)  # what a step adds to the job's history

    @property
    def id(self) -> str:
        return self.manifest.job_id


def destinations_of(settings: Settings, manifest: JobManifest) -> list[DestinationSettings]:
    """The destinations the gateway's routing chose (all of them for an older job)."""
    if not manifest.destinations:
        return settings.all_destinations
    try:
        return [settings.destination_named(name) for name in manifest.destinations]
    except KeyError as exc:
        raise PermanentError(
            f"the series was routed to a destination this worker does not know ({exc}); "
            "check that gateway and workers share one configuration",
            code="config.destination",
        ) from exc


def outputs_complete(ctx: JobContext, job: Job) -> bool:
    """Whether an earlier attempt left every destination's copy complete; if so, reuse it."""
    out = ctx.spool.output_dir(job.id)
    if not (out / COMPLETE).is_file() or not all((out / d.name).is_dir() for d in job.destinations):
        return False
    job.outputs = {d.name: sorted((out / d.name).glob("*.dcm")) for d in job.destinations}
    return True


def mask(ctx: JobContext, job: Job) -> None:
    """-> masked: read the instances, split them into stacks, predict each stack's face mask."""
    started = time.monotonic()
    job.instances = read_instances(ctx.spool.instance_files(job.id))
    job.timings["read"] = time.monotonic() - started
    no_face_in_fov = ctx.settings.deface.no_face_in_fov
    job.masked = mask_series(
        job.instances,
        ctx.masker,
        no_face_in_fov=no_face_in_fov,
        # Looked at only for a geometry the masker finds no face in: is there really none?
        face_check=(
            ctx.face_check if ctx.face_check_on and no_face_in_fov == "deidentify" else face_check_unavailable
        ),
    )
    if job.masked.no_face:
        summary = "; ".join(evidence.summary() for evidence in job.masked.no_face)
        job.notes[JobState.masked] = summary
        log.info("no_face_in_fov", job=job.id, stacks=len(job.masked.unmasked), evidence=summary)
    job.timings.update(job.masked.timings)


def write(ctx: JobContext, job: Job) -> None:
    """-> written: blank each stack's mask in the original instances' pixel data."""
    if job.masked is None:
        raise RuntimeError("write before mask")
    job.pixels = blank_pixels(job.instances, job.masked, remove_ears=ctx.settings.deface.remove_ears)
    job.timings["write_back"] = job.pixels.timings["write_back"]


def check(ctx: JobContext, job: Job) -> None:
    """-> checked: look for a face left on renders of each defaced stack geometry; quarantine if found.

    The guard rail against a mask that missed (a head unlike any the masker learned from): the
    defaced volume's skin surface is rendered from the front and both three-quarter views and the
    CNN face detector of :mod:`worker.facecheck` looks at each render. A face found raises
    :class:`MaskingError` (code ``mask.face_detected``) naming the view and the score; the QC
    picture and the renders with the detections drawn (``facecheck.png``) stay with the job.
    Stacks sent without defacing (no face in their field of view) were checked before, as evidence.
    """
    if job.pixels is None:
        raise RuntimeError("check before write")
    if not ctx.face_check_on:
        job.notes[JobState.checked] = "face check off (deface.face_check)"
        return
    started = time.monotonic()
    pixels = job.pixels
    checked: set[int] = set()
    records: list[dict[str, object]] = []
    summaries: list[str] = []
    for index, part in enumerate(pixels.parts):
        mask = pixels.masks[index]
        if id(mask) in checked or not part.blank.any():  # one check per mask; untouched stacks: evidence
            continue
        checked.add(id(mask))
        label = pixels.stacks[index].label
        after = _blanked(part.volume, part.blank, part.background)
        result = ctx.face_check.check(after, keep_renders=True)
        records.append({"stacks": label, **result.as_record()})
        summaries.append(f"{label}: {result.describe()}")
        if result.face_found:
            best = result.faces[0]
            job.manifest.face_check = records
            _write_check_pictures(ctx, pixels, job.id, index, after, result)
            raise MaskingError(
                f"face still detectable after defacing: view {best.view}, score {best.score:.2f} "
                f"(stack {label}; threshold {result.threshold}; {len(result.views)} views checked). "
                "Nothing was sent; see qc.png and facecheck.png. A wider deface.margin_mm or another "
                "masker, then `pediface quarantine retry`",
                code="mask.face_detected",
            )
    job.manifest.face_check = records
    # A refusal's renders, left from an earlier attempt (before a retry), no longer describe the job.
    (ctx.spool.jobs / job.id / "facecheck.png").unlink(missing_ok=True)
    job.notes[JobState.checked] = "; ".join(summaries) or "no defaced stack to check"
    job.timings["face_check"] = time.monotonic() - started
    seconds = round(job.timings["face_check"], 2)
    log.info("face_check_passed", job=job.id, stacks=len(records), seconds=seconds)


def _blanked(volume: Volume, blank: np.ndarray, background: int) -> Volume:
    return Volume(
        array=np.where(blank, np.asarray(background, dtype=volume.array.dtype), volume.array),
        spacing=volume.spacing,
        origin=volume.origin,
        direction=volume.direction,
        sources=volume.sources,
    )


def _write_check_pictures(
    ctx: JobContext, pixels: DefacedPixels, job_id: str, index: int, after: Volume, result: FaceCheckResult
) -> None:
    """The QC picture and the face check's renders of a series the check refuses, beside its job."""
    from worker.qc import render_before_after

    folder = ctx.spool.jobs / job_id
    try:
        render_before_after(pixels.parts[index].volume, after, pixels.masks[index], folder / "qc.png")
        draw_detections(result, folder / "facecheck.png")
    except Exception as exc:  # noqa: BLE001 - a missing picture must not hide the refusal
        log.warning("face_check_pictures_failed", job=job_id, error=str(exc))


def deidentify(ctx: JobContext, job: Job) -> None:
    """-> deidentified: each destination's de-identified copy, written to out/ whole or not at all.

    Also the QC picture, the filtered-instance counts and the audit and honest-broker records;
    every received instance must be accounted for (defaced or deliberately filtered).
    """
    if job.pixels is None:
        raise RuntimeError("deidentify before write")
    results: dict[str, DefacedSeries] = {}
    for destination in job.destinations:
        result = deidentify_series(
            job.pixels,
            ctx.policies[destination.name],
            ctx.key,
            mask_segmentation=ctx.settings.deface.send_mask_seg,
        )
        job.timings["deid"] = job.timings.get("deid", 0.0) + result.timings["deid"]
        results[destination.name] = result
    result = results[job.destinations[0].name]
    log.info(
        "series_defaced",
        job=job.id,
        masker=result.mask.masker,
        voxels_blanked=result.blanked_voxels,
        stacks=len(result.stacks),
        destinations=len(job.destinations),
        instances_filtered=sum(result.filtered_counts.values()),
        seconds=round(sum(job.timings.values()), 1),
        **{f"mask_{k}": v for k, v in result.mask.details.items() if isinstance(v, (int, float))},
    )
    # The picture is drawn while the files are written: its work is numpy, OpenCV and SimpleITK,
    # which let go of the interpreter, and writing DICOM files is pure Python, so on two cores the
    # two overlap instead of adding up.
    started = time.monotonic()
    picture = threading.Thread(target=_write_qc, args=(ctx, job, result), name=f"qc-{job.id}", daemon=True)
    picture.start()
    try:
        _write_outputs(ctx, job, results, result)
    finally:
        picture.join()
    job.timings["qc_and_write"] = time.monotonic() - started
    job.manifest.timings = {stage: round(seconds, 3) for stage, seconds in job.timings.items()}


def _write_outputs(
    ctx: JobContext, job: Job, results: dict[str, DefacedSeries], result: DefacedSeries
) -> None:
    """Account for every instance, record the pseudonyms, write each destination's copy whole."""
    manifest = job.manifest
    # Recorded before delivery, so that a delivery retry that reuses the files still knows.
    manifest.filtered = result.filtered_counts
    manifest.n_filtered = sum(manifest.filtered.values())
    manifest.no_face_in_fov = [evidence.as_record() for evidence in job.pixels.no_face]
    if len(result.datasets) + manifest.n_filtered != len(job.instances):
        raise PermanentError(
            f"{len(job.instances)} instances received but {len(result.datasets)} defaced and "
            f"{manifest.n_filtered} filtered: some are unaccounted for",
            code="internal.accounting",
        )
    for name, each in results.items():
        _record_pseudonyms(ctx, job.id, name, job.instances[0], each, job.pixels.no_face)
    write_started = time.monotonic()
    out = ctx.spool.output_dir(job.id)
    partial = out.with_name("out.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for name, each in results.items():
        (partial / name).mkdir()
        for ds in [*each.datasets, *([each.segmentation] if each.segmentation is not None else [])]:
            ds.save_as(partial / name / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    (partial / COMPLETE).write_text(f"{len(result.datasets)}\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    job.timings["write"] = time.monotonic() - write_started
    job.outputs = {d.name: sorted((out / d.name).glob("*.dcm")) for d in job.destinations}


def send(ctx: JobContext, job: Job) -> dict[str, RetryableError]:
    """-> sent: deliver each destination's copy that it does not have yet.

    A destination's fault worth retrying (unreachable, refused for now) is returned by name, and
    the others are still sent; any other fault (none is raised on purpose) quarantines the job as
    ``internal``, naming it.
    After each destination the manifest is saved, so a crash never sends a destination twice.
    """
    manifest = job.manifest
    failed: dict[str, RetryableError] = {}
    for destination in job.destinations:
        delivery = manifest.deliveries.setdefault(destination.name, Delivery())
        if delivery.state == "sent":
            continue
        try:
            _deliver(ctx, manifest, destination, job.outputs[destination.name], delivery)
        except RetryableError as exc:
            delivery.state, delivery.last_error = "failed", str(exc)
            delivery.failures += 1
            delivery.first_failure = delivery.first_failure or utcnow()
            failed[destination.name] = exc
            log.warning(
                "delivery_failed",
                job=job.id,
                destination=destination.name,
                attempt=manifest.attempts,
                error=str(exc),
            )
        except Exception as exc:  # noqa: BLE001 - fail closed: deliver() raises only DeliveryError on purpose
            log.error("job_internal_error", job=job.id, error=traceback.format_exc())
            raise PermanentError(
                f"internal error delivering to {destination.name} ({type(exc).__name__}: {exc}); "
                "see the worker log",
                code="internal",
            ) from exc
        ctx.spool.save(manifest)
    return failed


def _deliver(
    ctx: JobContext,
    manifest: JobManifest,
    destination: DestinationSettings,
    files: list[Path],
    delivery: Delivery,
) -> None:
    job_id = manifest.job_id
    started = time.monotonic()
    already = ctx.spool.sent_ledger(job_id, destination.name)
    with ctx.spool.ledger_writer(job_id, destination.name) as record:
        sent = deliver(
            files, destination, ctx.settings.folder_of(destination), already=already, record=record
        )
    manifest.timings["delivery"] = manifest.timings.get("delivery", 0.0) + time.monotonic() - started
    delivery.state, delivery.n_sent, delivery.sent_at = "sent", sent, utcnow()
    delivery.output_series_uid = _series_uid(files)
    delivery.first_failure = delivery.last_error = None
    ctx.record(
        "series_sent",
        job=job_id,
        series=manifest.series_key,
        output_series=delivery.output_series_uid,
        instances=sent,
        resumed_after=len(already & {f.stem for f in files}),
        destination=destination.name,
        target=describe_destination(ctx.settings, destination),
    )


def _record_pseudonyms(
    ctx: JobContext,
    job_id: str,
    destination: str,
    first_in: Dataset,
    result: DefacedSeries,
    no_face: tuple[NoFaceEvidence, ...] = (),
) -> None:
    first_out = result.datasets[0]
    ctx.record(
        "series_processed",
        job=job_id,
        destination=destination,
        instances_in=len(result.datasets) + sum(result.filtered_counts.values()),
        instances_out=len(result.datasets),
        masker=result.mask.masker,
        voxels_blanked=result.blanked_voxels,
        output_study=str(first_out.StudyInstanceUID),
        output_series=str(first_out.SeriesInstanceUID),
        no_face_in_fov=[evidence.summary() for evidence in no_face],
    )
    if ctx.honest_broker is not None:
        ctx.honest_broker.write(
            "pseudonyms",
            job=job_id,
            destination=destination,
            patient_id=str(first_in.get("PatientID", "")),
            pseudonym=str(first_out.get("PatientID", "")),
            study_uid=str(first_in.get("StudyInstanceUID", "")),
            output_study_uid=str(first_out.StudyInstanceUID),
            series_uid=str(first_in.get("SeriesInstanceUID", "")),
            output_series_uid=str(first_out.SeriesInstanceUID),
        )


def _write_qc(ctx: JobContext, job: Job, result: DefacedSeries) -> None:
    from worker.qc import render_before_after

    started = time.monotonic()
    try:
        render_before_after(result.before, result.after, result.mask, ctx.spool.jobs / job.id / "qc.png")
    except Exception as exc:  # noqa: BLE001 - a missing picture must not stop delivery
        log.warning("qc_render_failed", job=job.id, error=str(exc))
    job.timings["qc"] = time.monotonic() - started


def describe_destination(settings: Settings, destination: DestinationSettings) -> str:
    if destination.kind == "folder":
        return f"folder {settings.folder_of(destination)}"
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def _series_uid(files: list[Path]) -> str | None:
    """The defaced series' UID (not the mask SEG's, which is a series of its own)."""
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        if ds.SOPClassUID != SegmentationStorage:
            return str(ds.SeriesInstanceUID)
    return None
