"""The network edge on loopback: a gateway in this process, dcmtk's tools as the peers."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pydicom.examples
import pytest

from config.settings import Settings, load_settings
from gateway.server import Gateway
from spool.manifest import JobState
from tests.conftest import UIH, free_port, need_shared, need_tool, wait_until
from tests.taskmessages import folder_messages


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, Callable[[], list[str]]]]:
    """A running gateway on the real embedded broker, and the job ids of the tasks it has queued there."""
    settings: Settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        dicom={"port": free_port()},
        series={"quiet_period_s": 1.0, "poll_interval_s": 0.2},
        metrics={"port": free_port()},
    )
    gw = Gateway(settings)

    def dispatched() -> list[str]:
        tasks = folder_messages(settings)
        assert all(name == "pediface.process_series" and len(args) == 1 for name, args in tasks), tasks
        return [args[0] for _, args in tasks]

    gw.start()
    yield gw, dispatched
    gw.stop()


def storescu(gw: Gateway, *files: Path, called: str = "PEDIFACE") -> subprocess.CompletedProcess:
    argv = [
        need_tool("storescu"),
        "-v",
        "-aet",
        "TESTPACS",
        "-aec",
        called,
        "127.0.0.1",
        str(gw.settings.dicom.port),
    ]
    return subprocess.run([*argv, *map(str, files)], capture_output=True, text=True, timeout=120)


def echoscu(gw: Gateway, called: str = "PEDIFACE") -> subprocess.CompletedProcess:
    argv = [
        need_tool("echoscu"),
        "-aet",
        "TESTPACS",
        "-aec",
        called,
        "127.0.0.1",
        str(gw.settings.dicom.port),
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def quarantined(gw: Gateway) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(gw.spool.quarantine_dir.glob("*/job.json"))]


def test_c_echo(gateway: tuple[Gateway, Callable[[], list[str]]]) -> None:
    gw, _ = gateway
    result = echoscu(gw)
    assert result.returncode == 0, result.stderr


def test_wrong_called_ae_title_is_rejected(gateway: tuple[Gateway, Callable[[], list[str]]]) -> None:
    gw, _ = gateway
    result = echoscu(gw, called="SOMEONEELSE")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr or "Association Rejected" in result.stderr


def test_series_is_spooled_sealed_and_dispatched_once(
    gateway: tuple[Gateway, Callable[[], list[str]]],
) -> None:
    need_shared(UIH)
    gw, dispatched = gateway
    files = sorted(UIH.glob("*.dcm"))[:20]
    first = storescu(gw, *files)
    again = storescu(gw, *files[:5])  # duplicates of instances already spooled
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    wait_until(dispatched, 30, "the series to be dispatched")
    assert len(dispatched()) == 1
    job = gw.spool.load(dispatched()[0])
    assert job.n_instances == 20 and job.calling_ae == "TESTPACS"
    assert job.state == JobState.dispatched
    stored = gw.spool.instance_files(job.job_id)
    assert len(stored) == 20
    # Stored byte for byte as sent (dcmtk keeps the dataset; only the meta header is ours).
    original = pydicom.dcmread(files[0])
    spooled = pydicom.dcmread(gw.spool.job_dir(job.job_id) / "instances" / f"{original.SOPInstanceUID}.dcm")
    assert spooled.PixelData == original.PixelData
    assert spooled.PatientName == original.PatientName
    assert not list(gw.spool.tmp.iterdir()), "temp files left behind"


def test_unknown_sop_class_is_refused(
    gateway: tuple[Gateway, Callable[[], list[str]]], tmp_path: Path
) -> None:
    gw, dispatched = gateway
    rtss = tmp_path / "rtss.dcm"
    pydicom.examples.rt_ss.save_as(rtss)
    result = storescu(gw, rtss)
    assert result.returncode != 0
    assert "No presentation context" in result.stderr
    assert not list(gw.spool.incoming.iterdir()) and not dispatched()


@pytest.mark.parametrize(
    ("corruption", "reason"),
    [
        ("no_series_uid", "SeriesInstanceUID is missing"),
        ("bad_series_uid", "SeriesInstanceUID is not a valid UID"),
        ("short_pixel_data", "Pixel Data holds 1000 bytes"),
    ],
)
def test_corrupt_instance_fails_and_is_quarantined(
    gateway: tuple[Gateway, Callable[[], list[str]]], tmp_path: Path, corruption: str, reason: str
) -> None:
    need_shared(UIH)
    gw, dispatched = gateway
    ds = pydicom.dcmread(sorted(UIH.glob("*.dcm"))[0])
    if corruption == "no_series_uid":
        del ds.SeriesInstanceUID
    elif corruption == "bad_series_uid":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.SeriesInstanceUID = "1.2.3.abc/../../etc"
    else:
        ds.PixelData = ds.PixelData[:1000]
    path = tmp_path / "corrupt.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom rightly warns about the invalid UID we write on purpose
        ds.save_as(path)
    result = storescu(gw, path)
    assert result.returncode != 0, "storescu reported success for a corrupt instance"
    assert "Received Store Response (Error: DataSetDoesNotMatchSOPClass)" in result.stderr
    entries = quarantined(gw)
    assert len(entries) == 1 and reason in entries[0]["reason"]
    assert entries[0]["state"] == "quarantined" and entries[0]["calling_ae"] == "TESTPACS"
    kept = gw.spool.quarantine_dir / entries[0]["job_id"] / "instances" / "rejected.dcm"
    assert kept.stat().st_size > 0
    assert not list(gw.spool.incoming.iterdir()) and not dispatched()
    # ... and the gateway keeps serving.
    assert echoscu(gw).returncode == 0


def test_gateway_imports_neither_torch_nor_the_pipeline() -> None:
    code = (
        "import sys, gateway.server, gateway.scp, pediface.cli, spool.broker;"
        "bad = [m for m in ('torch', 'nnunetv2', 'SimpleITK', 'worker', 'worker.pipeline') "
        "if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_health_readiness_and_metrics(gateway: tuple[Gateway, Callable[[], list[str]]]) -> None:
    need_shared(UIH)
    gw, dispatched = gateway
    base = f"http://127.0.0.1:{gw.settings.metrics.port}"
    assert urllib.request.urlopen(f"{base}/healthz", timeout=5).read() == b"ok\n"
    assert urllib.request.urlopen(f"{base}/readyz", timeout=5).status == 200
    assert storescu(gw, *sorted(UIH.glob("*.dcm"))[:3]).returncode == 0
    wait_until(dispatched, 30, "the series to be dispatched")

    def metrics() -> str:
        return urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()

    # The gateway writes the job's `dispatched` state just after the broker takes the task, so the task can
    # be on the queue a moment before the job's state says so.
    wait_until(lambda: 'pediface_jobs{state="dispatched"} 1.0' in metrics(), 10, "the job to read dispatched")
    text = metrics()
    assert 'pediface_instances_received_total{outcome="stored"}' in text
    assert 'pediface_jobs{state="sealed"}' not in text or 'pediface_jobs{state="sealed"} 0.0' in text
    assert "pediface_queue_depth" in text and "pediface_open_series 0.0" in text
    # Readiness follows the spool: a spool that cannot take files is not ready.
    aside = gw.spool.tmp.with_name("tmp-aside")
    gw.spool.tmp.rename(aside)
    try:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
        assert error.value.code == 503 and b"spool not writable" in error.value.read()
    finally:
        aside.rename(gw.spool.tmp)
    assert urllib.request.urlopen(f"{base}/readyz", timeout=5).status == 200


def test_a_taken_http_port_stops_the_gateway_before_it_accepts_anything(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = load_settings(
            None,
            data_dir=tmp_path / "data",
            dicom={"port": free_port()},
            metrics={"port": taken.getsockname()[1]},
        )
        with pytest.raises(OSError):
            Gateway(settings).start()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", settings.dicom.port)) != 0, "the SCP listens after all"
