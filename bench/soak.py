"""Soak: `python -m bench.soak [--minutes 30]` (`make soak`) runs the real parts under load and faults.

Redis, one ``pediface gateway``, ``--workers`` ``pediface worker`` processes on the Redis broker and a
dcmtk ``storescp`` archive; four senders (storescu) send fresh copies of the shared series (3D, enhanced,
2D, compressed) one after another, while a fifth sends hostile input (bench/soak_hostile.py). On a
schedule: a worker is killed with SIGKILL while it holds a series (and restarted), the gateway is killed
while a sender is mid-association (and restarted), Redis is killed and restarted empty, and the archive
is stopped for two minutes. Then the senders stop, the pipeline drains, and the archive is listed: every
SOP Instance UID that got Success must be there exactly once, or in quarantine with a reason.
``--write-docs`` puts the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.soak_audit import STAGES, percentile, stage_seconds, verdict
from bench.soak_hostile import HostileSender
from bench.soak_senders import SERIES, Sender, prepare_templates
from bench.soak_stack import SOAK_SECRET, Stack

MID_SERIES = ("processing", "masked", "written", "deidentified")


@dataclass
class Fault:
    name: str
    at_fraction: float
    done_at: float = 0.0
    detail: str = ""


@dataclass
class Soak:
    stack: Stack
    minutes: float
    archive_down_s: float
    senders: list[Sender] = field(default_factory=list)
    hostile: HostileSender | None = None
    faults: list[Fault] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    in_association: dict[str, float] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    max_backlog: int = 6
    alive_at_end: dict[str, bool] = field(default_factory=dict)

    def say(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.log.append(line)
        print(line, flush=True)

    def backlog(self) -> int:
        spool = self.stack.data_dir / "spool"
        return sum(1 for _ in (spool / "jobs").iterdir()) + sum(1 for _ in (spool / "incoming").iterdir())

    # -- the faults ---------------------------------------------------------------------------------

    def kill_worker_mid_series(self, fault: Fault, deadline: float) -> None:
        jobs = self.stack.data_dir / "spool" / "jobs"
        while time.monotonic() < deadline:
            for job_json in jobs.glob("*/job.json"):
                try:
                    state = json.loads(job_json.read_text())["state"]
                except (OSError, ValueError, KeyError):
                    continue
                holder = self.stack.worker_holding(job_json.parent / ".lock") if state in MID_SERIES else None
                if holder:
                    self.stack.kill(holder)
                    self.stack.start(holder)
                    fault.detail = f"{holder} killed holding job {job_json.parent.name} ({state}); restarted"
                    return
            time.sleep(0.2)
        fault.detail = "no worker was mid-series in time: not injected"

    def kill_gateway_mid_association(self, fault: Fault, deadline: float) -> None:
        while time.monotonic() < deadline:
            busy = [name for name, at in list(self.in_association.items()) if time.time() - at < 1.0]
            if busy:
                self.stack.kill("gateway")
                started = time.monotonic()
                self.stack.start("gateway")
                fault.detail = (
                    f"killed while {', '.join(sorted(busy))} mid-association; back in "
                    f"{time.monotonic() - started:.1f} s"
                )
                return
            time.sleep(0.05)
        fault.detail = "no sender was mid-association in time: not injected"

    def kill_redis(self, fault: Fault, deadline: float) -> None:
        queued = self.backlog()
        self.stack.kill("redis")
        self.stack.start("redis")
        fault.detail = f"killed with {queued} series in the spool; restarted empty (no persistence)"

    def stop_archive(self, fault: Fault, deadline: float) -> None:
        self.stack.kill("archive")
        self.say(f"archive stopped for {self.archive_down_s:.0f} s")
        time.sleep(self.archive_down_s)
        self.stack.start("archive")
        fault.detail = f"stopped (SIGKILL) for {self.archive_down_s:.0f} s, then started on the same folder"

    # -- the run ------------------------------------------------------------------------------------

    def run(
        self, max_backlog: int, n_senders: int, hostile_interval_s: float, drain_s: float, kinds: list[str]
    ) -> float:
        self.stack.start_all()
        templates = prepare_templates(self.stack.root, kinds)
        work = self.stack.root / "sending"
        work.mkdir(exist_ok=True)
        for index in range(n_senders):
            sender = Sender(
                f"SENDER{index + 1}",
                lambda: self.stack.port,
                templates,
                work,
                self.stop,
                lambda: self.backlog() < max_backlog,
                seed=index,
                in_association=self.in_association,
            )
            self.senders.append(sender)
        # Mutations of a 2D slice: small, so that the hostile sender never weighs on the load.
        hostile_template = (templates.get("2d") or templates["compressed"])[0]
        self.hostile = HostileSender(
            lambda: self.stack.port, hostile_template, self.stop, hostile_interval_s, stall_wait_s=60
        )
        started = time.monotonic()
        duration = self.minutes * 60
        for thread in [*self.senders, self.hostile]:
            thread.start()
        self.say(f"soak started: {self.minutes} min, {len(self.stack.workers)} workers, {n_senders} senders")
        actions = {
            "worker killed mid-series": self.kill_worker_mid_series,
            "gateway killed mid-association": self.kill_gateway_mid_association,
            "Redis killed, restarted empty": self.kill_redis,
            "archive stopped": self.stop_archive,
        }
        for fault in self.faults:
            wait = started + fault.at_fraction * duration - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            actions[fault.name](fault, time.monotonic() + max(60.0, duration * 0.1))
            fault.done_at = time.monotonic() - started
            self.say(f"fault: {fault.name}: {fault.detail}")
        remaining = started + duration - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        self.stop.set()
        self.say("senders stopping")
        for thread in [*self.senders, self.hostile]:
            thread.join(timeout=600)
        sending_s = time.monotonic() - started
        self.say(f"senders stopped after {sending_s:.0f} s; draining")
        deadline = time.monotonic() + drain_s
        while self.backlog() and time.monotonic() < deadline:
            time.sleep(2)
        self.say(f"drained: {self.backlog()} series left in the spool")
        # Every part still up (or restarted by a fault above): nothing died on its own under the load.
        self.alive_at_end = {name: self.stack.alive(name) for name in self.stack.roles}
        return time.monotonic() - started


def report(soak: Soak, total_s: float, command: str) -> tuple[str, bool]:
    stack = soak.stack
    spool = stack.data_dir / "spool"
    sends = [s for sender in soak.senders for s in sender.sends]
    hostile = soak.hostile.sends if soak.hostile else []
    result = verdict(sends, hostile, stack.archive_dir, spool, SOAK_SECRET.encode(), stack.quiet_period_s)
    stages = stage_seconds(spool)
    stage_total = sum(stages.get(s, 0.0) for s in STAGES) or 1.0
    cpu_total = sum(u.cpu_total_s for u in stack.usage.values()) or 1.0
    hours = total_s / 3600
    kinds: dict[str, int] = {}
    for send in sends:
        kinds[send.kind] = kinds.get(send.kind, 0) + 1
    all_injected = all(f.detail and "not injected" not in f.detail for f in soak.faults)
    met = result.ok and all_injected and not [n for n, up in soak.alive_at_end.items() if not up]
    lines = [
        "**Goal** (issue 15): every instance acknowledged with Success at the archive exactly once or in "
        "quarantine with a reason, 0 lost and 0 duplicated, with all four faults injected and the hostile "
        f"sender running, checked by listing the archive: **{'met' if met else 'NOT met'}**.",
        "",
        f"Command: `{command}`. {len(stack.workers)} workers, quiet period {stack.quiet_period_s:.0f} s, "
        f"senders held back while {soak_backlog_note(soak)}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| instances acknowledged (Success) | {result.acknowledged} |",
        f"| at the archive exactly once | {result.archived_once} |",
        f"| in quarantine with a reason | {result.quarantined} ({_counter(result.quarantine_reasons)}) |",
        f"| **lost** | **{len(result.lost)}** |",
        f"| **duplicated** | **{len(result.duplicated)}** |",
        f"| series sent (by kind) | {result.series_sent} ({_counter(kinds)}) |",
        f"| series delivered complete / quarantined | {result.series_delivered} / "
        f"{result.series_quarantined} |",
        f"| series per hour (delivered, over {total_s / 60:.1f} min incl. drain) | "
        f"{result.series_delivered / hours:.0f} |",
        f"| latency last instance received -> stored at archive, minus quiet period: p50 / p95 | "
        f"{percentile(result.latencies_s, 50):.1f} s / {percentile(result.latencies_s, 95):.1f} s |",
        f"| archive files not from an acknowledged instance | {result.extra_archive_files} |",
        f"| jobs dispatched more than once / **completed more than once** | {result.jobs_redispatched} / "
        f"**{len(result.completed_twice)}** |",
        "",
        "Faults injected:",
        "",
        *[f"- {f.name} at {f.done_at / 60:.1f} min: {f.detail}" for f in soak.faults],
        "",
        "Hostile sender (case: outcome x count); every refused instance kept in quarantine: "
        + ("yes" if not result.hostile_unkept else f"NO ({len(result.hostile_unkept)} missing)"),
        "",
        *[f"- {case}: {kind} x {n}" for (case, kind), n in sorted(result.hostile.items())],
        "",
        "| process | peak RSS (largest process) | peak RSS (all its processes) | CPU s | CPU share "
        "| starts |",
        "|---|---|---|---|---|---|",
        *[
            f"| {name} | {u.peak_rss_mib:.0f} MiB | {u.peak_tree_mib:.0f} MiB | {u.cpu_total_s:.0f} | "
            f"{100 * u.cpu_total_s / cpu_total:.0f} % | {stack.roles[name].starts} |"
            for name, u in stack.usage.items()
        ],
        "",
        "| worker stage | seconds (all jobs) | share |",
        "|---|---|---|",
        *[
            f"| {s} | {stages.get(s, 0.0):.0f} | {100 * stages.get(s, 0.0) / stage_total:.0f} % |"
            for s in STAGES
        ],
    ]
    down = sorted(name for name, alive in soak.alive_at_end.items() if not alive)
    lines += ["", f"Processes down at the end (not restarted by a fault): {', '.join(down) or 'none'}."]
    ok = result.ok and not down and result.acknowledged > 0
    if result.lost or result.duplicated or result.hostile_unkept:
        lines += ["", f"lost: {result.lost[:10]}", f"duplicated: {result.duplicated[:10]}",
                  f"refused but not kept: {result.hostile_unkept[:10]}"]  # fmt: skip
    return "\n".join(lines), ok


def soak_backlog_note(soak: Soak) -> str:
    return f"{soak.max_backlog} or more series were waiting in the spool"


def _counter(counter: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def schedule() -> list[Fault]:
    """The four faults, at the same fractions of the run however long it is."""
    return [
        Fault("worker killed mid-series", 0.15),
        Fault("gateway killed mid-association", 0.35),
        Fault("Redis killed, restarted empty", 0.55),
        Fault("archive stopped", 0.7),
    ]


def run_soak(
    root: Path,
    minutes: float,
    workers: int = 2,
    senders: int = 4,
    quiet_period_s: float = 15,
    archive_down_s: float = 120,
    max_backlog: int = 6,
    hostile_interval_s: float = 20,
    drain_s: float = 900,
    kinds: list[str] | None = None,
    command: str = "",
) -> tuple[str, bool, Soak]:
    """One soak under ``root``; returns the report (markdown), whether nothing was lost or duplicated,
    and the soak itself (its ledgers, faults and stack)."""
    stack = Stack(
        root,
        workers=workers,
        quiet_period_s=quiet_period_s,
        reconcile_interval_s=5,
        extra={
            # A stalled peer is dropped after 20 s; a bomb is refused after 256 MiB of inflated bytes.
            "dicom": {"network_timeout_s": 20, "max_inflated_bytes": 256 << 20},
            # A killed worker's series goes back to the queue after this (Redis's redelivery horizon).
            "broker": {"visibility_timeout_s": 120},
        },
    )
    soak = Soak(stack, minutes, archive_down_s, faults=schedule())
    soak.max_backlog = max_backlog
    try:
        total_s = soak.run(max_backlog, senders, hostile_interval_s, drain_s, kinds or list(SERIES))
    finally:
        stack.stop_all()
    ledger = {
        "sends": [{**vars(s), "acknowledged": sorted(s.acknowledged)} for x in soak.senders for s in x.sends],
        "hostile": [vars(h) for h in (soak.hostile.sends if soak.hostile else [])],
    }
    (root / "ledger.json").write_text(json.dumps(ledger))
    body, ok = report(soak, total_s, command)
    (root / "soak-report.md").write_text(body)
    (root / "soak-log.txt").write_text("\n".join(soak.log))
    return body, ok, soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30, help="how long the senders send (default 30)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--quiet-period", type=float, default=15)
    parser.add_argument("--archive-down", type=float, default=120, help="seconds the archive is stopped")
    parser.add_argument("--max-backlog", type=int, default=6, help="senders wait while this many series wait")
    parser.add_argument("--hostile-interval", type=float, default=20)
    parser.add_argument("--drain", type=float, default=900, help="longest wait for the spool to empty")
    parser.add_argument(
        "--folder", type=Path, default=None, help="keep everything here (default: a temp dir)"
    )
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    root = args.folder or Path(tempfile.mkdtemp(prefix="pediface-soak-"))
    command = ("python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    body, ok, _ = run_soak(
        root, args.minutes, args.workers, args.senders, args.quiet_period, args.archive_down,
        args.max_backlog, args.hostile_interval, args.drain, command=command,
    )  # fmt: skip
    print(body)
    if args.write_docs:
        from bench.report import stamp, write_section

        note = (
            "The machine is shared with other work (2 cores, load from other processes during the run): "
            "throughput and latency are lower bounds of what the code does on a machine of its own."
        )
        write_section("soak", f"## Soak: load and kill -9 (`make soak`)\n\n{stamp()} {note}\n\n{body}")
    print(f"everything is in {root}")
    if args.folder is None and ok:
        shutil.rmtree(root / "archive", ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
