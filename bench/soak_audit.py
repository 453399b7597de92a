"""The end of a soak: what the senders got Success for, followed to the archive by listing the archive.

The archive (storescp with unique file names) is read file by file: each file's SOP Instance UID, its
series and the time it was written. A sent SOP Instance UID maps to the archived one through the keyed
UID remapping (``remap_uid`` with the soak's key): the de-identification remaps it, and marking the
defaced image as derived remaps the pseudonymised UID once more (worker.pipeline.mark_derived; a
series sent de-identified but not defaced has the first only). So each acknowledged
instance is found at the archive exactly once, more than once (duplicated), in quarantine (the files
of a quarantined job keep their original UIDs; a refused instance keeps the C-STORE's UID in its file
meta), or nowhere (lost).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.filereader import read_file_meta_info

from bench.soak_hostile import HostileSend
from bench.soak_senders import Send
from worker.deid.pseudonym import remap_uid


def archived_as(sop: str, key: bytes) -> tuple[str, str]:
    """The SOP Instance UIDs an instance can have at the archive: defaced (derived) or only de-identified."""
    pseudonymised = remap_uid(sop, key)
    return remap_uid(pseudonymised, key), pseudonymised


STAGES = ("read", "volume", "mask", "write_back", "deid", "qc", "write", "delivery")


@dataclass
class ArchivedFile:
    series: str
    mtime: float


@dataclass
class Verdict:
    acknowledged: int = 0
    archived_once: int = 0
    quarantined: int = 0
    duplicated: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    quarantine_reasons: Counter = field(default_factory=Counter)
    series_sent: int = 0
    series_delivered: int = 0
    series_quarantined: int = 0
    latencies_s: list[float] = field(default_factory=list)
    hostile: Counter = field(default_factory=Counter)  # (case, outcome kind) -> count
    hostile_unkept: list[str] = field(default_factory=list)  # refused but not in quarantine
    extra_archive_files: int = 0
    completed_twice: list[str] = field(default_factory=list)  # jobs whose history says "sent" more than once
    jobs_redispatched: int = 0  # jobs dispatched more than once (reconciler, stale rule, retries)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated and not self.hostile_unkept and not self.completed_twice


def list_archive(folder: Path) -> dict[str, list[ArchivedFile]]:
    """SOP Instance UID -> the archive files holding it (storescp -uf: one file per reception)."""
    found: dict[str, list[ArchivedFile]] = defaultdict(list)
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "SeriesInstanceUID"]
            )
        except Exception:  # noqa: BLE001 - a half-written file of a killed archive is no delivery
            continue
        found[str(ds.SOPInstanceUID)].append(ArchivedFile(str(ds.SeriesInstanceUID), path.stat().st_mtime))
    return found


def list_quarantine(spool: Path) -> dict[str, str]:
    """Original SOP Instance UID -> reason code, for every instance kept in quarantine."""
    kept: dict[str, str] = {}
    for job_json in (spool / "quarantine").glob("*/job.json"):
        job = json.loads(job_json.read_text())
        code = job.get("reason_code") or "?"
        for path in (job_json.parent / "instances").glob("*.dcm"):
            if path.name == "rejected.dcm":
                try:
                    kept[str(read_file_meta_info(path).MediaStorageSOPInstanceUID)] = code
                except Exception:  # noqa: BLE001 - meta unreadable: counted by reason only
                    kept[f"unreadable:{job_json.parent.name}"] = code
            else:
                kept[path.stem] = code
    return kept


def stage_seconds(spool: Path) -> dict[str, float]:
    """Seconds per pipeline stage summed over every job's last attempt (job.json ``timings``)."""
    totals: Counter = Counter()
    for stage in ("done", "quarantine", "jobs"):
        for job_json in (spool / stage).glob("*/job.json"):
            for name, seconds in json.loads(job_json.read_text()).get("timings", {}).items():
                totals[name] += float(seconds)
    return dict(totals)


def verdict(sends: list[Send], hostile: list[HostileSend], archive: Path, spool: Path, key: bytes,
            quiet_period_s: float) -> Verdict:  # fmt: skip
    archived = list_archive(archive)
    quarantined = list_quarantine(spool)
    result = Verdict()
    expected_out: set[str] = set()
    for send in sends:
        if not send.acknowledged:
            continue
        result.series_sent += 1
        stored_at, complete, in_quarantine = 0.0, True, False
        for sop in sorted(send.acknowledged):
            result.acknowledged += 1
            outs = archived_as(sop, key)
            expected_out.update(outs)
            copies = [c for out in outs for c in archived.get(out, [])]
            if len(copies) == 1:
                result.archived_once += 1
                stored_at = max(stored_at, copies[0].mtime)
            elif len(copies) > 1:
                result.duplicated.append(sop)
            elif sop in quarantined:
                result.quarantined += 1
                result.quarantine_reasons[quarantined[sop]] += 1
                complete, in_quarantine = False, True
            else:
                result.lost.append(sop)
                complete = False
        if complete and len(send.acknowledged) == len(send.sops):
            result.series_delivered += 1
            result.latencies_s.append(stored_at - send.last_success - quiet_period_s)
        elif in_quarantine:
            result.series_quarantined += 1
    for item in hostile:
        kind = (
            "Success"
            if item.success
            else (
                "status " + item.outcome if item.outcome.startswith("0x") else item.outcome.split(" after")[0]
            )
        )
        result.hostile[(item.case, kind)] += 1
        if not item.sop:
            continue
        outs = archived_as(item.sop, key)
        expected_out.update(outs)
        if item.success:
            result.acknowledged += 1
            copies = [c for out in outs for c in archived.get(out, [])]
            if len(copies) == 1:
                result.archived_once += 1
            elif len(copies) > 1:
                result.duplicated.append(item.sop)
            elif item.sop in quarantined:
                result.quarantined += 1
                result.quarantine_reasons[quarantined[item.sop]] += 1
            else:
                result.lost.append(item.sop)
        elif item.outcome.startswith("0x") and item.sop not in quarantined:
            result.hostile_unkept.append(f"{item.case} {item.sop} {item.outcome}")
    for stage in ("done", "quarantine", "jobs"):
        for job_json in (spool / stage).glob("*/job.json"):
            states = [h["state"] for h in json.loads(job_json.read_text())["history"]]
            if states.count("sent") + states.count("quarantined") > 1:
                result.completed_twice.append(job_json.parent.name)
            result.jobs_redispatched += states.count("dispatched") > 1
    result.extra_archive_files = sum(len(v) for k, v in archived.items() if k not in expected_out)
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
