"""The gateway process: the SCP plus the sealer that hands complete series to the workers.

State lives in the spool, so a restarted gateway resumes where it stopped: open
series keep waiting for their quiet period, and sealed jobs the broker never got
are dispatched again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

import pydicom.config
from celery import Celery

from common.audit import JsonLines
from common.files import utcnow
from common.logs import get_logger
from config.sections import RoutingSettings
from config.settings import Settings
from gateway.access import AccessPolicy
from gateway.console import Console
from gateway.limits import Limits
from gateway.routing import Decision, decide, read_header
from gateway.scp import ReceiptAudit, build_ae, handlers, tls_context
from gateway.status import DISPATCHES, REGISTRY, SERIES_SEALED, SpoolCollector, StatusServer, spool_writable
from spool.broker import broker_jobs, dispatch, make_app, queue_depth
from spool.manifest import IN_FLIGHT, JobManifest, JobState
from spool.store import Spool

log = get_logger("pediface.gateway")


class Sealer:
    """Finds series that went quiet, seals them into jobs and dispatches one task per job."""

    def __init__(
        self,
        spool: Spool,
        quiet_period_s: float,
        send: Callable[[str], None],
        stale_after_s: float | None = None,
        routing: RoutingSettings | None = None,
        destinations: list[str] | None = None,
        study_quiet_period_s: float = 0.0,
        known_jobs: Callable[[], set[str] | None] | None = None,
        reconcile_interval_s: float = 0.0,
    ) -> None:
        self.spool = spool
        self.quiet_period_s = quiet_period_s
        self.send = send
        self.stale_after_s = stale_after_s
        self.routing = routing or RoutingSettings()
        self.destinations = destinations or []
        self.study_quiet_period_s = study_quiet_period_s
        self.known_jobs = known_jobs
        self.reconcile_interval_s = reconcile_interval_s
        self._next_reconcile = 0.0
        self._unknown: set[str] = set()  # in flight, but unknown to the broker at the last reconciliation

    def run_once(self) -> list[str]:
        """One pass; returns the ids of the jobs dispatched."""
        open_series = self.spool.open_series()
        study_age: dict[str, float] = {}
        if self.study_quiet_period_s:
            # A study is quiet when its most recently fed series is.
            for series in open_series:
                if series.study_key:
                    study_age[series.study_key] = min(
                        study_age.get(series.study_key, series.age_s), series.age_s
                    )
        for series in open_series:
            key, age = series.key, series.age_s
            if series.study_key in study_age and study_age[series.study_key] < self.study_quiet_period_s:
                continue
            if age >= self.quiet_period_s:
                manifest = self.spool.seal(key, self.quiet_period_s)
                if manifest is not None:
                    SERIES_SEALED.inc()
                    self._route(manifest)
                    log.info(
                        "series_complete", series=key, job=manifest.job_id, instances=manifest.n_instances
                    )
        dispatched = []
        now = utcnow()
        forgotten = self._reconcile()
        for manifest in self.spool.manifests(self.spool.jobs):
            if manifest.state == JobState.sealed and self._dispatch_sealed(manifest.job_id):
                dispatched.append(manifest.job_id)
            elif manifest.state in IN_FLIGHT and (manifest.job_id in forgotten or self._stale(manifest, now)):
                # The broker lost the task (Redis restarted without its data, a worker died
                # holding it past the visibility timeout): hand it out again; the task is idempotent.
                why = "unknown to the broker" if manifest.job_id in forgotten else "stale"
                if self._redispatch(manifest.job_id, why):
                    dispatched.append(manifest.job_id)
        return dispatched

    def _redispatch(self, job_id: str, why: str) -> bool:
        """Send a lost job's task again, recording it first, under the job's lock, on a fresh read.

        The manifest of this pass may be stale by now: a worker may have taken the job up or finished
        it. Under the lock no worker can be on it; the job is written ``dispatched`` only if it is still
        in flight, and the task goes out after the lock is released, so that a worker taking it at once
        finds the job free (a send that fails leaves the job to the next reconciliation).
        """
        with self.spool.claim(job_id) as free:
            if not free:
                return False
            try:
                manifest = self.spool.load(job_id)
            except FileNotFoundError:
                return False
            if manifest.state not in IN_FLIGHT or not (self.spool.jobs / job_id).is_dir():
                return False
            log.warning("job_redispatched", job=job_id, state=manifest.state.value, why=why)
            self.spool.save(manifest.to(JobState.dispatched, f"dispatched again: {why}"))
        try:
            self.send(job_id)
        except Exception as exc:  # noqa: BLE001 - broker down: the next reconciliation finds it again
            DISPATCHES.labels("failed").inc()
            log.error("dispatch_failed", job=job_id, error=str(exc))
            return False
        DISPATCHES.labels("ok").inc()
        log.info("job_dispatched", job=job_id)
        return True

    def _reconcile(self) -> set[str]:
        """Jobs in flight that the broker has forgotten, checked every ``reconcile_interval_s``.

        The spool is the source of truth: a job the spool has handed to the broker must be in the
        broker's queue or held, unacknowledged, by a worker. A job that is in neither at two
        reconciliations in a row (so not one caught between the broker and a worker) and whose lock
        no worker holds was lost with the broker's data: it is dispatched again.
        """
        due = self.known_jobs is not None and self.reconcile_interval_s > 0
        if not due or time.monotonic() < self._next_reconcile:
            return set()
        self._next_reconcile = time.monotonic() + self.reconcile_interval_s
        known = self.known_jobs() if self.known_jobs is not None else None
        if known is None:  # the broker cannot say (down, or the folder broker): the stale rule applies
            return set()
        in_flight = {m.job_id for m in self.spool.manifests(self.spool.jobs) if m.state in IN_FLIGHT}
        unknown = in_flight - known
        forgotten = set()
        for job_id in unknown & self._unknown:
            with self.spool.claim(job_id) as free:
                if free:
                    forgotten.add(job_id)
        self._unknown = unknown - forgotten
        return forgotten

    def _route(self, manifest: JobManifest) -> None:
        """Record the destinations of the series, or drop it here (it is then never dispatched)."""
        if not self.routing.rules and self.routing.default_action == "process":
            decision = Decision("process", "default", tuple(self.routing.default_destinations))
        else:
            files = self.spool.instance_files(manifest.job_id)
            try:
                decision = decide(self.routing, read_header(files[0]))
            except (OSError, ValueError, IndexError) as exc:
                # Unreadable here means unreadable for the worker too: let it quarantine with the reason.
                log.warning("routing_header_unreadable", job=manifest.job_id, error=str(exc))
                return
        if decision.action == "drop":
            self.spool.drop(manifest, f"dropped by routing rule '{decision.rule}'")
            log.info(
                "series_dropped", job=manifest.job_id, rule=decision.rule, instances=manifest.n_instances
            )
            return
        manifest.destinations = list(decision.destinations or self.destinations)
        self.spool.save(manifest)

    def _stale(self, manifest: JobManifest, now: datetime) -> bool:
        if self.stale_after_s is None or not manifest.history:
            return False
        if (now - manifest.history[-1].at).total_seconds() < self.stale_after_s:
            return False
        with self.spool.claim(manifest.job_id) as free:
            return free  # a worker holding the job's lock is still on it

    def recover(self, redispatch_inflight: bool) -> None:
        """At start-up: dispatch again jobs whose task may be lost.

        With a broker that keeps unacknowledged tasks (Redis, acks_late) only sealed
        jobs need it; the embedded folder broker deletes a message when a worker takes
        it, so in-flight jobs are dispatched again too (the task is idempotent).
        """
        for manifest in self.spool.manifests(self.spool.jobs):
            if manifest.state in IN_FLIGHT and redispatch_inflight:
                log.warning("job_redispatched", job=manifest.job_id, state=manifest.state.value)
                self._dispatch(manifest)

    def _dispatch_sealed(self, job_id: str) -> bool:
        """Dispatch a sealed job unless another gateway on the same spool has just done so."""
        with self.spool.exclusive("dispatch"):
            try:
                manifest = self.spool.load(job_id)
            except FileNotFoundError:
                return False
            return manifest.state == JobState.sealed and self._dispatch(manifest)

    def _dispatch(self, manifest: JobManifest) -> bool:
        try:
            self.send(manifest.job_id)
        except Exception as exc:  # noqa: BLE001 - broker down: keep the job sealed and try next pass
            DISPATCHES.labels("failed").inc()
            log.error("dispatch_failed", job=manifest.job_id, error=str(exc))
            return False
        DISPATCHES.labels("ok").inc()
        self._record_dispatched(manifest.job_id)
        log.info("job_dispatched", job=manifest.job_id)
        return True

    def _record_dispatched(self, job_id: str) -> None:
        """Write ``dispatched`` once the broker has the task, under the job's lock, on a fresh read.

        A worker may take the task before this runs, and write its own states or finish the job;
        the record is then the worker's to make (``worker.jobs``), and nothing is written over it.
        """
        with self.spool.claim(job_id) as free:
            if not free:
                return
            try:
                manifest = self.spool.load(job_id)
            except FileNotFoundError:
                return
            if manifest.state == JobState.sealed and (self.spool.jobs / job_id).is_dir():
                self.spool.save(manifest.to(JobState.dispatched))


class Gateway:
    """SCP + sealer thread; ``start()`` returns at once, ``stop()`` shuts both down."""

    def __init__(self, settings: Settings, celery_app: Celery | None = None) -> None:
        self.settings = settings
        self.spool = Spool(settings.data_dir)
        self.celery = celery_app or make_app(settings, "pediface-gateway")
        self.sealer = Sealer(
            self.spool,
            settings.series.quiet_period_s,
            lambda job: dispatch(self.celery, job),
            # Past the broker's own redelivery horizon a dispatched job is presumed lost.
            stale_after_s=settings.broker.visibility_timeout_s + 300,
            routing=settings.routing,
            destinations=[d.name for d in settings.all_destinations],
            study_quiet_period_s=settings.series.study_quiet_period_s,
            known_jobs=lambda: broker_jobs(settings),
            reconcile_interval_s=settings.broker.reconcile_interval_s,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server = None
        self.status: StatusServer | None = None
        self._collector: SpoolCollector | None = None
        # Built here so that an unsafe console configuration stops the gateway before it listens.
        self.console: Console | None = None
        if settings.metrics.port and settings.console.enabled:
            self.console = Console(
                settings,
                self.spool,
                dispatch=lambda job: self.sealer.send(job),
                queue_depth=lambda: queue_depth(self.settings),
            )

    def start(self) -> None:
        dicom = self.settings.dicom
        # The SCP checks what it relies on itself (check_instance) and quarantines the rest;
        # pydicom's per-value warnings would only repeat that in the log.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        self.sealer.recover(redispatch_inflight=self.settings.embedded_broker)
        # Everything that can fail on a bad setting or a taken port is done before the SCP
        # listens: a gateway that cannot run must not accept a single instance first.
        metrics = self.settings.metrics
        if metrics.port:
            self.status = StatusServer(metrics.host, metrics.port, self.ready, console=self.console)
        handler_list = handlers(
            self.spool,
            AccessPolicy(dicom.peers),
            ReceiptAudit(JsonLines(self.settings.audit_file), self.settings.deid_key()),
            Limits(dicom.max_inflated_bytes, dicom.max_image_pixels, dicom.network_timeout_s),
        )
        ssl_context = tls_context(dicom.tls) if dicom.tls else None
        ae = build_ae(dicom)
        self._server = ae.start_server(
            (dicom.host, dicom.port),
            block=False,
            evt_handlers=handler_list,
            ssl_context=ssl_context,
        )
        self._thread = threading.Thread(target=self._seal_loop, name="sealer", daemon=True)
        self._thread.start()
        if self.status is not None:
            self._collector = SpoolCollector(
                self.spool,
                lambda: queue_depth(self.settings),
                [d.name for d in self.settings.all_destinations],
            )
            REGISTRY.register(self._collector)
            self.status.start()
        log.info(
            "gateway_listening",
            ae_title=dicom.ae_title,
            host=dicom.host,
            port=dicom.port,
            spool=str(self.spool.root),
            broker="embedded" if self.settings.embedded_broker else "external",
            tls=dicom.tls is not None,
        )

    def _seal_loop(self) -> None:
        next_cleanup = 0.0
        while not self._stop.wait(self.settings.series.poll_interval_s):
            try:
                self.sealer.run_once()
                if time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + 60
                    for job_id in self.spool.expire_delivered(self.settings.spool.retain_delivered_s):
                        log.info("delivered_files_expired", job=job_id)
            except Exception:  # the loop must outlive one bad pass; the log has the traceback
                log.exception("sealer_pass_failed")

    def ready(self) -> tuple[bool, str]:
        """Ready when the SCP is listening and the spool can take a file."""
        if self._server is None or self._stop.is_set():
            return False, "SCP not listening"
        return spool_writable(self.spool)

    def stop(self) -> None:
        self._stop.set()
        if self.status is not None:
            self.status.stop()
        if self._collector is not None:
            REGISTRY.unregister(self._collector)
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        log.info("gateway_stopped")

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler)."""
        self._stop.wait()
