"""One job, from the spool to the archives: the state machine over :mod:`worker.steps`.

::

    sealed/dispatched -> processing -> masked -> written -> checked -> deidentified -> sent
                              \\____________\\_________\\_________\\_____________\\______> quarantined

Each arrow is a step (:data:`STEPS`, then :func:`worker.steps.send`); the state is saved in
``job.json`` after each, so the console and ``pediface status`` show how far a series got. The
face is blanked once; each destination then gets its own de-identified copy and its own
delivery, so an unreachable archive holds up no other.

Every job ends in exactly one of three ways, each logged: delivered to all its destinations
(``done/``), quarantined with a reason (``quarantine/``), or, for a delivery fault, left in
``jobs/`` while :class:`RetryableError` asks the caller to try again later. Running a job twice
is harmless: finished jobs are skipped, a job another process holds is skipped, a job whose
output is complete is only re-sent, destinations that have the series are not sent it again,
and a send cut short resumes after the last acknowledged instance (the job's ledger,
:meth:`Spool.ledger_writer`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from common.audit import JsonLines
from common.errors import DeliveryError, PermanentError, RetryableError
from common.files import utcnow
from common.logs import get_logger
from config.settings import Settings
from spool.manifest import JobManifest, JobState
from spool.store import Spool
from worker import steps
from worker.deface.base import FaceMasker
from worker.deid import DeidPolicy

log = get_logger("pediface.worker.jobs")

CLAIM_WAIT_S = 5.0
"""How long a worker waits for a job's lock before taking the job as held by another worker."""

STEPS: tuple[tuple[JobState, Callable[[steps.JobContext, steps.Job], None]], ...] = (
    (JobState.masked, steps.mask),
    (JobState.written, steps.write),
    (JobState.checked, steps.check),
    (JobState.deidentified, steps.deidentify),
)
"""The steps before delivery, each with the state a job is in once it has run."""


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
        # Built here, so that a destination with an unknown option stops the worker at start.
        self.policies: dict[str, DeidPolicy] = {
            d.name: DeidPolicy.from_settings(settings.deid, options=d.deid_options, profile=d.deid_profile)
            for d in settings.all_destinations
        }
        self.policy = self.policies[settings.destination.name]
        broker_file = settings.audit.honest_broker_file
        self.context = steps.JobContext(
            settings=settings,
            spool=self.spool,
            masker_factory=masker_factory,
            policies=self.policies,
            key=settings.deid_key(),
            audit=JsonLines(settings.audit_file),
            honest_broker=JsonLines(broker_file, mode=0o600) if broker_file else None,
        )

    @property
    def masker(self) -> FaceMasker:
        return self.context.masker

    def run(self, job_id: str) -> JobOutcome:
        try:
            manifest = self.spool.load(job_id)
        except (FileNotFoundError, ValueError) as exc:
            log.warning("job_unknown", job=job_id, error=str(exc))
            return JobOutcome(job_id, "skipped", "unknown job")
        if manifest.state in (JobState.sent, JobState.quarantined) or not (self.spool.jobs / job_id).is_dir():
            log.info("job_already_finished", job=job_id, state=manifest.state.value)
            return JobOutcome(job_id, "skipped", f"already {manifest.state.value}")
        # A gateway holds a job's lock for a moment now and then (recording the dispatch just after
        # the send, reconciling): wait that out rather than drop the task as held elsewhere.
        with self.spool.claim(job_id, wait_s=CLAIM_WAIT_S) as mine:
            if not mine:
                log.info("job_busy_elsewhere", job=job_id)
                return JobOutcome(job_id, "skipped", "being processed by another worker")
            manifest = self.spool.load(job_id)
            if manifest.state == JobState.sealed:
                # Taken before the gateway could record handing it to the broker: record it here.
                manifest.to(JobState.dispatched, "recorded by the worker that took the task")
            manifest.attempts += 1
            self.spool.save(manifest.to(JobState.processing, f"attempt {manifest.attempts}"))
            return self._attempt(manifest)

    def _attempt(self, manifest: JobManifest) -> JobOutcome:
        """One attempt at a job this process holds: the steps, then the delivery."""
        started = time.monotonic()
        try:
            job = steps.Job(manifest, steps.destinations_of(self.settings, manifest))
            if steps.outputs_complete(self.context, job):
                self.spool.save(manifest.to(JobState.deidentified, "output of an earlier attempt reused"))
            else:
                for state, step in STEPS:
                    step(self.context, job)
                    self.spool.save(manifest.to(state, job.notes.get(state, "")))
            failed = steps.send(self.context, job)
        except PermanentError as exc:
            return self._quarantine(manifest, str(exc), exc.code)
        except Exception as exc:  # noqa: BLE001 - fail closed: anything unexpected is quarantined
            log.error("job_internal_error", job=manifest.job_id, error=traceback.format_exc())
            return self._quarantine(
                manifest, f"internal error ({type(exc).__name__}: {exc}); see the worker log", "internal"
            )
        if failed:
            return self._retry_later(manifest, failed)
        destinations = job.destinations
        sent = min((manifest.deliveries[d.name].n_sent for d in destinations), default=0)
        manifest.output_series_uid = manifest.deliveries[destinations[0].name].output_series_uid
        manifest.first_delivery_failure = None
        self.spool.finish(manifest, sent)
        log.info(
            "job_sent",
            job=manifest.job_id,
            destinations=len(destinations),
            instances_received=manifest.n_instances,
            instances_filtered=manifest.n_filtered,
            instances_sent=sent,
            seconds=round(time.monotonic() - started, 1),
        )
        return JobOutcome(manifest.job_id, "sent", f"{sent} instances to {len(destinations)} destination(s)")

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
                + (
                    f" (delivered to {', '.join(delivered)}; a retry sends only the rest)"
                    if delivered
                    else ""
                ),
                "delivery.dead_letter",
            )
        self.spool.save(manifest.to(JobState.dispatched, f"will retry: {summary}"))
        raise DeliveryError(summary)

    def _quarantine(self, manifest: JobManifest, reason: str, code: str) -> JobOutcome:
        self.spool.quarantine(manifest, reason, code)
        self.context.record(
            "series_quarantined", job=manifest.job_id, series=manifest.series_key, code=code, reason=reason
        )
        log.warning("job_quarantined", job=manifest.job_id, code=code, reason=reason)
        return JobOutcome(manifest.job_id, "quarantined", reason)
