"""``pediface demo``: one real series through an embedded gateway and a worker process.

This process runs the gateway (the worker, which loads the masker, is a child
process), sends the series with C-STORE over loopback like a PACS would, waits
for the job to be delivered or quarantined, and says where everything went.

It is a person's first ten minutes with pediface, so it is quiet: a progress bar (on a terminal) and the
lines that say where the results are. Everything else (Celery's banner, the worker's and the gateway's
logs at debug level, library warnings) goes to ``<data_dir>/logs/demo-<time>.log``.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from common.files import utcnow
from common.logs import configure as configure_logging
from common.logs import get_logger
from common.progress import steps
from config.sections import DestinationKind, DestinationSettings
from config.settings import Settings
from spool.manifest import JobManifest, JobState
from spool.store import Spool

log = get_logger("pediface.demo")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_UIH = REPO_ROOT.parent / "shared" / "data" / "dicom" / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag"
TEMPLATE_HEAD = REPO_ROOT / "models" / "template-pydeface" / "pydeface_mean_reg2mean.nii.gz"
DEMO_AE = "PEDIFACE-DEMO"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_input(work: Path, folder: Path | None = None) -> tuple[str, list[Path]]:
    """The series to send: ``folder``, else the shared UIH head if present, else a sample of the template."""
    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        return f"series in {folder}", files
    if SHARED_UIH.is_dir():
        return "UIH uMR770 3D T1 (../shared/data/dicom)", sorted(SHARED_UIH.glob("*.dcm"))
    from worker.sample import write_sample_series

    sample = work / "sample-series"
    shutil.rmtree(sample, ignore_errors=True)
    return "sample made from the shipped template head", write_sample_series(TEMPLATE_HEAD, sample)


def wait_for_job(spool: Spool, calling_ae: str, since: float, timeout_s: float) -> JobManifest | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for stage in (spool.done, spool.quarantine_dir):
            for manifest in spool.manifests(stage):
                if manifest.calling_ae == calling_ae and manifest.created_at.timestamp() >= since:
                    return manifest
        time.sleep(0.5)
    return None


def run_demo(
    settings: Settings,
    worker_process: Callable[[Path], AbstractContextManager],
    timeout_s: float,
    folder: Path | None = None,
) -> int:
    """Run the demo; returns the exit status (0 when the series was delivered).

    ``worker_process(log_file)`` starts the worker with its output going to ``log_file``.
    """
    from gateway.server import Gateway
    from worker.delivery import deliver

    log_file = settings.data_dir / "logs" / f"demo-{utcnow():%Y%m%d-%H%M%S}.log"
    configure_logging("DEBUG", settings.log_format, file=log_file)
    work = settings.data_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    gw_settings = settings.model_copy(
        update={
            "dicom": settings.dicom.model_copy(update={"host": "127.0.0.1", "port": port}),
            "series": settings.series.model_copy(update={"quiet_period_s": 3.0}),
        }
    )
    what, files = demo_input(work, folder)
    target = f"{settings.dicom.ae_title}@127.0.0.1:{port}"
    print(f"pediface demo: sending {len(files)} instances ({what}) to {target}", flush=True)
    started = time.time()
    with steps(3, "pediface demo") as bar, worker_process(log_file):
        bar.step("starting the gateway and the worker")
        gateway = Gateway(gw_settings)
        gateway.start()
        try:
            scu = DestinationSettings(
                kind=DestinationKind.dicom,
                ae_title=settings.dicom.ae_title,
                host="127.0.0.1",
                port=port,
                calling_ae_title=DEMO_AE,
            )
            bar.step(f"sending {len(files)} instances with C-STORE")
            deliver(files, scu, settings.archive_folder)
            sent_s = time.time() - started
            bar.step("the worker defaces and de-identifies the series")
            manifest = wait_for_job(Spool(settings.data_dir), DEMO_AE, started - 1, timeout_s)
        finally:
            gateway.stop()
    total_s = time.time() - started
    if manifest is None:
        print(f"pediface demo: no result after {timeout_s:.0f} s; see the log: {log_file}")
        return 1
    job_dir = Spool(settings.data_dir).job_dir(manifest.job_id)
    if manifest.state != JobState.sent:
        print(f"pediface demo: the series was quarantined: {manifest.reason}\n  {job_dir}\n  log: {log_file}")
        return 1
    picture = work / "before_after.png"
    if (job_dir / "qc.png").is_file():
        shutil.copyfile(job_dir / "qc.png", picture)
    series_dir = _archived_series(settings, manifest)
    print(
        f"pediface demo: done in {total_s:.1f} s (C-STORE {sent_s:.1f} s)\n"
        f"  defaced, de-identified series ({manifest.n_sent} instances): {series_dir}\n"
        f"  before/after picture: {picture}\n"
        f"  log: {log_file}"
    )
    return 0


def _archived_series(settings: Settings, manifest: JobManifest) -> Path | str:
    if settings.destination.kind != DestinationKind.folder or not manifest.output_series_uid:
        return f"{settings.destination.ae_title}@{settings.destination.host}:{settings.destination.port}"
    matches = list(settings.archive_folder.glob(f"*/{manifest.output_series_uid}"))
    return matches[0] if matches else settings.archive_folder
