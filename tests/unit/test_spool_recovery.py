"""What the spool makes of what a crash leaves behind: a torn ledger line and stale temp files.

The ledger (``sent/<destination>.txt``) is the one file appended to in place, one fsynced line per
instance a destination acknowledged; a worker killed mid-line leaves a last line without its
newline. Proven here, with a real spooled series and a real Storage SCP: a torn last line that is
not a UID is ignored and the complete lines kept, and a resumed ``deliver`` sends exactly the
torn instance (and nothing already acknowledged), and the next UID after a torn line gets a line
of its own.
Then the temp folder: files older than an hour in ``spool/tmp`` are removed when a Spool is
opened; young ones, such as a live process's half-written file, are kept, and nothing outside
``tmp/`` is touched.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, StoragePresentationContexts, evt

from config.sections import DestinationSettings
from spool.manifest import series_key
from spool.store import Spool
from tests.conftest import free_port, spool_series
from worker.delivery import deliver


class RecordingArchive:
    """A Storage SCP that answers Success and remembers every SOP Instance UID it was sent, in order."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="ARCHIVE")
        ae.supported_contexts = StoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000


@pytest.fixture
def archive() -> Iterator[RecordingArchive]:
    scp = RecordingArchive()
    yield scp
    scp.server.shutdown()


@pytest.fixture
def job(tmp_path: Path, small_series: list[Path]) -> tuple[Spool, str, list[str]]:
    """Three real instances spooled as a job; their SOP Instance UIDs in the order ``deliver`` sends them."""
    data_dir = tmp_path / "data"
    job_id = spool_series(data_dir, small_series[:3])
    spool = Spool(data_dir)
    return spool, job_id, [p.stem for p in spool.instance_files(job_id)]


def _ledger(spool: Spool, job_id: str) -> Path:
    folder = spool.job_dir(job_id) / "sent"
    folder.mkdir(exist_ok=True)
    return folder / "archive.txt"


def _resume(spool: Spool, job_id: str, port: int) -> int:
    """What ``worker.steps`` does on a retry: skip what the ledger holds, record each acknowledgement."""
    destination = DestinationSettings(
        name="archive", kind="dicom", ae_title="ARCHIVE", port=port, timeout_s=5
    )
    already = spool.sent_ledger(job_id, "archive")
    with spool.ledger_writer(job_id, "archive") as record:
        return deliver(
            spool.instance_files(job_id), destination, Path("unused"), already=already, record=record
        )


def _torn(uid: str, shape: str) -> bytes:
    if shape == "cut after a dot":
        return uid[: uid.rindex(".") + 1].encode()
    if shape == "zero-filled tail":  # what a crash can leave where the filesystem had not written yet
        return uid[:10].encode() + b"\0" * 12
    return b"#~ ?!"  # ASCII garbage


@pytest.mark.parametrize("shape", ["cut after a dot", "zero-filled tail", "garbage"])
def test_a_torn_last_line_is_ignored_and_a_resumed_send_resends_exactly_that_instance(
    job: tuple[Spool, str, list[str]], archive: RecordingArchive, shape: str
) -> None:
    spool, job_id, uids = job
    _ledger(spool, job_id).write_bytes(f"{uids[0]}\n{uids[1]}\n".encode() + _torn(uids[2], shape))
    assert spool.sent_ledger(job_id, "archive") == {uids[0], uids[1]}
    assert _resume(spool, job_id, archive.port) == 3
    assert archive.received == [uids[2]], "only the torn instance is sent again"


def test_a_last_line_torn_between_digits_is_ignored(
    job: tuple[Spool, str, list[str]], archive: RecordingArchive
) -> None:
    spool, job_id, uids = job
    _ledger(spool, job_id).write_bytes(f"{uids[0]}\n{uids[1]}\n{uids[2][:-3]}".encode())
    assert _resume(spool, job_id, archive.port) == 3
    assert archive.received == [uids[2]], "the resend itself is right"
    _ledger(spool, job_id).write_bytes(f"{uids[0]}\n{uids[1]}\n{uids[2][:-3]}".encode())
    assert spool.sent_ledger(job_id, "archive") == {uids[0], uids[1]}


def test_after_a_resumed_send_the_ledger_records_the_resent_instance(
    job: tuple[Spool, str, list[str]], archive: RecordingArchive
) -> None:
    spool, job_id, uids = job
    _ledger(spool, job_id).write_bytes(f"{uids[0]}\n".encode() + _torn(uids[1], "cut after a dot"))
    assert _resume(spool, job_id, archive.port) == 3
    assert archive.received == uids[1:]
    assert spool.sent_ledger(job_id, "archive") == set(uids)


def test_a_torn_tail_with_a_non_ascii_byte_is_ignored(job: tuple[Spool, str, list[str]]) -> None:
    spool, job_id, uids = job
    _ledger(spool, job_id).write_bytes(f"{uids[0]}\n".encode() + b"1.2.\xff\xfe")
    assert spool.sent_ledger(job_id, "archive") == {uids[0]}


_WRITER = """
import sys
with open(sys.argv[1], "wb") as handle:  # a half-written instance, as store_instance has it open
    handle.write(b"DICM" * 64)
    handle.flush()
    print("writing", flush=True)
    sys.stdin.read()  # keep it open until the test closes our stdin
"""


def test_stale_temp_files_are_removed_when_a_spool_is_opened_and_young_ones_kept(tmp_path: Path) -> None:
    from tests.conftest import REPO

    spool = Spool(tmp_path)
    now = time.time()

    def aged(path: Path, age_s: float, data: bytes = b"partial") -> Path:
        path.write_bytes(data)
        os.utime(path, (now - age_s, now - age_s))
        return path

    stale = [
        aged(spool.tmp / "0f1e2d3c4b5a6978.dcm", 2 * 3600),  # store_instance's temp name
        aged(spool.tmp / ".job.json.a1b2c3d4e5f6.tmp", 3600 + 120),  # atomic_write's temp name
        aged(spool.tmp / "1234abcd1234abcd.dcm", 30 * 24 * 3600),
    ]
    young = [
        aged(spool.tmp / "5555aaaa5555aaaa.dcm", 3600 - 120),
        aged(spool.tmp / ".source.json.0a0b0c0d0e0f.tmp", 5),
    ]
    old_folder = spool.tmp / "left-by-hand"
    old_folder.mkdir()
    os.utime(old_folder, (now - 2 * 3600, now - 2 * 3600))
    key = series_key("PACS", "1.2", "1.2.3")
    spool.store_instance(key, "PACS", "1.2.3.1", b"an instance of a series that went quiet long ago")
    os.utime(spool.incoming / key / "1.2.3.1.dcm", (now - 2 * 3600, now - 2 * 3600))
    os.utime(spool.incoming / key, (now - 2 * 3600, now - 2 * 3600))

    live = spool.tmp / "9999ffff9999ffff.dcm"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(live)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([writer.stdout], [], [], 60)
        assert ready and writer.stdout.readline().strip() == "writing"
        Spool(tmp_path)  # another process (a restarted gateway, a worker) opens the spool
        left = sorted(p.name for p in spool.tmp.iterdir())
        assert left == sorted([*(p.name for p in young), old_folder.name, live.name])
        assert not any(p.exists() for p in stale)
        assert live.read_bytes() == b"DICM" * 64, "the live writer's file is intact"
    finally:
        writer.stdin.close()
        assert writer.wait(timeout=30) == 0
    assert (spool.incoming / key / "1.2.3.1.dcm").is_file(), "nothing outside tmp/ is touched"
    assert [s.key for s in spool.open_series()] == [key]
