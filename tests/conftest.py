"""Shared fixtures: the shared data folder, real DICOM peers (dcmtk), free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DICOM = SHARED / "data" / "dicom"
UIH = DICOM / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag"
HEADS = SHARED / "data" / "heads"
TEMPLATE_HEAD = REPO / "models" / "template-pydeface" / "pydeface_mean_reg2mean.nii.gz"


STRICT = os.environ.get("PEDIFACE_STRICT") == "1"
"""Set by .ci/run: a test skipped for a missing tool, service or data set fails the run instead, so that a
broken install step cannot turn into a green run. Only :data:`ALLOWED_IN_STRICT` skips remain skips."""

ALLOWED_IN_STRICT = ("no CUDA device",)
"""Skip reasons that are facts of the machine, not of its installation (CI has no GPU)."""

TOOL_PACKAGES = {
    "storescu": "dcmtk",
    "storescp": "dcmtk",
    "echoscu": "dcmtk",
    "dciodvfy": "dicom3tools",
    "Orthanc": "orthanc",
    "chromium": "chromium",
    "redis-server": "redis-server",
    "openssl": "openssl",
    "docker-compose": "docker-compose",
}
"""The Debian package of each external tool the tests run (make system-deps installs them)."""


def need_shared(path: Path = SHARED) -> Path:
    """Skip (loudly, with the reason in the summary) when the shared data is absent."""
    if not path.exists():
        pytest.skip(f"shared data missing: {path} (tests on real DICOM/NIfTI need ../shared)")
    return path


def need_tool(name: str) -> str:
    """The tool's path; a skip naming the Debian package that provides it when it is not installed."""
    path = shutil.which(name)
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        pytest.skip(f"{name} not installed (apt-get install {package}; make system-deps installs it)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_for_port(port: int, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout_s, f"a listener on 127.0.0.1:{port}")


class Processes:
    """Child processes started by a test, stopped (and their output kept) at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
    ) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=new_session,
        )
        self.procs.append((name, proc))
        return proc

    def pediface(
        self, name: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen:
        return self.start(name, [sys.executable, "-m", "pediface", *args], env=env, cwd=cwd)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    yield procs
    procs.stop_all()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for name, _ in procs.procs:
            sys.stderr.write(f"\n----- {name} log (tail) -----\n{procs.log(name)[-6000:]}\n")


def _expected_s(item: pytest.Item) -> float:
    """A slow test's rough wall time on 2 cores, from its marker (``@pytest.mark.slow(seconds=...)``)."""
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("seconds", 30)) if marker else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long, mostly waiting tests first, and spread over the workers.

    On one process they simply run first. Under ``pytest -n N --dist worksteal`` (make test) xdist hands
    each worker one contiguous chunk of this list: sorted naively, every slow test would sit in the first
    worker's chunk and run one after another at the end of the suite. Instead the slow tests are dealt,
    longest first, to the worker with the least expected time so far, and each worker's chunk starts with
    its own; the other tests follow in collection order, so module fixtures stay together. Every worker
    computes the same order (xdist checks that the collections match).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    slow = sorted((i for i in items if i.get_closest_marker("slow")), key=_expected_s, reverse=True)
    rest = [i for i in items if not i.get_closest_marker("slow")]
    if workers <= 1:
        items[:] = slow + rest
        return
    lanes: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for item in slow:
        lane = load.index(min(load))
        lanes[lane].append(item)
        load[lane] += _expected_s(item)
    # The chunk sizes xdist's work stealing sends at the start: len // workers, then of what remains.
    ordered: list[pytest.Item] = []
    remaining, others = len(items), iter(rest)
    for index, lane in enumerate(lanes):
        size = remaining // (workers - index)
        remaining -= size
        ordered += lane + [item for _, item in zip(range(size - len(lane)), others, strict=False)]
    ordered += list(others)
    assert len(ordered) == len(items)
    items[:] = ordered


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(allowed in reason for allowed in ALLOWED_IN_STRICT):
            report.outcome = "failed"
            report.longrepr = f"PEDIFACE_STRICT=1: a skip is a failure in CI ({reason})"
    setattr(item, f"rep_{report.when}", report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A whole module skipped at collection (shared data missing) fails too under PEDIFACE_STRICT."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(allowed in reason for allowed in ALLOWED_IN_STRICT):
            report.outcome = "failed"
            report.longrepr = f"PEDIFACE_STRICT=1: a skipped module is a failure in CI ({reason})"


@pytest.fixture(autouse=True)
def _no_settings_file_of_another_test() -> Iterator[None]:
    """load_settings(FILE) exports PEDIFACE_CONFIG so that the processes it starts read the same file;
    each test starts without one, and what it exported is removed after it (before the next module's
    fixtures are built: they run before this fixture of their first test)."""
    os.environ.pop("PEDIFACE_CONFIG", None)
    yield
    os.environ.pop("PEDIFACE_CONFIG", None)


# -- shared, expensive things: built once per test session ------------------------------------------


@pytest.fixture(scope="session")
def small_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A 3 mm sagittal MR series of the shipped template head (no shared data needed); read-only."""
    from worker.sample import write_sample_series

    return write_sample_series(TEMPLATE_HEAD, tmp_path_factory.mktemp("small-series"), spacing_mm=3.0)


@pytest.fixture(scope="session")
def shipped_masker():  # noqa: ANN201 - worker.deface.FaceMasker (imports torch)
    """The default nnU-Net masker, loaded once for every test that only predicts with it."""
    from worker.deface import MODELS_ROOT, load_masker

    return load_masker("nnunet", MODELS_ROOT / "nnunet-face", threads=1)


def spool_series(data_dir: Path, files: list[Path], calling_ae: str = "PACS") -> str:
    """Store a series in a spool as the gateway would and seal it; returns the job id."""
    import pydicom

    from spool.manifest import series_key
    from spool.store import Spool

    spool = Spool(data_dir)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    key = series_key(calling_ae, str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
    for path in files:
        sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        spool.store_instance(key, calling_ae, sop_uid, path.read_bytes())
    manifest = spool.seal(key, quiet_period_s=0)
    assert manifest is not None
    return manifest.job_id


@pytest.fixture(scope="session")
def upper_face_masker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A template masker folder whose face region is cut to its upper half: it blanks the brow, eyes and
    upper nose and leaves the nose tip, mouth and chin (a deliberately broken masker; read-only).

    On :func:`small_series` the face check still finds that face (docs/defacing.md, "Face check").
    """
    from evaluation.broken_masker import write_upper_face_masker

    return write_upper_face_masker(tmp_path_factory.mktemp("upper-face-masker") / "template-upper-face")
