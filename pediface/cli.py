"""The ``pediface`` command.

Each subcommand builds the settings once (``--config`` file, then ``PEDIFACE_*``
environment variables) and passes them down. Heavy modules are imported inside
the subcommands that need them, so ``pediface gateway`` never loads torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from common.logs import get_logger
from common.version import __version__
from config.settings import Settings
from pediface import cli_check, cli_evaluate, cli_offline
from pediface.cli_common import ConfigOption, load, need_worker_extra

app = typer.Typer(
    name="pediface",
    help=(
        "Remove faces and ears from head MRI and de-identify the headers, between PACS and a research "
        "archive.\n\n"
        "A DICOM Storage SCP (pediface gateway) spools what PACS or scanners send; when a series has been "
        "quiet for series.quiet_period_s it is handed to Celery workers (pediface worker) that build a "
        "volume, compute a face mask, blank it in the original pixel data, de-identify the headers "
        "(DICOM PS3.15 Annex E) and send the derived series to the destination. What cannot be processed "
        "goes to quarantine with a reason (pediface quarantine).\n\n"
        "Settings: --config FILE (YAML, see config/pediface.yaml for every option and its default), then "
        "environment variables PEDIFACE_<SECTION>__<OPTION>, e.g. PEDIFACE_DICOM__PORT=104."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
quarantine_app = typer.Typer(
    help="List, inspect and retry series that were not delivered.", no_args_is_help=True
)
app.add_typer(quarantine_app, name="quarantine")

app.command()(cli_offline.deface)
app.command()(cli_check.check)
app.add_typer(cli_offline.model_app, name="model")


def _settings(config: Path | None) -> Settings:
    return load(config)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pediface {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """pediface: a defacing, de-identifying DICOM gateway."""


@app.command()
def gateway(config: ConfigOption = None) -> None:
    """Run the DICOM Storage SCP and the series sealer (no worker).

    Accepts C-ECHO and C-STORE (MR, enhanced MR, CT, secondary capture; every common transfer syntax) on
    dicom.host:dicom.port as dicom.ae_title. Each instance is fsynced into the spool before Success is
    answered. A series quiet for series.quiet_period_s becomes a job, dispatched by name to the workers
    through broker.url. Stops cleanly on SIGINT/SIGTERM.
    """
    from gateway.server import Gateway

    settings = _settings(config)
    gw = Gateway(settings)
    gw.start()
    _wait_for_signal()
    gw.stop()


@app.command()
def worker(config: ConfigOption = None) -> None:
    """Run a Celery worker that defaces, de-identifies and delivers series.

    Takes one job at a time per process (worker.concurrency processes) and acknowledges it only when it
    is delivered or quarantined, so a worker that dies hands its series to another. With broker.url set
    (redis://...) start as many workers on as many machines as needed; they must share data_dir.
    """
    need_worker_extra("worker")
    settings = _settings(config)
    from worker.app import configure, runner
    from worker.deface import check_masker

    if settings.worker.nice:
        # Before the pool forks: every process that defaces yields the CPU to the gateway.
        os.nice(settings.worker.nice)

    celery_app = configure(settings)
    try:
        # Fail at start, loudly, rather than on the first series: bad key, options or model.
        # The pool processes build the masker themselves (see check_masker).
        runner()
        check_masker(settings)
        if settings.deface.face_check == "on":
            from worker.facecheck import verify_weights

            verify_weights()  # the face check's detector: shipped, checksummed
    except Exception as exc:  # noqa: BLE001
        typer.echo(f"pediface worker: cannot start: {exc}", err=True)
        raise typer.Exit(2) from exc
    argv = [
        "worker",
        f"--concurrency={settings.worker.concurrency}",
        f"--queues={settings.worker.queue}",
        f"--loglevel={settings.log_level}",
        # One node name per process: several workers on one host (systemd instances) stay apart.
        f"--hostname=pediface-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    celery_app.worker_main(argv)


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run gateway and worker together on this machine (the embedded default).

    With no broker.url this needs no Redis: the broker is a folder under data_dir. The worker runs as a
    child process, so the gateway stays light and a crashing series cannot take the SCP down.
    """
    need_worker_extra("run")
    from gateway.server import Gateway

    settings = _settings(config)
    with _worker_process() as worker_proc:
        gw = Gateway(settings)
        gw.start()
        _wait_for_signal(worker_proc)
        gw.stop()
    if worker_proc.returncode not in (0, -signal.SIGTERM):
        # The worker died on its own: stop too, so that a supervisor restarts both.
        typer.echo(f"pediface run: the worker exited with status {worker_proc.returncode}", err=True)
        raise typer.Exit(1)


@app.command()
def train(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="Where to write the model folder.")],
    work_dir: Annotated[Path, typer.Option(help="Scratch space for nnU-Net's data.")] = Path(
        "/tmp/pediface-train"
    ),
    cases: Annotated[int, typer.Option(help="Synthetic training cases to generate.")] = 120,
    iterations: Annotated[int, typer.Option(help="Training iterations.")] = 500,
    budget_s: Annotated[float | None, typer.Option(help="Stop training after this many seconds.")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed of the generator.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in work_dir.")] = False,
    negatives: Annotated[
        float, typer.Option(help="Share of cases that are skull-stripped brains labelled all background.")
    ] = 0.15,
    init_from: Annotated[
        Path | None, typer.Option(help="Start from this checkpoint's network weights (fine-tuning).")
    ] = None,
) -> None:
    """Train the nnU-Net face-and-ear model from synthetic heads (needs ../shared/data).

    Registers the two MIT face-mask atlases to the real heads to make teacher labels, synthesises training
    images with random contrast, resolution, head size and position, trains a small nnU-Net v2 configuration
    on the CPU and writes a model folder (dataset.json, plans.json, fold_0/checkpoint_final.pth, SHA256SUMS)
    to MODEL_DIR. See models/nnunet-face/MODEL_CARD.md for what the shipped model was trained with.
    """
    need_worker_extra("train")
    from training.train import train_model

    written = train_model(
        model_dir,
        work_dir=work_dir,
        n_cases=cases,
        iterations=iterations,
        budget_s=budget_s,
        threads=threads,
        seed=seed,
        resume=resume,
        negatives=negatives,
        init_from=init_from,
    )
    typer.echo(str(written))


@app.command()
def demo(
    config: ConfigOption = None,
    timeout_s: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
    input_folder: Annotated[
        Path | None, typer.Option("--input", help="Send this folder's series instead (one series).")
    ] = None,
) -> None:
    """Send a real head MRI through an embedded gateway and worker, and show the result.

    Uses the UIH 3D T1 from ../shared/data/dicom when present, else a small series made from the shipped
    template head. Prints where the defaced series, a before/after picture and the log were written;
    everything else (Celery's banner, the logs at debug level, library warnings) goes to that log,
    <data_dir>/logs/demo-<time>.log.
    """
    need_worker_extra("demo")
    from pediface.demo import run_demo

    settings = _settings(config)
    code = run_demo(settings, _worker_process, timeout_s, input_folder)
    raise typer.Exit(code)


@quarantine_app.command("list")
def quarantine_list(config: ConfigOption = None) -> None:
    """One line per quarantined job: id, when, reason code, instances, reason."""
    from spool.store import Spool

    settings = _settings(config)
    spool = Spool(settings.data_dir)
    rows = list(spool.manifests(spool.quarantine_dir))
    if not rows:
        typer.echo("quarantine is empty")
    for m in rows:
        when = m.history[-1].at.strftime("%Y-%m-%d %H:%M:%S") if m.history else ""
        typer.echo(f"{m.job_id}  {when}  {m.reason_code or '-':<22} {m.n_instances:>5}  {m.reason}")


@quarantine_app.command("show")
def quarantine_show(job_id: str, config: ConfigOption = None) -> None:
    """Print a quarantined job's manifest (state history, attempts, reason) as JSON."""
    from spool.store import Spool

    settings = _settings(config)
    try:
        typer.echo(Spool(settings.data_dir).load(job_id).model_dump_json(indent=2))
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"pediface: {exc}", err=True)
        raise typer.Exit(2) from exc


@quarantine_app.command("retry")
def quarantine_retry(job_id: str, config: ConfigOption = None) -> None:
    """Move a quarantined job back to the queue (after fixing its cause) and dispatch it."""
    from spool.broker import dispatch, make_app
    from spool.manifest import JobState
    from spool.store import Spool

    settings = _settings(config)
    spool = Spool(settings.data_dir)
    try:
        manifest = spool.retry(job_id)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"pediface: {exc}", err=True)
        raise typer.Exit(2) from exc
    # If the broker is down the job stays sealed and the gateway dispatches it on its next pass.
    try:
        dispatch(make_app(settings, "pediface-cli"), job_id)
        spool.save(manifest.to(JobState.dispatched, "retry dispatched"))
        typer.echo(f"{job_id} dispatched")
    except Exception as exc:  # noqa: BLE001
        typer.echo(f"{job_id} queued; the gateway will dispatch it ({exc})")


@quarantine_app.command("purge")
def quarantine_purge(
    job_ids: Annotated[list[str], typer.Argument(metavar="JOB...", help="Quarantined job ids.")],
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete (the files are gone for good).")] = False,
) -> None:
    """Delete quarantined jobs and their files, after they were dealt with."""
    from spool.store import Spool

    settings = _settings(config)
    if not yes:
        typer.echo("pediface: purge deletes the received files for good; add --yes to confirm", err=True)
        raise typer.Exit(2)
    spool = Spool(settings.data_dir)
    status = 0
    for job_id in job_ids:
        try:
            spool.purge(job_id)
            get_logger("pediface").info("job_purged", job=job_id)
            typer.echo(f"{job_id} purged")
        except FileNotFoundError as exc:
            typer.echo(f"pediface: {exc}", err=True)
            status = 2
    raise typer.Exit(status)


@app.command()
def status(config: ConfigOption = None) -> None:
    """Print queue depth, open series, jobs by state and the most recent failures as a table."""
    from spool.report import status_table

    settings = _settings(config)
    typer.echo(status_table(settings), nl=False)


@app.command("config")
def show_config(
    config: ConfigOption = None,
    defaults: Annotated[
        bool, typer.Option("--defaults", help="Print every option with its default and description instead.")
    ] = False,
) -> None:
    """Print the effective settings as YAML (secrets masked)."""
    import yaml

    from config.documented import documented_yaml

    if defaults:
        typer.echo(documented_yaml(), nl=False)
        return
    settings = _settings(config)
    typer.echo(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))


app.command()(cli_evaluate.evaluate)


def _wait_for_signal(child: subprocess.Popen | None = None) -> None:
    """Block until SIGTERM/SIGINT, or until ``child`` exits."""
    stop = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop and (child is None or child.poll() is None):
        time.sleep(0.2)


class _worker_process:
    """Context manager: a ``pediface worker`` child process with this process's settings.

    ``log_file``: the child's output (Celery's banner, its logs at debug level, library warnings) goes
    there instead of this process's stderr, for the quiet commands (``pediface demo``).
    """

    def __init__(self, log_file: Path | None = None) -> None:
        self.log_file = log_file

    def __enter__(self) -> subprocess.Popen:
        argv = [sys.executable, "-m", "pediface", "worker"]
        if self.log_file is None:
            # The worker's banner and logs go to stderr: stdout stays for this command's own answer.
            self.proc = subprocess.Popen(argv, stdout=sys.stderr)
            return self.proc
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            env = {**os.environ, "PEDIFACE_LOG_LEVEL": "DEBUG"}
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self.proc

    def __exit__(self, *exc: object) -> None:
        log = get_logger("pediface")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log.warning("worker_killed")
                self.proc.kill()
                self.proc.wait()
