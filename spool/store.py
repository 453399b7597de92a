"""The spool: pipeline state kept as folders on disk.

Layout under ``<data_dir>/spool`` (a series moves by directory rename, which is
atomic on one filesystem)::

    tmp/                       half-written files; never read
    incoming/<series_key>/     instances of a series still arriving
        source.json            who sent it (calling AE title, first arrival)
        <sop>.dcm              one file per SOP Instance UID
    jobs/<job_id>/             a complete series handed to the workers
        job.json               the JobManifest (state, attempts, reason)
        instances/<sop>.dcm
        out/                   the defaced, de-identified series before delivery
    done/<job_id>/             delivered
    quarantine/<job_id>/       not delivered; job.json says why

The gateway owns ``incoming/`` and seals a series into ``jobs/``; workers move
jobs to ``done/`` or ``quarantine/``; ``pediface quarantine retry`` moves them
back. Only this module knows the layout. It needs the standard library and
pydantic only, so the gateway stays light.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from common.files import atomic_write, fsync_dir, utcnow
from spool.manifest import JobManifest, JobState, is_job_id, is_valid_uid, new_job_id


class OpenSeries(NamedTuple):
    """A series still receiving instances."""

    key: str
    age_s: float  # seconds since its last instance arrived
    study_key: str  # "" when unknown (a series received by an older version)


class SpoolError(Exception):
    """The spool cannot take an instance (disk full, permissions): the sender must retry later."""


class Spool:
    """Folder-based pipeline state shared by the gateway, the workers and the CLI."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "spool"
        self.tmp = self.root / "tmp"
        self.incoming = self.root / "incoming"
        self.jobs = self.root / "jobs"
        self.done = self.root / "done"
        self.quarantine_dir = self.root / "quarantine"
        for folder in (self.tmp, self.incoming, self.jobs, self.done, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()
        # Serialises "file lands in incoming/<key>" against "incoming/<key> is sealed": between the
        # threads of one gateway (the lock) and between gateways that share this spool (the flock).
        self._locks: dict[str, threading.Lock] = {"seal": threading.Lock(), "dispatch": threading.Lock()}

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold the spool-wide lock ``name`` (``seal`` or ``dispatch``): one thread of one process at a time.

        A thread lock for this process, then ``flock`` on ``spool/.<name>.lock`` for the others that
        share the spool (other gateways; on NFS the Linux client turns flock into NFS byte-range locks).
        """
        lock = self._locks.setdefault(name, threading.Lock())
        with lock, open(self.root / f".{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_stale_temp_files(self, older_than_s: float = 3600.0) -> None:
        """Half-written files of a process that died; young ones may belong to a live process."""
        cutoff = time.time() - older_than_s
        for entry in os.scandir(self.tmp):
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)

    def expire_delivered(self, older_than_s: float) -> list[str]:
        """Delete the files of delivered or dropped jobs finished more than ``older_than_s`` ago.

        The received instances are PHI and the QC picture shows a face: once the series is
        in the archive they are kept only as long as a site wants to be able to resend.
        ``job.json`` stays as the record of what happened.
        """
        cutoff = utcnow().timestamp() - older_than_s
        expired = []
        for manifest in self.manifests(self.done):
            if not manifest.history or manifest.history[-1].at.timestamp() > cutoff:
                continue
            job_dir = self.done / manifest.job_id
            leftovers = [job_dir / "instances", job_dir / "out", job_dir / "qc.png"]
            if not any(p.exists() for p in leftovers):
                continue
            for path in leftovers:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            expired.append(manifest.job_id)
        return expired

    def purge(self, job_id: str) -> None:
        """Delete a quarantined job for good (its files included)."""
        target = self.quarantine_dir / job_id
        if not is_job_id(job_id) or not (target / "job.json").is_file():
            raise FileNotFoundError(f"no quarantined job {job_id}")
        shutil.rmtree(target)
        fsync_dir(self.quarantine_dir)

    # -- receiving ---------------------------------------------------------------------------

    def store_instance(
        self, key: str, calling_ae: str, sop_uid: str, data: bytes, study_key: str = ""
    ) -> bool:
        """Durably store one received instance; ``False`` if this SOP Instance UID is already here.

        ``study_key`` (:func:`study_key`) groups the series of one study for the per-study quiet period.

        Raises :class:`SpoolError` when the bytes cannot be made durable.
        """
        if not is_valid_uid(sop_uid):
            raise ValueError(f"SOP Instance UID {sop_uid!r} is not a valid UID")
        tmp = self.tmp / f"{secrets.token_hex(8)}.dcm"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            with self.exclusive("seal"):
                series_dir = self.incoming / key
                target = series_dir / f"{sop_uid}.dcm"
                stored = not target.exists()
                if not stored:
                    tmp.unlink()
                elif not series_dir.exists():
                    series_dir.mkdir()
                    source = {
                        "calling_ae": calling_ae,
                        "study_key": study_key,
                        "first_arrival": utcnow().isoformat(),
                    }
                    atomic_write(series_dir / "source.json", json.dumps(source).encode(), self.tmp)
                    fsync_dir(self.incoming)
                # Held open: a seal may move the folder before the sync below, the entry goes with it.
                directory = os.open(series_dir, os.O_RDONLY | os.O_DIRECTORY)
                if stored:
                    os.rename(tmp, target)
                    # The directory's mtime is the series' last arrival; a rename updates it,
                    # and so does this for filesystems that would not.
                    os.utime(series_dir)
            # Outside the lock: the associations' directory syncs overlap, and the file system folds
            # those that arrive together into one journal commit (group commit). A duplicate waits
            # too, so that no Success is answered for an instance that is not yet on disk.
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return stored
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise SpoolError(f"cannot store instance: {exc.strerror or exc}") from exc

    def open_series(self) -> list[OpenSeries]:
        """Every series still in incoming/, with the seconds since its last arrival."""
        now = time.time()
        result = []
        for entry in os.scandir(self.incoming):
            if entry.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    age = now - entry.stat().st_mtime
                    source = _read_json(Path(entry.path) / "source.json") or {}
                    result.append(OpenSeries(entry.name, age, str(source.get("study_key") or "")))
        return result

    def seal(self, key: str, quiet_period_s: float) -> JobManifest | None:
        """Turn ``incoming/<key>`` into a job if nothing arrived for ``quiet_period_s``.

        Gateways that share the spool (several behind one address) may find the same quiet series at
        once: under the seal lock the first seals it, the others find it gone and return ``None``.
        """
        with self.exclusive("seal"):
            series_dir = self.incoming / key
            try:
                age = time.time() - series_dir.stat().st_mtime
            except FileNotFoundError:
                return None
            if age < quiet_period_s:
                return None
            source = _read_json(series_dir / "source.json") or {}
            previous = self._last_delivered(key)
            if previous is not None:
                # Late instances of a series already delivered: the follow-up job carries the
                # whole series, so the archive gets it complete and, the output UIDs being
                # derived from the input UIDs, with the same UIDs as before.
                for earlier in (self.done / previous.job_id / "instances").glob("*.dcm"):
                    target = series_dir / earlier.name
                    if not target.exists():
                        os.link(earlier, target)
                fsync_dir(series_dir)
            files = [p for p in series_dir.glob("*.dcm")]
            job_id = new_job_id(key)
            job_dir = self.jobs / job_id
            job_dir.mkdir()
            manifest = JobManifest(
                job_id=job_id,
                series_key=key,
                calling_ae=str(source.get("calling_ae", "")),
                n_instances=len(files),
                follows=previous.job_id if previous else None,
            ).to(
                JobState.sealed,
                f"{len(files)} instances, quiet for {age:.0f} s"
                + (f"; follow-up of {previous.job_id} with late instances" if previous else ""),
            )
            self._write_manifest(job_dir, manifest)
            os.rename(series_dir, job_dir / "instances")
            fsync_dir(job_dir)
            fsync_dir(self.incoming)
            return manifest

    def _last_delivered(self, key: str) -> JobManifest | None:
        """The newest delivered job of a series, if any."""
        found = [
            m
            for m in self.manifests(self.done)
            if m.series_key == key
            and m.state == JobState.sent
            and (self.done / m.job_id / "instances").is_dir()
        ]
        return max(found, key=lambda m: m.created_at) if found else None

    def quarantine_rejected(self, data: bytes, calling_ae: str, reason: str, code: str) -> JobManifest:
        """Keep an instance the gateway refused, with the reason, for a person to look at."""
        job_id = new_job_id("0" * 12)
        job_dir = self.quarantine_dir / job_id
        (job_dir / "instances").mkdir(parents=True)
        atomic_write(job_dir / "instances" / "rejected.dcm", data, self.tmp)
        manifest = JobManifest(
            job_id=job_id,
            series_key="",
            calling_ae=calling_ae,
            n_instances=1,
            reason=reason,
            reason_code=code,
        ).to(JobState.quarantined, reason)
        self._write_manifest(job_dir, manifest)
        return manifest

    # -- jobs ------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        """The folder of a job, wherever it is now."""
        if not is_job_id(job_id):
            raise ValueError(f"{job_id!r} is not a job id")
        for stage in (self.jobs, self.quarantine_dir, self.done):
            if (stage / job_id).is_dir():
                return stage / job_id
        raise FileNotFoundError(f"no job {job_id} in {self.root}")

    def load(self, job_id: str) -> JobManifest:
        return JobManifest.model_validate_json((self.job_dir(job_id) / "job.json").read_bytes())

    def save(self, manifest: JobManifest) -> None:
        self._write_manifest(self.job_dir(manifest.job_id), manifest)

    def instance_files(self, job_id: str) -> list[Path]:
        return sorted((self.job_dir(job_id) / "instances").glob("*.dcm"))

    def output_dir(self, job_id: str) -> Path:
        return self.jobs / job_id / "out"

    def sent_ledger(self, job_id: str, destination: str) -> set[str]:
        """SOP Instance UIDs a destination has acknowledged for this job (see :meth:`ledger_writer`).

        Only complete lines count: each UID is written with its newline and fsynced before the next
        instance is sent, so a last line without one was torn by a crash (even if its digits happen
        to form a UID) and is ignored, as is any byte that is not ASCII.
        """
        path = self.job_dir(job_id) / "sent" / f"{destination}.txt"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return set()
        complete = data.split(b"\n")[:-1]  # the part after the last newline is torn or empty
        return {text for line in complete if is_valid_uid(text := line.decode("ascii", "replace"))}

    @contextlib.contextmanager
    def ledger_writer(self, job_id: str, destination: str) -> Iterator[Callable[[str], None]]:
        """Append acknowledged SOP Instance UIDs, each durable before the next is sent.

        A send cut short (worker killed, archive gone) resumes after the last acknowledged
        instance instead of sending the series again; the output UIDs being deterministic,
        the ledger stays true across retries. A line torn by a crash is ended first, so the
        next UID gets a line of its own.
        """
        folder = self.job_dir(job_id) / "sent"
        folder.mkdir(exist_ok=True)
        with open(folder / f"{destination}.txt", "ab") as handle:
            if handle.tell() > 0:
                with open(folder / f"{destination}.txt", "rb") as reader:
                    reader.seek(-1, os.SEEK_END)
                    if reader.read(1) != b"\n":
                        handle.write(b"\n")

            def record(sop_uid: str) -> None:
                handle.write(sop_uid.encode("ascii") + b"\n")
                handle.flush()
                os.fsync(handle.fileno())

            yield record

    def manifests(self, stage: Path) -> Iterator[JobManifest]:
        for entry in sorted(stage.iterdir()):
            if (entry / "job.json").is_file():
                yield JobManifest.model_validate_json((entry / "job.json").read_bytes())

    @contextlib.contextmanager
    def claim(self, job_id: str, wait_s: float = 0.0) -> Iterator[bool]:
        """Hold an exclusive lock on a job for this process; yields ``False`` if another holds it.

        A redelivered task (worker lost, visibility timeout) must not process a series
        that another worker is still processing. ``wait_s``: how long to keep trying, for a
        worker taking up a job while a gateway holds the lock for a moment (recording the
        dispatch, or checking that no worker holds the job); a worker on the job holds it for
        far longer.
        """
        lock_path = self.jobs / job_id / ".lock"
        try:
            handle = open(lock_path, "a")
        except FileNotFoundError:
            yield False
            return
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()

    def finish(self, manifest: JobManifest, n_sent: int) -> None:
        """Record delivery and move the job to done/."""
        manifest.n_sent = n_sent
        manifest.reason = manifest.reason_code = None
        self._move(manifest.to(JobState.sent, f"{n_sent} instances delivered"), self.done)

    def drop(self, manifest: JobManifest, reason: str) -> None:
        """Record that a job is deliberately not processed and move it to done/."""
        manifest.reason, manifest.reason_code = reason, "routing.drop"
        self._move(manifest.to(JobState.dropped, reason), self.done)

    def quarantine(self, manifest: JobManifest, reason: str, code: str) -> None:
        """Move a job to quarantine/ with a reason a person can read."""
        manifest.reason, manifest.reason_code = reason, code
        self._move(manifest.to(JobState.quarantined, reason), self.quarantine_dir)

    def retry(self, job_id: str) -> JobManifest:
        """Move a quarantined job back to jobs/ as sealed, ready to dispatch."""
        source = self.quarantine_dir / job_id
        if not (source / "job.json").is_file():
            raise FileNotFoundError(f"no quarantined job {job_id}")
        manifest = JobManifest.model_validate_json((source / "job.json").read_bytes())
        shutil.rmtree(source / "out", ignore_errors=True)
        manifest.attempts = 0
        # A fresh retry horizon; destinations that already have the series are not sent it again.
        manifest.first_delivery_failure = None
        for delivery in manifest.deliveries.values():
            delivery.first_failure = None
        manifest.to(JobState.sealed, "retry requested")
        self._write_manifest(source, manifest)
        os.rename(source, self.jobs / job_id)
        fsync_dir(self.jobs)
        return manifest

    def _move(self, manifest: JobManifest, stage: Path) -> None:
        current = self.job_dir(manifest.job_id)
        self._write_manifest(current, manifest)
        if current.parent != stage:
            target = stage / manifest.job_id
            os.rename(current, target)
            fsync_dir(stage)
            fsync_dir(current.parent)

    def _write_manifest(self, job_dir: Path, manifest: JobManifest) -> None:
        atomic_write(job_dir / "job.json", manifest.model_dump_json(indent=2).encode(), self.tmp)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
