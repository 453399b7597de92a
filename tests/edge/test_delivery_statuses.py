"""``worker.delivery.deliver`` against a real Storage SCP on loopback that answers what each test scripts.

The archive is a pynetdicom SCP in this process; the instances are a real series spooled as a job,
and acknowledgements go to that job's real ledger (``Spool.ledger_writer``). Proven: the warning
statuses 0xB000, 0xB006 and 0xB007 count as stored and are recorded; a failure status raises
:class:`DeliveryError` naming it, with only the instances acknowledged before it recorded, and a
later send resumes with exactly the rest; an archive that takes the C-STORE and never answers is
given up after ``destination.timeout_s`` with ``DeliveryError`` and that instance is not recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts, evt

from common.errors import DeliveryError
from config.sections import DestinationSettings
from spool.store import Spool
from tests.conftest import free_port, spool_series
from worker.delivery import deliver

HANG = -1  # scripted answer: take the C-STORE, never answer it (until the test ends)


class ScriptedArchive:
    """A Storage SCP answering each C-STORE with the next scripted status (0x0000 once the script ends)."""

    def __init__(self, port: int, script: list[int]) -> None:
        self.port = port
        self.script = list(script)
        self.received: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        ae = AE(ae_title="ARCHIVE")
        ae.supported_contexts = StoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(str(event.dataset.SOPInstanceUID))
            answer = self.script.pop(0) if self.script else 0x0000
        if answer == HANG:
            self.release.wait(30)
            return 0x0000
        return answer

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def archive() -> Iterator[list[ScriptedArchive]]:
    started: list[ScriptedArchive] = []
    yield started
    for each in started:
        each.stop()


@pytest.fixture
def job(tmp_path: Path, small_series: list[Path]) -> tuple[Spool, str, list[Path]]:
    """Three real instances spooled as a job; the files ``deliver`` sends, named ``<SOP UID>.dcm``."""
    data_dir = tmp_path / "data"
    job_id = spool_series(data_dir, small_series[:3])
    spool = Spool(data_dir)
    files = spool.instance_files(job_id)
    assert [p.stem for p in files] == [str(pydicom.dcmread(p).SOPInstanceUID) for p in files]
    return spool, job_id, files


def _send(spool: Spool, job_id: str, files: list[Path], port: int, tmp_path: Path) -> int:
    destination = DestinationSettings(
        name="archive", kind="dicom", ae_title="ARCHIVE", port=port, timeout_s=2
    )
    already = spool.sent_ledger(job_id, "archive")
    with spool.ledger_writer(job_id, "archive") as record:
        return deliver(files, destination, tmp_path / "unused", already=already, record=record)


@pytest.mark.parametrize("warning", [0xB000, 0xB006, 0xB007], ids=lambda s: f"0x{s:04X}")
def test_warning_statuses_count_as_stored_and_are_recorded(
    archive: list[ScriptedArchive], job: tuple[Spool, str, list[Path]], tmp_path: Path, warning: int
) -> None:
    spool, job_id, files = job
    scp = ScriptedArchive(free_port(), [warning] * len(files))
    archive.append(scp)
    assert _send(spool, job_id, files, scp.port, tmp_path) == len(files)
    uids = [p.stem for p in files]
    assert scp.received == uids and scp.script == [], "each instance sent once, each answered the warning"
    assert spool.sent_ledger(job_id, "archive") == set(uids)


@pytest.mark.parametrize("failure", [0xA700, 0xA900, 0xC000], ids=lambda s: f"0x{s:04X}")
def test_a_failure_status_raises_naming_it_and_a_resend_sends_exactly_the_rest(
    archive: list[ScriptedArchive], job: tuple[Spool, str, list[Path]], tmp_path: Path, failure: int
) -> None:
    spool, job_id, files = job
    scp = ScriptedArchive(free_port(), [0x0000, failure])
    archive.append(scp)
    uids = [p.stem for p in files]
    with pytest.raises(DeliveryError) as refused:
        _send(spool, job_id, files, scp.port, tmp_path)
    assert (
        str(refused.value) == f"ARCHIVE@127.0.0.1:{scp.port} refused an instance with status 0x{failure:04X}"
    )
    assert scp.received == uids[:2], "the send stops at the refused instance"
    assert spool.sent_ledger(job_id, "archive") == {uids[0]}, "only the acknowledged one is recorded"
    # The retry: the archive now takes everything; only the two it lacks are sent again.
    assert _send(spool, job_id, files, scp.port, tmp_path) == len(files)
    assert scp.received == [*uids[:2], *uids[1:]]
    assert spool.sent_ledger(job_id, "archive") == set(uids)


def test_an_archive_that_never_answers_is_given_up_after_the_timeout(
    archive: list[ScriptedArchive], job: tuple[Spool, str, list[Path]], tmp_path: Path
) -> None:
    spool, job_id, files = job
    scp = ScriptedArchive(free_port(), [0x0000, HANG])
    archive.append(scp)
    uids = [p.stem for p in files]
    started = time.monotonic()
    with pytest.raises(DeliveryError) as lost:
        _send(spool, job_id, files, scp.port, tmp_path)
    waited = time.monotonic() - started
    assert str(lost.value) == (
        f"ARCHIVE@127.0.0.1:{scp.port} did not answer a C-STORE (connection lost or timed out)"
    )
    assert 2.0 <= waited < 10.0, f"gave up after {waited:.1f} s, destination.timeout_s is 2"
    assert scp.received == uids[:2]
    assert spool.sent_ledger(job_id, "archive") == {uids[0]}, "the unanswered instance is not recorded"
