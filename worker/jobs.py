"""One job, from the spool to the archive: the I/O around :func:`worker.pipeline.deface_series`.

Every job ends in exactly one of three ways, each logged: delivered (``done/``),
quarantined with a reason (``quarantine/``), or — for a delivery fault — left in
``jobs/`` while :class:`RetryableError` asks the caller to try again later.
Running a job twice is harmless: finished jobs are skipped, a job another
process holds is skipped, and a job whose output is complete is only re-sent.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import SegmentationStorage

from pediface.audit import JsonLines
from pediface.errors import PermanentError, RetryableError
from pediface.logs import get_logger
from pediface.settings import Settings
from pediface.spool import JobManifest, JobState, Spool, utcnow
from worker.deface.base import FaceMasker
from worker.deid import DeidPolicy
from worker.delivery import deliver
from worker.pipeline import DefacedSeries, deface_series
from worker.volume import read_instances

log = get_logger("pediface.worker.jobs")

_COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    state: str  # "sent", "quarantined" or "skipped"
    detail: str = ""


class JobRunner:
    """Runs jobs for one worker process; the masker is built once, on first use."""

    def __init__(self, settings: Settings, masker_factory: Callable[[], FaceMasker]) -> None:
        self.settings = settings
        self.spool = Spool(settings.data_dir)
        self._masker_factory = masker_factory
        self._masker: FaceMasker | None = None
        self.policy = DeidPolicy.from_settings(settings.deid)
        self._key = settings.deid_key()
        self.audit = JsonLines(settings.audit_file)
        broker_file = settings.audit.honest_broker_file
        self.honest_broker = JsonLines(broker_file, mode=0o600) if broker_file else None

    @property
    def masker(self) -> FaceMasker:
        if self._masker is None:
            self._masker = self._masker_factory()
        return self._masker

    def run(self, job_id: str) -> JobOutcome:
        try:
            manifest = self.spool.load(job_id)
        except (FileNotFoundError, ValueError) as exc:
            log.warning("job_unknown", job=job_id, error=str(exc))
            return JobOutcome(job_id, "skipped", "unknown job")
        if manifest.state in (JobState.sent, JobState.quarantined) or not (self.spool.jobs / job_id).is_dir():
            log.info("job_already_finished", job=job_id, state=manifest.state.value)
            return JobOutcome(job_id, "skipped", f"already {manifest.state.value}")
        with self.spool.claim(job_id) as mine:
            if not mine:
                log.info("job_busy_elsewhere", job=job_id)
                return JobOutcome(job_id, "skipped", "being processed by another worker")
            manifest = self.spool.load(job_id)
            manifest.attempts += 1
            self.spool.save(manifest.to(JobState.processing, f"attempt {manifest.attempts}"))
            started = time.monotonic()
            try:
                files = self._outputs(job_id, manifest)
                manifest.output_series_uid = _series_uid(files)
                sent = deliver(files, self.settings.destination, self.settings.archive_folder)
            except PermanentError as exc:
                return self._quarantine(manifest, str(exc), exc.code)
            except RetryableError as exc:
                now = utcnow()
                manifest.first_delivery_failure = manifest.first_delivery_failure or now
                failing_s = (now - manifest.first_delivery_failure).total_seconds()
                if failing_s >= self.settings.worker.delivery_horizon_s:
                    return self._quarantine(
                        manifest,
                        f"not delivered within {failing_s / 3600:.1f} h ({manifest.attempts} attempts): {exc}",
                        "delivery.dead_letter",
                    )
                self.spool.save(manifest.to(JobState.dispatched, f"will retry: {exc}"))
                log.warning(
                    "delivery_failed_will_retry", job=job_id, attempt=manifest.attempts, error=str(exc)
                )
                raise
            except Exception as exc:  # noqa: BLE001 - fail closed: anything unexpected is quarantined
                log.error("job_internal_error", job=job_id, error=traceback.format_exc())
                return self._quarantine(
                    manifest, f"internal error ({type(exc).__name__}: {exc}); see the worker log", "internal"
                )
            self.spool.finish(manifest, sent)
            self._audit(
                "series_sent",
                job=job_id,
                series=manifest.series_key,
                output_series=manifest.output_series_uid,
                instances=sent,
                destination=_describe(self.settings),
            )
            log.info(
                "job_sent",
                job=job_id,
                instances_received=manifest.n_instances,
                instances_filtered=manifest.n_filtered,
                instances_sent=sent,
                seconds=round(time.monotonic() - started, 1),
            )
            return JobOutcome(job_id, "sent", f"{sent} instances")

    def _audit(self, event: str, **fields: object) -> None:
        try:
            self.audit.write(event, **fields)
        except OSError as exc:
            log.error("audit_write_failed", error=str(exc))

    def _quarantine(self, manifest, reason: str, code: str) -> JobOutcome:
        self.spool.quarantine(manifest, reason, code)
        self._audit("series_quarantined", job=manifest.job_id, series=manifest.series_key, code=code, reason=reason)
        log.warning("job_quarantined", job=manifest.job_id, code=code, reason=reason)
        return JobOutcome(manifest.job_id, "quarantined", reason)

    def _outputs(self, job_id: str, manifest: JobManifest) -> list[Path]:
        """The defaced series' files, computed once per job (a delivery retry reuses them)."""
        out = self.spool.output_dir(job_id)
        if (out / _COMPLETE).is_file():
            return sorted(out.glob("*.dcm"))
        datasets = read_instances(self.spool.instance_files(job_id))
        started = time.monotonic()
        result = deface_series(
            datasets,
            self.masker,
            self.policy,
            self._key,
            remove_ears=self.settings.deface.remove_ears,
            mask_segmentation=self.settings.deface.send_mask_seg,
        )
        log.info(
            "series_defaced",
            job=job_id,
            masker=result.mask.masker,
            voxels_blanked=result.blanked_voxels,
            stacks=len(result.stacks),
            instances_filtered=sum(result.filtered_counts.values()),
            seconds=round(time.monotonic() - started, 1),
            **{f"mask_{k}": v for k, v in result.mask.details.items() if isinstance(v, (int, float))},
        )
        self._write_qc(job_id, result)
        # Recorded before delivery, so that a delivery retry that reuses the files still knows.
        manifest.filtered = result.filtered_counts
        manifest.n_filtered = sum(manifest.filtered.values())
        if len(result.datasets) + manifest.n_filtered != len(datasets):
            raise PermanentError(
                f"{len(datasets)} instances received but {len(result.datasets)} defaced and "
                f"{manifest.n_filtered} filtered: some are unaccounted for",
                code="internal.accounting",
            )
        self.spool.save(manifest)
        first_in, first_out = datasets[0], result.datasets[0]
        self._audit(
            "series_processed",
            job=job_id,
            instances_in=len(datasets),
            instances_out=len(result.datasets),
            masker=result.mask.masker,
            voxels_blanked=result.blanked_voxels,
            output_study=str(first_out.StudyInstanceUID),
            output_series=str(first_out.SeriesInstanceUID),
        )
        if self.honest_broker is not None:
            self.honest_broker.write(
                "pseudonyms",
                job=job_id,
                patient_id=str(first_in.get("PatientID", "")),
                pseudonym=str(first_out.get("PatientID", "")),
                study_uid=str(first_in.get("StudyInstanceUID", "")),
                output_study_uid=str(first_out.StudyInstanceUID),
                series_uid=str(first_in.get("SeriesInstanceUID", "")),
                output_series_uid=str(first_out.SeriesInstanceUID),
            )
        partial = out.with_name("out.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for ds in [*result.datasets, *([result.segmentation] if result.segmentation is not None else [])]:
            ds.save_as(partial / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        (partial / _COMPLETE).write_text(f"{len(result.datasets)}\n")
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
        return sorted(out.glob("*.dcm"))

    def _write_qc(self, job_id: str, result: DefacedSeries) -> None:
        from worker.qc import render_before_after

        try:
            render_before_after(result.before, result.after, result.mask, self.spool.jobs / job_id / "qc.png")
        except Exception as exc:  # noqa: BLE001 - a missing picture must not stop delivery
            log.warning("qc_render_failed", job=job_id, error=str(exc))


def _describe(settings: Settings) -> str:
    d = settings.destination
    return f"folder {settings.archive_folder}" if d.kind == "folder" else f"{d.ae_title}@{d.host}:{d.port}"


def _series_uid(files: list[Path]) -> str | None:
    """The defaced series' UID (not the mask SEG's, which is a series of its own)."""
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        if ds.SOPClassUID != SegmentationStorage:
            return str(ds.SeriesInstanceUID)
    return None
