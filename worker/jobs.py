"""One job, from the spool to the archives: the I/O around :mod:`worker.pipeline`.

The face is blanked once (:func:`deface_pixels`); each destination then gets its own
de-identified copy (:func:`deidentify_series` with the destination's options) and its own
delivery, so an unreachable archive holds up no other.

Every job ends in exactly one of three ways, each logged: delivered to all its
destinations (``done/``), quarantined with a reason (``quarantine/``), or — for a
delivery fault — left in ``jobs/`` while :class:`RetryableError` asks the caller to try
again later. Running a job twice is harmless: finished jobs are skipped, a job another
process holds is skipped, a job whose output is complete is only re-sent, destinations
that have the series are not sent it again, and a send cut short resumes after the last
acknowledged instance (the job's ledger, :meth:`Spool.ledger_writer`).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import SegmentationStorage

from pediface.audit import JsonLines
from pediface.errors import DeliveryError, PermanentError, RetryableError
from pediface.logs import get_logger
from pediface.settings import DestinationSettings, Settings
from pediface.spool import Delivery, JobManifest, JobState, Spool, utcnow
from worker.deface.base import FaceMasker
from worker.deid import DeidPolicy
from worker.deid.options import parse_option
from worker.delivery import deliver
from worker.pipeline import DefacedSeries, deface_pixels, deidentify_series
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
        base = DeidPolicy.from_settings(settings.deid)
        # Built here, so that a destination with an unknown option stops the worker at start.
        self.policies: dict[str, DeidPolicy] = {
            d.name: base
            if d.deid_options is None
            else dataclasses.replace(base, options=frozenset(parse_option(o) for o in d.deid_options))
            for d in settings.all_destinations
        }
        self.policy = self.policies[settings.destination.name]
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
                destinations = self._destinations(manifest)
                outputs = self._outputs(job_id, manifest, destinations)
            except PermanentError as exc:
                return self._quarantine(manifest, str(exc), exc.code)
            except Exception as exc:  # noqa: BLE001 - fail closed: anything unexpected is quarantined
                log.error("job_internal_error", job=job_id, error=traceback.format_exc())
                return self._quarantine(
                    manifest, f"internal error ({type(exc).__name__}: {exc}); see the worker log", "internal"
                )
            failed: dict[str, RetryableError] = {}
            for destination in destinations:
                delivery = manifest.deliveries.setdefault(destination.name, Delivery())
                if delivery.state == "sent":
                    continue
                try:
                    self._deliver(manifest, destination, outputs[destination.name], delivery)
                except RetryableError as exc:
                    now = utcnow()
                    delivery.state, delivery.last_error = "failed", str(exc)
                    delivery.failures += 1
                    delivery.first_failure = delivery.first_failure or now
                    failed[destination.name] = exc
                    log.warning(
                        "delivery_failed",
                        job=job_id,
                        destination=destination.name,
                        attempt=manifest.attempts,
                        error=str(exc),
                    )
                except PermanentError as exc:
                    return self._quarantine(manifest, f"destination {destination.name}: {exc}", exc.code)
                except Exception as exc:  # noqa: BLE001 - fail closed
                    log.error("job_internal_error", job=job_id, error=traceback.format_exc())
                    return self._quarantine(
                        manifest,
                        f"internal error delivering to {destination.name} ({type(exc).__name__}: {exc}); "
                        "see the worker log",
                        "internal",
                    )
                self.spool.save(manifest)  # a crash from here on must not send this destination again
            if failed:
                return self._retry_later(manifest, failed)
            sent = min((manifest.deliveries[d.name].n_sent for d in destinations), default=0)
            first = manifest.deliveries[destinations[0].name]
            manifest.output_series_uid = first.output_series_uid
            manifest.first_delivery_failure = None
            self.spool.finish(manifest, sent)
            log.info(
                "job_sent",
                job=job_id,
                destinations=len(destinations),
                instances_received=manifest.n_instances,
                instances_filtered=manifest.n_filtered,
                instances_sent=sent,
                seconds=round(time.monotonic() - started, 1),
            )
            return JobOutcome(job_id, "sent", f"{sent} instances to {len(destinations)} destination(s)")

    def _destinations(self, manifest: JobManifest) -> list[DestinationSettings]:
        """The destinations the gateway's routing chose (all of them for an older job)."""
        if not manifest.destinations:
            return self.settings.all_destinations
        try:
            return [self.settings.destination_named(name) for name in manifest.destinations]
        except KeyError as exc:
            raise PermanentError(
                f"the series was routed to a destination this worker does not know ({exc}); "
                "check that gateway and workers share one configuration",
                code="config.destination",
            ) from exc

    def _deliver(
        self, manifest: JobManifest, destination: DestinationSettings, files: list[Path], delivery: Delivery
    ) -> None:
        job_id = manifest.job_id
        started = time.monotonic()
        already = self.spool.sent_ledger(job_id, destination.name)
        with self.spool.ledger_writer(job_id, destination.name) as record:
            sent = deliver(
                files, destination, self.settings.folder_of(destination), already=already, record=record
            )
        manifest.timings["delivery"] = manifest.timings.get("delivery", 0.0) + time.monotonic() - started
        delivery.state, delivery.n_sent, delivery.sent_at = "sent", sent, utcnow()
        delivery.output_series_uid = _series_uid(files)
        delivery.first_failure = delivery.last_error = None
        self._audit(
            "series_sent",
            job=job_id,
            series=manifest.series_key,
            output_series=delivery.output_series_uid,
            instances=sent,
            resumed_after=len(already & {f.stem for f in files}),
            destination=destination.name,
            target=_describe(self.settings, destination),
        )

    def _retry_later(self, manifest: JobManifest, failed: dict[str, RetryableError]) -> JobOutcome:
        """Leave the job for a later attempt, or give up on it past the delivery horizon."""
        now = utcnow()
        horizon = self.settings.worker.delivery_horizon_s
        oldest = min(manifest.deliveries[name].first_failure or now for name in failed)
        manifest.first_delivery_failure = oldest
        expired = [
            n
            for n in failed
            if (now - (manifest.deliveries[n].first_failure or now)).total_seconds() >= horizon
        ]
        summary = "; ".join(f"{name}: {exc}" for name, exc in failed.items())
        if expired:
            failing_s = (now - oldest).total_seconds()
            delivered = sorted(n for n, d in manifest.deliveries.items() if d.state == "sent")
            return self._quarantine(
                manifest,
                f"not delivered within {failing_s / 3600:.1f} h to {', '.join(expired)} "
                f"({manifest.attempts} attempts): {summary}"
                + (f" (delivered to {', '.join(delivered)}; a retry sends only the rest)" if delivered else ""),
                "delivery.dead_letter",
            )
        self.spool.save(manifest.to(JobState.dispatched, f"will retry: {summary}"))
        raise DeliveryError(summary)

    def _audit(self, event: str, **fields: object) -> None:
        try:
            self.audit.write(event, **fields)
        except OSError as exc:
            log.error("audit_write_failed", error=str(exc))

    def _quarantine(self, manifest: JobManifest, reason: str, code: str) -> JobOutcome:
        self.spool.quarantine(manifest, reason, code)
        self._audit(
            "series_quarantined", job=manifest.job_id, series=manifest.series_key, code=code, reason=reason
        )
        log.warning("job_quarantined", job=manifest.job_id, code=code, reason=reason)
        return JobOutcome(manifest.job_id, "quarantined", reason)

    def _outputs(
        self, job_id: str, manifest: JobManifest, destinations: list[DestinationSettings]
    ) -> dict[str, list[Path]]:
        """Each destination's copy of the defaced series, computed once per job (retries reuse them)."""
        out = self.spool.output_dir(job_id)
        if (out / _COMPLETE).is_file() and all((out / d.name).is_dir() for d in destinations):
            return {d.name: sorted((out / d.name).glob("*.dcm")) for d in destinations}
        started = time.monotonic()
        datasets = read_instances(self.spool.instance_files(job_id))
        timings = {"read": time.monotonic() - started}
        pixels = deface_pixels(datasets, self.masker, remove_ears=self.settings.deface.remove_ears)
        timings.update(pixels.timings)
        results: dict[str, DefacedSeries] = {}
        for destination in destinations:
            result = deidentify_series(
                pixels,
                self.policies[destination.name],
                self._key,
                mask_segmentation=self.settings.deface.send_mask_seg,
            )
            timings["deid"] = timings.get("deid", 0.0) + result.timings["deid"]
            results[destination.name] = result
        result = results[destinations[0].name]
        log.info(
            "series_defaced",
            job=job_id,
            masker=result.mask.masker,
            voxels_blanked=result.blanked_voxels,
            stacks=len(result.stacks),
            destinations=len(destinations),
            instances_filtered=sum(result.filtered_counts.values()),
            seconds=round(time.monotonic() - started, 1),
            **{f"mask_{k}": v for k, v in result.mask.details.items() if isinstance(v, (int, float))},
        )
        qc_started = time.monotonic()
        self._write_qc(job_id, result)
        timings["qc"] = time.monotonic() - qc_started
        # Recorded before delivery, so that a delivery retry that reuses the files still knows.
        manifest.filtered = result.filtered_counts
        manifest.n_filtered = sum(manifest.filtered.values())
        if len(result.datasets) + manifest.n_filtered != len(datasets):
            raise PermanentError(
                f"{len(datasets)} instances received but {len(result.datasets)} defaced and "
                f"{manifest.n_filtered} filtered: some are unaccounted for",
                code="internal.accounting",
            )
        for name, each in results.items():
            self._record_pseudonyms(job_id, name, datasets[0], each)
        write_started = time.monotonic()
        partial = out.with_name("out.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for name, each in results.items():
            (partial / name).mkdir()
            for ds in [*each.datasets, *([each.segmentation] if each.segmentation is not None else [])]:
                ds.save_as(partial / name / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        (partial / _COMPLETE).write_text(f"{len(result.datasets)}\n")
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
        timings["write"] = time.monotonic() - write_started
        manifest.timings = {stage: round(seconds, 3) for stage, seconds in timings.items()}
        self.spool.save(manifest)
        return {d.name: sorted((out / d.name).glob("*.dcm")) for d in destinations}

    def _record_pseudonyms(
        self, job_id: str, destination: str, first_in: Dataset, result: DefacedSeries
    ) -> None:
        first_out = result.datasets[0]
        self._audit(
            "series_processed",
            job=job_id,
            destination=destination,
            instances_in=len(result.datasets) + sum(result.filtered_counts.values()),
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
                destination=destination,
                patient_id=str(first_in.get("PatientID", "")),
                pseudonym=str(first_out.get("PatientID", "")),
                study_uid=str(first_in.get("StudyInstanceUID", "")),
                output_study_uid=str(first_out.StudyInstanceUID),
                series_uid=str(first_in.get("SeriesInstanceUID", "")),
                output_series_uid=str(first_out.SeriesInstanceUID),
            )

    def _write_qc(self, job_id: str, result: DefacedSeries) -> None:
        from worker.qc import render_before_after

        try:
            render_before_after(result.before, result.after, result.mask, self.spool.jobs / job_id / "qc.png")
        except Exception as exc:  # noqa: BLE001 - a missing picture must not stop delivery
            log.warning("qc_render_failed", job=job_id, error=str(exc))


def _describe(settings: Settings, destination: DestinationSettings) -> str:
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
