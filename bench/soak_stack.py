"""The real parts of a soak: Redis, one gateway, N workers and a storescp archive, each a process of its own
that can be killed with SIGKILL and started again, plus a sampler of their memory and CPU from /proc.

Shared by ``bench/soak.py``, ``bench/scaleout.py`` and the short soak of the test suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SOAK_SECRET = "soak-secret-key-not-for-production-0123456789"
"""The de-identification key of the soak: known, so that the check can map sent UIDs to archived ones."""

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def _tree(pid: int) -> list[int]:
    """The process and its descendants (from /proc; Celery's pool children included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _status_kib(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class Usage:
    """Peak memory and CPU seconds of one role (all its processes, every incarnation)."""

    peak_rss_mib: float = 0.0  # the largest single process of the role
    peak_tree_mib: float = 0.0  # the role's processes together
    cpu_s: dict[int, float] = field(default_factory=dict)  # last seen per pid (a killed pid keeps its last)

    @property
    def cpu_total_s(self) -> float:
        return sum(self.cpu_s.values())


@dataclass
class Role:
    name: str
    argv: list[str]
    port: int | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    starts: int = 0


class Stack:
    """Redis, gateway, workers and a storescp archive under one folder; every part restartable."""

    def __init__(
        self,
        root: Path,
        workers: int = 2,
        quiet_period_s: float = 10,
        reconcile_interval_s: float = 5,
        worker_threads: int | None = 1,
        extra: dict | None = None,
        gateways: int = 1,
    ) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.archive_dir = root / "archive"
        self.logs = root / "logs"
        for folder in (self.data_dir, self.archive_dir, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.redis_port, self.archive_port = free_port(), free_port()
        self.gateway_ports = [free_port() for _ in range(gateways)]
        self.port = self.gateway_ports[0]
        self.quiet_period_s = quiet_period_s
        settings: dict = {
            "data_dir": str(self.data_dir),
            "dicom": {"port": self.port, "max_associations": 16},
            "series": {"quiet_period_s": quiet_period_s, "poll_interval_s": 0.5},
            "metrics": {"port": 0},
            "broker": {
                "url": f"redis://127.0.0.1:{self.redis_port}/0",
                "reconcile_interval_s": reconcile_interval_s,
                "visibility_timeout_s": 600,
            },
            "worker": {"retry_backoff_s": 2, "retry_backoff_max_s": 15, "delivery_horizon_s": 3600},
            "deid": {"secret": SOAK_SECRET},
            "destination": {
                "kind": "dicom", "ae_title": "ARCHIVE", "port": self.archive_port, "timeout_s": 20,
            },
            "spool": {"retain_delivered_s": 0},
        }  # fmt: skip
        if worker_threads:
            settings["deface"] = {"threads": worker_threads}
        for key, value in (extra or {}).items():
            settings.setdefault(key, {}).update(value)
        self.config = root / "pediface.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        env = {"PEDIFACE_CONFIG": str(self.config), "PYTHONPATH": str(REPO)}
        pediface = [sys.executable, "-m", "pediface"]
        redis_server = shutil.which("redis-server") or "redis-server"
        self.roles: dict[str, Role] = {
            # No persistence: a restart comes back empty (the queue is gone).
            "redis": Role(
                "redis",
                [
                    redis_server,
                    "--port",
                    str(self.redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                self.redis_port,
            ),  # fmt: skip
            # -uf: a file name of its own per received instance, so that a duplicate shows as a second file.
            "archive": Role(
                "archive",
                [
                    shutil.which("storescp") or "storescp",
                    "-aet",
                    "ARCHIVE",
                    "-uf",
                    "-od",
                    str(self.archive_dir),
                    str(self.archive_port),
                ],
                self.archive_port,
                DCMTK_ENV,
            ),  # fmt: skip
        }
        for index, port in enumerate(self.gateway_ports):
            name = "gateway" if index == 0 else f"gateway{index + 1}"
            genv = {**env, "PEDIFACE_DICOM__PORT": str(port)}
            self.roles[name] = Role(name, [*pediface, "gateway"], port, genv)
        for index in range(workers):
            self.roles[f"worker{index + 1}"] = Role(f"worker{index + 1}", [*pediface, "worker"], None, env)
        self.usage: dict[str, Usage] = {name: Usage() for name in self.roles}
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self.lock = threading.Lock()

    @property
    def workers(self) -> list[str]:
        return [name for name in self.roles if name.startswith("worker")]

    def start(self, name: str, wait: bool = True) -> None:
        role = self.roles[name]
        role.starts += 1
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the process
        # A session of its own: a worker and its pool children are killed together.
        role.proc = subprocess.Popen(
            role.argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(role.env or {})},
            start_new_session=True,
        )  # fmt: skip
        log.close()
        if wait and role.port is not None:
            wait_port(role.port, role.proc)

    def start_all(self) -> None:
        for name in self.roles:
            self.start(name)
        self._sampler = threading.Thread(target=self._sample_loop, name="sampler", daemon=True)
        self._sampling.set()
        self._sampler.start()

    def alive(self, name: str) -> bool:
        proc = self.roles[name].proc
        return proc is not None and proc.poll() is None

    def kill(self, name: str) -> None:
        """SIGKILL the role's whole process group: no chance to clean up, as in a power cut."""
        proc = self.roles[name].proc
        if proc is None or proc.poll() is not None:
            return
        self._sample_once()  # the last figures of the processes about to go
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        self._sampling.clear()
        for role in reversed(list(self.roles.values())):
            if role.proc is not None and role.proc.poll() is None:
                try:
                    os.killpg(role.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for role in self.roles.values():
            if role.proc is None:
                continue
            try:
                role.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(role.proc.pid, signal.SIGKILL)
                role.proc.wait()

    def worker_holding(self, job_lock: Path) -> str | None:
        """The worker whose process holds the flock of ``job_lock`` (from /proc/locks), if any."""
        try:
            inode = os.stat(job_lock).st_ino
            with open("/proc/locks") as handle:
                lines = handle.read().splitlines()
        except OSError:
            return None
        pids = {
            int(p[4]) for p in (line.split() for line in lines) if len(p) > 5 and p[5].endswith(f":{inode}")
        }
        for name in self.workers:
            proc = self.roles[name].proc
            if proc is not None and proc.poll() is None and pids & set(_tree(proc.pid)):
                return name
        return None

    # -- sampling ---------------------------------------------------------------------------------

    def _sample_once(self) -> None:
        with self.lock:
            for name, role in self.roles.items():
                if role.proc is None or role.proc.poll() is not None:
                    continue
                usage = self.usage[name]
                tree_kib = 0
                for pid in _tree(role.proc.pid):
                    rss = _status_kib(pid, "VmRSS")
                    peak = max(rss, _status_kib(pid, "VmHWM"))  # the kernel's own peak: no spike missed
                    usage.peak_rss_mib = max(usage.peak_rss_mib, peak / 1024)
                    tree_kib += rss
                    cpu = _cpu_s(pid)
                    if cpu:
                        usage.cpu_s[pid] = cpu
                usage.peak_tree_mib = max(usage.peak_tree_mib, tree_kib / 1024)

    def _sample_loop(self) -> None:
        while self._sampling.is_set():
            self._sample_once()
            time.sleep(1.0)
