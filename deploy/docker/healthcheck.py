#!/usr/bin/env python3
"""Container health check for pediface (used by the images, docker-compose and Kubernetes).

    pediface-healthcheck gateway [readyz|healthz]  GET http://127.0.0.1:<metrics.port>/<path>, 200 = healthy
    pediface-healthcheck worker                    Celery ping of this worker (pediface@<hostname>)

Settings come the way pediface reads them (PEDIFACE_CONFIG, then PEDIFACE_* variables), so the port and
the broker are never repeated here. Exit 0 healthy, 1 unhealthy. No torch is imported.
"""

from __future__ import annotations

import socket
import sys
import urllib.request


def _settings():
    from config.settings import load_settings

    return load_settings()


def gateway(path: str) -> int:
    settings = _settings()
    port = settings.metrics.port
    if not port:
        print("metrics.port is 0: the HTTP endpoints are off, nothing to check", file=sys.stderr)
        return 1
    host = settings.metrics.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host}:{port}/{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (fixed http URL)
            ok = response.status == 200
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def worker() -> int:
    from celery import Celery

    settings = _settings()
    if not settings.broker.url:
        print("broker.url is empty: a containerised worker needs Redis", file=sys.stderr)
        return 1
    node = f"pediface@{socket.gethostname()}"
    app = Celery("pediface-healthcheck", broker=settings.broker.url)
    replies = app.control.ping(destination=[node], timeout=5.0)
    if not any(node in reply for reply in replies):
        print(f"{node} did not answer a ping on {settings.broker.url.split('@')[-1]}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("gateway", "worker"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "gateway":
        return gateway(argv[1] if len(argv) > 1 else "readyz")
    return worker()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
