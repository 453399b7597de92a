"""The Celery app of the workers and its one task.

The task is as thin as a web view: it hands the job id to :class:`JobRunner`
and turns a :class:`RetryableError` into a Celery retry with exponential
backoff and jitter. Settings come from :func:`configure`, called by
``pediface worker`` before the worker starts (prefork children inherit them).
"""

from __future__ import annotations

import random

from celery import Celery, Task
from celery.signals import worker_process_init

from common.errors import RetryableError
from common.logs import get_logger
from config.settings import Settings
from spool.broker import PROCESS_SERIES, celery_config
from worker.deface import build_masker
from worker.jobs import JobRunner

log = get_logger("pediface.worker")

app = Celery("pediface-worker")
_runner: JobRunner | None = None
_settings: Settings | None = None


def configure(settings: Settings) -> Celery:
    global _settings, _runner
    _settings, _runner = settings, None
    app.conf.update(celery_config(settings))
    return app


@worker_process_init.connect
def _build_in_pool_process(**_: object) -> None:
    """Build the masker (and the face check's detector) in each pool process as it starts, not on its
    first series."""
    if _settings is None:
        return
    try:
        runner().masker  # noqa: B018
        if runner().context.face_check_on:
            runner().context.face_check.detector  # noqa: B018 - dlib and its checked weights, once
    except Exception as exc:  # noqa: BLE001 - the job that needs it will quarantine with the reason
        log.error("masker_build_failed", error=str(exc))


def runner() -> JobRunner:
    global _runner
    if _settings is None:
        raise RuntimeError("worker.app.configure(settings) was not called")
    if _runner is None:
        settings = _settings
        _runner = JobRunner(settings, lambda: build_masker(settings))
    return _runner


@app.task(name=PROCESS_SERIES, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def process_series(self: Task, job_id: str) -> str:
    """Deface, de-identify and deliver the series of one job (idempotent)."""
    try:
        outcome = runner().run(job_id)
    except RetryableError as exc:
        settings = runner().settings.worker
        delay = min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2**self.request.retries)
        raise self.retry(exc=exc, countdown=delay * random.uniform(0.5, 1.0)) from exc
    return outcome.state
