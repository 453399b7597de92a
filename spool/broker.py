"""The one place that knows how pediface talks to Celery.

The gateway is a producer only: it sends tasks *by name* and never imports the
worker's code (nor torch). Both sides build their Celery configuration here so
they always agree on broker, queue and serialisation.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from celery import Celery

from config.settings import Settings

PROCESS_SERIES = "pediface.process_series"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for producer and workers."""
    config: dict[str, Any] = {
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_default_queue": settings.worker.queue,
        "task_routes": {PROCESS_SERIES: {"queue": settings.worker.queue}},
        # A series takes minutes: take one at a time and acknowledge it only when done,
        # so that a worker that dies hands its series to another worker.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        # Task events for Flower and `celery events` (no result backend needed).
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "broker_connection_retry_on_startup": True,
    }
    if settings.embedded_broker:
        folder = settings.data_dir / "broker"
        for sub in ("queue", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config.update(
            broker_url="filesystem://",
            broker_transport_options={
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                "control_folder": str(folder / "control"),
                "store_processed": False,
            },
            # The folder transport has no broadcast channel for remote control.
            worker_enable_remote_control=False,
        )
    else:
        config.update(
            broker_url=settings.broker.url,
            broker_transport_options={
                "visibility_timeout": settings.broker.visibility_timeout_s,
                # kombu looks for tasks held past the visibility timeout every 10 s but scans only on
                # every 10th look by default: a killed worker's series then waited up to 100 s more.
                # The scan is one sorted-set range query; run it on every look.
                "unacked_restore_throttle": 1,
            },
        )
    return config


def make_app(settings: Settings, name: str = "pediface") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def dispatch(app: Celery, job_id: str) -> None:
    """Queue the processing of one sealed job. The argument is an opaque id: no PHI on the broker."""
    app.send_task(PROCESS_SERIES, args=[job_id])


def queue_depth(settings: Settings) -> int | None:
    """Tasks waiting in the queue, or ``None`` when the broker cannot be asked."""
    try:
        if settings.embedded_broker:
            folder = settings.data_dir / "broker" / "queue"
            suffix = f".{settings.worker.queue}.msg"  # kombu names messages <ms>_<uuid>.<queue>.msg
            return sum(1 for entry in folder.iterdir() if entry.name.endswith(suffix))
        if settings.broker.url and settings.broker.url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(settings.broker.url, socket_timeout=2)
            return int(client.llen(settings.worker.queue))
    except Exception:  # noqa: BLE001 - a metric must never break the scrape
        return None
    return None


# kombu's Redis transport: a queue is a list per priority step (the name, then name + "\x06\x16" + step),
# and the messages a worker has taken but not yet acknowledged (acks_late) sit in the "unacked" hash.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED = "unacked"


def _job_of(message: bytes | str) -> str | None:
    """The job id a kombu message of our task carries, or None for anything else."""
    try:
        envelope = json.loads(message)
        if envelope.get("headers", {}).get("task") != PROCESS_SERIES:
            return None
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def broker_jobs(settings: Settings) -> set[str] | None:
    """Job ids the broker holds: queued, or taken by a worker and not yet acknowledged.

    ``None`` when the broker cannot say: the embedded folder broker deletes a message when a
    worker takes it, and a Redis that cannot be reached knows nothing we could trust.
    """
    if settings.embedded_broker or not (settings.broker.url or "").startswith(("redis://", "rediss://")):
        return None
    import redis

    queue = settings.worker.queue
    try:
        client = redis.Redis.from_url(settings.broker.url or "", socket_timeout=5)
        pipe = client.pipeline(transaction=True)
        for name in (queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS)):
            pipe.lrange(name, 0, -1)
        pipe.hvals(_UNACKED)
        *queued, unacked = pipe.execute()
    except redis.RedisError:
        return None
    jobs = {_job_of(message) for messages in queued for message in messages}
    for entry in unacked:
        try:
            message = json.loads(entry)[0]
        except (ValueError, IndexError, TypeError):
            continue
        jobs.add(_job_of(json.dumps(message)))
    jobs.discard(None)
    return jobs  # type: ignore[return-value]
