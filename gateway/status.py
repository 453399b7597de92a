"""The gateway's HTTP side: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

Counters of what this process did (instances received, series sealed, dispatch
failures) live in :data:`REGISTRY`. Everything the workers do is read from the
spool at scrape time instead (jobs by state, processing seconds, queue depth):
the spool is the shared state of every process, so no metrics pipeline between
processes is needed and the figures survive restarts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from common.logs import get_logger
from gateway.console import MAX_BODY_BYTES, Console
from spool.manifest import JobManifest, JobState
from spool.store import Spool

log = get_logger("pediface.gateway.status")

REGISTRY = CollectorRegistry(auto_describe=True)
INSTANCES = Counter(
    "pediface_instances_received",
    "Instances received by C-STORE, by outcome (stored, duplicate, rejected, spool_error).",
    ["outcome"],
    registry=REGISTRY,
)
SERIES_SEALED = Counter(
    "pediface_series_completed", "Series found complete and sealed into jobs.", registry=REGISTRY
)
DISPATCHES = Counter(
    "pediface_dispatches", "Tasks sent to the broker, by result (ok, failed).", ["result"], registry=REGISTRY
)
ASSOCIATIONS = Counter(
    "pediface_associations",
    "Association requests, by result (accepted, rejected).",
    ["result"],
    registry=REGISTRY,
)


class SpoolCollector(Collector):
    """Gauges read from the spool at scrape time."""

    def __init__(
        self, spool: Spool, queue_depth: Callable[[], int | None], destinations: list[str] | None = None
    ) -> None:
        self.spool = spool
        self.queue_depth = queue_depth
        self.destinations = destinations or []

    def collect(self) -> Iterator:
        open_series = GaugeMetricFamily("pediface_open_series", "Series still receiving (in spool/incoming).")
        open_series.add_metric([], len(self.spool.open_series()))
        yield open_series

        jobs = GaugeMetricFamily("pediface_jobs", "Jobs in the spool by state.", labels=["state"])
        counts = {state.value: 0 for state in JobState}
        seconds = CounterMetricFamily(
            "pediface_processing_seconds",
            "Seconds from sealing to the final state, summed over finished jobs, by state.",
            labels=["state"],
        )
        sums = {JobState.sent.value: 0.0, JobState.quarantined.value: 0.0}
        stage_sum: dict[str, float] = {}
        stage_count: dict[str, int] = {}
        failures: dict[str, int] = {}
        delivered: dict[str, int] = {}
        for stage in (self.spool.jobs, self.spool.done, self.spool.quarantine_dir):
            for manifest in self._manifests(stage):
                counts[manifest.state.value] += 1
                if manifest.state.value in sums and manifest.history:
                    sums[manifest.state.value] += (
                        manifest.history[-1].at - manifest.created_at
                    ).total_seconds()
                for name, value in manifest.timings.items():
                    stage_sum[name] = stage_sum.get(name, 0.0) + value
                    stage_count[name] = stage_count.get(name, 0) + 1
                for name, delivery in manifest.deliveries.items():
                    failures[name] = failures.get(name, 0) + delivery.failures
                    delivered[name] = delivered.get(name, 0) + (delivery.state == "sent")
        for state, count in counts.items():
            jobs.add_metric([state], count)
        yield jobs
        for state, total in sums.items():
            seconds.add_metric([state], total)
        yield seconds

        # Every job's last processing attempt, by pipeline stage (read, volume, mask, write_back,
        # deid, qc, write, delivery): where the time goes, and which stage to scale.
        stages = SummaryMetricFamily(
            "pediface_stage_seconds",
            "Seconds spent in each pipeline stage by the jobs in the spool.",
            labels=["stage"],
        )
        for name in sorted(stage_sum):
            stages.add_metric([name], count_value=stage_count[name], sum_value=stage_sum[name])
        yield stages
        sent = CounterMetricFamily(
            "pediface_series_delivered", "Series delivered, by destination.", labels=["destination"]
        )
        failed = CounterMetricFamily(
            "pediface_send_failures",
            "Failed delivery attempts (each retried with backoff until the horizon), by destination.",
            labels=["destination"],
        )
        for name in self.destinations or sorted(set(delivered) | set(failures)):
            sent.add_metric([name], delivered.get(name, 0))
            failed.add_metric([name], failures.get(name, 0))
        yield sent
        yield failed

        depth = self.queue_depth()
        if depth is not None:
            queue = GaugeMetricFamily("pediface_queue_depth", "Tasks waiting in the broker queue.")
            queue.add_metric([], depth)
            yield queue

    def _manifests(self, stage: Path) -> Iterator[JobManifest]:
        try:
            yield from self.spool.manifests(stage)
        except (FileNotFoundError, ValueError):  # a job moved while we looked: the next scrape sees it
            return


class StatusServer:
    """A small threaded HTTP server; ``ready`` decides ``/readyz``."""

    def __init__(
        self, host: str, port: int, ready: Callable[[], tuple[bool, str]], console: Console | None = None
    ) -> None:
        self.ready = ready
        self.console = console
        handler = self._handler()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="status-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif self.path == "/readyz":
                    ok, detail = server.ready()
                    self._send(200 if ok else 503, (detail + "\n").encode(), "text/plain")
                elif self.path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif server.console is not None and server.console.handles(self.path):
                    self._console("GET")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                if server.console is None or not server.console.handles(self.path):
                    self._send(404, b"not found\n", "text/plain")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY_BYTES:
                    self.close_connection = True
                    self._send(413, b"request body too large\n", "text/plain")
                    return
                self._console("POST", self.rfile.read(length))

            def _console(self, method: str, body: bytes = b"") -> None:
                assert server.console is not None
                response = server.console.handle(method, self.path, self.headers, body)
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # scrapes every few seconds would drown the log

        return Handler


def spool_writable(spool: Spool) -> tuple[bool, str]:
    """Can the spool take a file right now?"""
    probe = spool.tmp / f".ready-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
        probe.unlink()
    except OSError as exc:
        return False, f"spool not writable: {exc.strerror or exc}"
    return True, "ok"
