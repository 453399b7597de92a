"""The job state machine, one step at a time, on a real series in a real spool with the shipped model.

Each step of :mod:`worker.steps` is driven on its own and its effect checked; then the runner is
checked to walk the states in order and to stop at the first step that refuses the series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from common.errors import InputError, MaskingError, PermanentError
from config.settings import load_settings
from spool.manifest import JobState
from tests.conftest import free_port, spool_series
from worker import steps
from worker.jobs import STEPS, JobRunner
from worker.types import FaceMask, Volume


def _settings(tmp_path: Path, **overrides: object):  # noqa: ANN202 - config.settings.Settings
    return load_settings(
        data_dir=tmp_path / "data",
        metrics={"port": 0},
        deid={"secret": "a test key that is long enough"},
        **overrides,
    )


@pytest.fixture
def runner(tmp_path: Path, shipped_masker) -> JobRunner:  # noqa: ANN001
    return JobRunner(_settings(tmp_path), lambda: shipped_masker)


def _job(runner: JobRunner, files: list[Path]) -> steps.Job:
    job_id = spool_series(runner.settings.data_dir, files)
    manifest = runner.spool.load(job_id)
    return steps.Job(manifest, steps.destinations_of(runner.settings, manifest))


def test_mask_reads_the_instances_and_predicts_a_face_per_stack(
    runner: JobRunner, small_series: list[Path]
) -> None:
    job = _job(runner, small_series)
    steps.mask(runner.context, job)
    assert len(job.instances) == len(small_series)
    assert job.masked is not None and len(job.masked.stacks) == len(job.masked.masks) == 1
    assert job.masked.masks[0].labels.shape == job.masked.volumes[0].shape
    assert job.masked.masks[0].blank(include_ears=False).sum() > 1000, "a face mask of a real head"
    assert {"read", "volume", "mask"} <= set(job.timings)
    assert job.pixels is None, "mask blanks nothing"


def test_write_blanks_the_mask_and_nothing_else_in_the_original_pixels(
    runner: JobRunner, small_series: list[Path]
) -> None:
    job = _job(runner, small_series)
    steps.mask(runner.context, job)
    before = {i: ds.pixel_array.copy() for i, ds in enumerate(job.instances)}
    steps.write(runner.context, job)
    assert job.pixels is not None and set(job.pixels.written) == set(range(len(small_series)))
    part = job.pixels.parts[0]
    changed = 0
    for z, source in enumerate(part.volume.sources):
        after = job.pixels.written[source.instance_index].pixel_array
        original = before[source.instance_index]
        # The volume's slice z is this instance's frame: blanked voxels are the background there,
        # every other voxel keeps its stored value bit for bit.
        inside = part.blank[z]
        assert (after[~inside] == original[~inside]).all()
        assert (after[inside] == part.background).all()
        changed += int((after != original).sum())
    assert changed > 0, "the face was blanked"


def test_write_refuses_an_empty_mask(runner: JobRunner, small_series: list[Path]) -> None:
    job = _job(runner, small_series)
    steps.mask(runner.context, job)
    empty = FaceMask(labels=np.zeros_like(job.masked.masks[0].labels), masker="test")
    job.masked = type(job.masked)(
        job.masked.stacks, job.masked.volumes, (empty,), job.masked.filtered, "test", job.masked.timings
    )
    with pytest.raises(MaskingError, match="empty: nothing would be removed"):
        steps.write(runner.context, job)


def test_deidentify_writes_every_destination_whole(tmp_path: Path, shipped_masker, small_series) -> None:  # noqa: ANN001
    settings = _settings(tmp_path, destinations=[{"name": "second"}])
    runner = JobRunner(settings, lambda: shipped_masker)
    job = _job(runner, small_series)
    steps.mask(runner.context, job)
    steps.write(runner.context, job)
    steps.deidentify(runner.context, job)
    out = runner.spool.output_dir(job.id)
    assert (out / steps.COMPLETE).read_text() == f"{len(small_series)}\n"
    assert not out.with_name("out.partial").exists()
    assert set(job.outputs) == {"archive", "second"}
    for name in ("archive", "second"):
        files = sorted((out / name).glob("*.dcm"))
        assert files == job.outputs[name] and len(files) == len(small_series)
        ds = pydicom.dcmread(files[0])
        assert "SAMPLE" not in str(ds.PatientName) and ds.PatientIdentityRemoved == "YES"
        assert ds.ImageType[0] == "DERIVED"
    assert (runner.spool.jobs / job.id / "qc.png").stat().st_size > 0
    assert job.manifest.n_filtered == 0 and {"deid", "qc", "write"} <= set(job.manifest.timings)
    # A later attempt reuses the complete output instead of defacing again.
    again = steps.Job(job.manifest, job.destinations)
    assert steps.outputs_complete(runner.context, again) and again.outputs == job.outputs


def test_send_delivers_and_keeps_a_ledger_and_reports_an_unreachable_archive(
    tmp_path: Path, shipped_masker, small_series: list[Path]
) -> None:  # noqa: ANN001
    closed = free_port()
    settings = _settings(
        tmp_path,
        destinations=[{"name": "down", "kind": "dicom", "ae_title": "DOWN", "port": closed, "timeout_s": 2}],
    )
    runner = JobRunner(settings, lambda: shipped_masker)
    job = _job(runner, small_series)
    for _, step in STEPS:
        step(runner.context, job)
    failed = steps.send(runner.context, job)
    assert set(failed) == {"down"}, "the unreachable archive is reported, not raised"
    archive = sorted((settings.data_dir / "archive").rglob("*.dcm"))
    assert len(archive) == len(small_series)
    ledger = runner.spool.sent_ledger(job.id, "archive")
    assert ledger == {p.stem for p in job.outputs["archive"]}
    deliveries = job.manifest.deliveries
    assert deliveries["archive"].state == "sent" and deliveries["archive"].n_sent == len(small_series)
    assert deliveries["down"].state == "failed" and deliveries["down"].failures == 1
    assert runner.spool.load(job.id).deliveries["archive"].state == "sent", "saved after each destination"


def test_the_runner_walks_the_states_in_order(runner: JobRunner, small_series: list[Path]) -> None:
    job_id = spool_series(runner.settings.data_dir, small_series)
    outcome = runner.run(job_id)
    assert outcome.state == "sent", outcome
    states = [change.state for change in runner.spool.load(job_id).history]
    assert states == [
        JobState.sealed,
        JobState.dispatched,  # taken straight from the spool: the worker records the dispatch
        JobState.processing,
        JobState.masked,
        JobState.written,
        JobState.checked,
        JobState.deidentified,
        JobState.sent,
    ]


class _RefusingMasker:
    name = "refusing"

    def predict(self, volume: Volume) -> FaceMask:
        raise MaskingError("no trustworthy face here (test masker)", code="mask.test")


def test_a_refusing_step_quarantines_with_its_reason_and_stops_there(
    tmp_path: Path, small_series: list[Path]
) -> None:
    runner = JobRunner(_settings(tmp_path), _RefusingMasker)
    job_id = spool_series(runner.settings.data_dir, small_series)
    outcome = runner.run(job_id)
    assert outcome.state == "quarantined"
    manifest = runner.spool.load(job_id)
    assert manifest.state == JobState.quarantined
    assert manifest.reason == "no trustworthy face here (test masker)" and manifest.reason_code == "mask.test"
    assert [c.state for c in manifest.history][-2:] == [JobState.processing, JobState.quarantined]
    assert not (runner.settings.data_dir / "archive").exists() or not any(
        (runner.settings.data_dir / "archive").rglob("*.dcm")
    ), "nothing is sent"


def test_a_destination_unknown_to_the_worker_is_a_permanent_refusal(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    from spool.manifest import JobManifest

    manifest = JobManifest(
        job_id="x", series_key="k", calling_ae="PACS", n_instances=1, destinations=["gone"]
    )
    with pytest.raises(PermanentError, match="does not know") as caught:
        steps.destinations_of(settings, manifest)
    assert caught.value.code == "config.destination"
    assert not isinstance(caught.value, InputError)
