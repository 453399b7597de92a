"""Several destinations with their own de-identification, partial sends, per-study completion.

The archives are real DICOM peers over loopback: dcmtk's storescp, and a pynetdicom
Storage SCP that runs out of resources part-way through a series (a full archive disk)
and records every SOP Instance UID it stored, so that duplicates can be counted.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.conftest import TEMPLATE_HEAD, Processes, free_port, need_tool, wait_for_port

pytestmark = pytest.mark.e2e

MODIFIED_DATES = "Retain Longitudinal Temporal Information with Modified Dates"
PATIENT_CHARACTERISTICS = "Retain Patient Characteristics"


@pytest.fixture(scope="module")
def small_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from worker.sample import write_sample_series

    folder = tmp_path_factory.mktemp("series")
    files = write_sample_series(TEMPLATE_HEAD, folder, spacing_mm=3.0)
    for path in files:  # header values the two profiles treat differently
        ds = pydicom.dcmread(path)
        ds.PatientSex, ds.PatientAge, ds.StudyDate = "F", "007Y", "20240305"
        ds.save_as(path)
    return files


class CountingArchive:
    """A pynetdicom Storage SCP that stores in memory, counts every SOP Instance UID it was
    sent, and answers 0xA700 (out of resources) once it holds ``capacity`` instances."""

    def __init__(self, port: int, capacity: int | None = None) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.capacity = capacity
        self.received: Counter[str] = Counter()
        self.stored: dict[str, pydicom.Dataset] = {}
        self._lock = threading.Lock()
        ae = AE(ae_title="ARCHIVE")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: object) -> int:
        ds = event.dataset  # type: ignore[attr-defined]
        ds.file_meta = event.file_meta  # type: ignore[attr-defined]
        with self._lock:
            uid = str(ds.SOPInstanceUID)
            self.received[uid] += 1
            if self.capacity is not None and len(self.stored) >= self.capacity and uid not in self.stored:
                return 0xA700
            self.stored[uid] = ds
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def _spooled_job(data_dir: Path, files: list[Path], study: str = "1.2.3", series: str = "1.2.3.4") -> str:
    from spool.manifest import series_key
    from spool.store import Spool

    spool = Spool(data_dir)
    key = series_key("PACS", study, series)
    for path in files:
        sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        spool.store_instance(key, "PACS", sop_uid, path.read_bytes())
    manifest = spool.seal(key, quiet_period_s=0)
    assert manifest is not None
    return manifest.job_id


def _settings(tmp_path: Path, **overrides: object):  # noqa: ANN202 - config.settings.Settings
    from config.settings import load_settings

    return load_settings(
        data_dir=tmp_path / "data",
        metrics={"port": 0},
        deid={"secret": "a test key that is long enough"},
        **overrides,
    )


def _folder_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]


def test_each_destination_gets_its_own_deidentification_of_one_defacing(
    tmp_path: Path, small_series: list[Path]
) -> None:
    """One masking, two archives: the research archive gets the Basic Profile, the longitudinal one
    keeps shifted dates and the patient's sex and age; the pixels are the same defaced pixels."""
    from worker.deface import build_masker
    from worker.jobs import JobRunner

    settings = _settings(
        tmp_path,
        destinations=[{"name": "longitudinal", "deid_options": [MODIFIED_DATES, PATIENT_CHARACTERISTICS]}],
    )
    job_id = _spooled_job(settings.data_dir, small_series)
    outcome = JobRunner(settings, lambda: build_masker(settings)).run(job_id)
    assert outcome.state == "sent", outcome

    basic = _folder_series(settings.data_dir / "archive")
    longitudinal = _folder_series(settings.data_dir / "archive-longitudinal")
    assert len(basic) == len(longitudinal) == len(small_series)
    assert all("PatientSex" not in ds or not ds.PatientSex for ds in basic)
    assert {str(ds.PatientSex) for ds in longitudinal} == {"F"}
    assert {str(ds.PatientAge) for ds in longitudinal} == {"007Y"}
    basic_dates = {str(ds.get("StudyDate", "")) for ds in basic}
    shifted = {str(ds.StudyDate) for ds in longitudinal}
    assert len(shifted) == 1 and shifted != {"20240305"} and basic_dates != shifted

    def codes(ds: pydicom.Dataset) -> set[str]:
        return {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}

    assert {"113100", "113102"} <= codes(basic[0]) and not {"113107", "113108"} & codes(basic[0])
    assert {"113100", "113102", "113107", "113108"} <= codes(longitudinal[0])
    # The same defacing reached both: identical pixels, slice by slice (matched by position).
    by_position = {tuple(ds.ImagePositionPatient): ds.pixel_array for ds in basic}
    for ds in longitudinal:
        assert (by_position[tuple(ds.ImagePositionPatient)] == ds.pixel_array).all()

    manifest = JobRunner(settings, lambda: build_masker(settings)).spool.load(job_id)
    assert set(manifest.deliveries) == {"archive", "longitudinal"}
    assert all(d.state == "sent" and d.n_sent == len(small_series) for d in manifest.deliveries.values())
    assert {"read", "volume", "mask", "write_back", "deid", "write", "delivery"} <= set(manifest.timings)


def test_an_unreachable_archive_holds_up_no_other_and_gets_the_series_when_back(
    tmp_path: Path, small_series: list[Path], processes: Processes
) -> None:
    from common.errors import DeliveryError
    from gateway.status import SpoolCollector
    from worker.deface import build_masker
    from worker.jobs import JobRunner

    port = free_port()
    settings = _settings(
        tmp_path,
        destinations=[
            {"name": "pacs-b", "kind": "dicom", "ae_title": "ARCHIVE", "port": port, "timeout_s": 5}
        ],
    )
    job_id = _spooled_job(settings.data_dir, small_series)
    runner = JobRunner(settings, lambda: build_masker(settings))
    with pytest.raises(DeliveryError, match="pacs-b"):
        runner.run(job_id)  # archive B is down: the folder archive gets the series anyway
    manifest = runner.spool.load(job_id)
    assert manifest.state.value == "dispatched"
    assert manifest.deliveries["archive"].state == "sent"
    assert manifest.deliveries["pacs-b"].state == "failed" and manifest.deliveries["pacs-b"].failures == 1
    folder_files = sorted((settings.data_dir / "archive").rglob("*.dcm"))
    assert len(folder_files) == len(small_series)
    mtimes = [p.stat().st_mtime_ns for p in folder_files]

    received = tmp_path / "b"
    received.mkdir()
    proc = processes.start(
        "storescp", [need_tool("storescp"), "-aet", "ARCHIVE", "-od", str(received), str(port)]
    )
    wait_for_port(port, proc=proc)
    assert runner.run(job_id).state == "sent"
    assert len(list(received.glob("MR.*"))) == len(small_series)
    # The archive that had the series was not sent it again.
    assert [p.stat().st_mtime_ns for p in folder_files] == mtimes
    final = runner.spool.load(job_id)
    assert final.n_sent == len(small_series) and final.deliveries["pacs-b"].state == "sent"

    registry = CollectorRegistry()
    registry.register(SpoolCollector(runner.spool, lambda: None, ["archive", "pacs-b"]))
    metrics = generate_latest(registry).decode()
    assert 'pediface_send_failures_total{destination="pacs-b"} 1.0' in metrics
    assert 'pediface_send_failures_total{destination="archive"} 0.0' in metrics
    assert 'pediface_series_delivered_total{destination="pacs-b"} 1.0' in metrics
    assert 'pediface_stage_seconds_count{stage="mask"} 1.0' in metrics


def test_a_send_cut_short_resumes_without_sending_anything_twice(
    tmp_path: Path, small_series: list[Path]
) -> None:
    """The archive fills up after 20 instances (0xA700); once it has room, the retry sends only the rest."""
    from common.errors import DeliveryError
    from worker.deface import build_masker
    from worker.jobs import JobRunner

    port = free_port()
    archive = CountingArchive(port, capacity=20)
    try:
        wait_for_port(port)
        settings = _settings(
            tmp_path, destination={"name": "full", "kind": "dicom", "ae_title": "ARCHIVE", "port": port}
        )
        job_id = _spooled_job(settings.data_dir, small_series)
        runner = JobRunner(settings, lambda: build_masker(settings))
        with pytest.raises(DeliveryError, match="0xA700"):
            runner.run(job_id)
        assert len(archive.stored) == 20
        assert len(runner.spool.sent_ledger(job_id, "full")) == 20
        archive.capacity = None  # room again
        assert runner.run(job_id).state == "sent"
    finally:
        archive.stop()
    assert len(archive.stored) == len(small_series)
    # 20 stored first; the refused 21st was offered twice; nothing stored was sent again.
    assert sum(archive.received.values()) == len(small_series) + 1
    assert max(archive.received.values()) == 2 and list(archive.received.values()).count(2) == 1
    audit = [json.loads(line) for line in (tmp_path / "data" / "audit.jsonl").read_text().splitlines()]
    [sent] = [event for event in audit if event["event"] == "series_sent"]
    assert sent["resumed_after"] == 20 and sent["instances"] == len(small_series)


def test_routing_rules_choose_destinations(tmp_path: Path, small_series: list[Path]) -> None:
    from gateway.server import Sealer
    from spool.manifest import series_key
    from spool.store import Spool

    settings = _settings(
        tmp_path,
        destinations=[{"name": "neuro"}, {"name": "other"}],
        routing={
            "rules": [{"name": "heads", "action": "process", "modality": ["MR"], "destinations": ["neuro"]}],
            "default_destinations": ["other"],
        },
    )
    spool = Spool(settings.data_dir)
    key = series_key("PACS", "1.2.3", "1.2.3.4")
    for path in small_series[:2]:
        spool.store_instance(key, "PACS", str(pydicom.dcmread(path).SOPInstanceUID), path.read_bytes())
    sealer = Sealer(
        spool,
        0.01,
        lambda job: None,
        routing=settings.routing,
        destinations=[d.name for d in settings.all_destinations],
    )
    time.sleep(0.05)
    [job_id] = sealer.run_once()
    assert spool.load(job_id).destinations == ["neuro"]


def test_the_study_quiet_period_waits_for_every_series_of_the_study(
    tmp_path: Path, small_series: list[Path]
) -> None:
    """Two interleaved series of one study: the quiet one is not sealed while the other still receives."""
    from gateway.server import Sealer
    from spool.manifest import series_key, study_key
    from spool.store import Spool

    spool = Spool(tmp_path / "data")
    keys = [series_key("PACS", "1.2.3", f"1.2.3.{n}") for n in (1, 2)]
    for n, key in enumerate(keys):
        path = small_series[n]
        spool.store_instance(key, "PACS", f"1.2.3.9.{n}", path.read_bytes(), study_key("PACS", "1.2.3"))
    sealed: list[str] = []
    sealer = Sealer(spool, 1.0, sealed.append, study_quiet_period_s=3.0)
    now = time.time()
    os.utime(spool.incoming / keys[0], (now - 10, now - 10))  # quiet for 10 s
    os.utime(spool.incoming / keys[1], (now - 2, now - 2))  # its study-mate arrived 2 s ago
    assert sealer.run_once() == []
    assert {s.key for s in spool.open_series()} == set(keys)
    os.utime(spool.incoming / keys[1], (now - 4, now - 4))
    assert len(sealer.run_once()) == 2 and spool.open_series() == []
    # Without the study period, the same two series: the quiet one goes on its own, its mate waits.
    other = Spool(tmp_path / "other")
    for n, key in enumerate(keys):
        other.store_instance(
            key, "PACS", f"1.2.3.9.{n}", small_series[n].read_bytes(), study_key("PACS", "1.2.3")
        )
    os.utime(other.incoming / keys[0], (now - 10, now - 10))
    os.utime(other.incoming / keys[1], (now + 60, now + 60))  # still receiving
    [alone] = Sealer(other, 1.0, sealed.append).run_once()
    assert other.load(alone).series_key == keys[0]
    assert {s.key for s in other.open_series()} == {keys[1]}
