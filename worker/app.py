"""The Celery app of the workers and its one task.

The task is as thin as a web view: it hands the job id to :class:`JobRunner`
and turns a :class:`RetryableError` into a Celery retry with exponential
backoff and jitter. Settings come from :func:`configure`, called by
``pediface worker`` before the worker starts (prefork children inherit them).
"""

from __future__ import annotations

import random
from pathlib import Path

from celery import Celery, Task
from celery.signals import worker_process_init

from pediface.broker import PROCESS_SERIES, celery_config
from pediface.errors import RetryableError
from pediface.logs import get_logger
from pediface.settings import Settings
from worker.deface.base import FaceMasker
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


#: Model folders shipped with pediface, by masker kind (``models/`` at the top of the source tree).
MODELS_ROOT = Path(__file__).resolve().parents[1] / "models"
SHIPPED_MODELS = {"template": "template-pydeface", "nnunet": "nnunet-face"}


def build_masker(settings: Settings) -> FaceMasker:
    """The configured face masker (imported here: only worker processes load models)."""
    from worker.deface import load_masker

    deface = settings.deface
    model_dir = deface.model_dir or MODELS_ROOT / SHIPPED_MODELS[deface.masker.value]
    return load_masker(deface.masker.value, model_dir, margin_mm=deface.margin_mm, threads=deface.threads)


def check_masker(settings: Settings) -> None:
    """Check the configured model folder without loading it (raises ``ValueError``).

    The worker's main process calls this at start; each pool process then builds its own masker
    (:func:`_build_in_pool_process`). torch must not run in a process that later forks: its
    OpenMP thread pool does not survive a fork, and the forked child hangs on its first prediction.
    """
    deface = settings.deface
    model_dir = deface.model_dir or MODELS_ROOT / SHIPPED_MODELS[deface.masker.value]
    if deface.masker.value == "nnunet":
        from worker.deface.nnunet import verify_nnunet_dir

        verify_nnunet_dir(Path(model_dir), 0, "checkpoint_final.pth")
    else:
        build_masker(settings)  # no torch: cheap, and checks more than the checksums


@worker_process_init.connect
def _build_in_pool_process(**_: object) -> None:
    """Build the masker in each pool process as it starts, not on its first series."""
    if _settings is None:
        return
    try:
        runner().masker  # noqa: B018
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
