"""The face check: dlib's CNN face detector on renders of a head, and the job step that fails closed.

Real parts throughout: the shipped detector weights, real series in a real spool, the real maskers
(the shipped template masker, and a copy whose face region is cut to its upper half: a broken
masker that leaves the nose tip, mouth and chin).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.errors import MaskingError
from config.settings import load_settings
from spool.manifest import JobState
from tests.conftest import spool_series
from worker import steps
from worker.deface import build_masker
from worker.facecheck import DETECTOR_DIR, WEIGHTS, FaceCheck, verify_weights
from worker.jobs import JobRunner
from worker.types import Volume
from worker.volume.pixels import build_volume
from worker.volume.read import read_instances

REASON = re.compile(r"^face still detectable after defacing: view (front|left45|right45), score \d\.\d\d ")


@pytest.fixture(scope="module")
def face_check() -> FaceCheck:
    return FaceCheck()


def _settings(tmp_path: Path, **deface: object):  # noqa: ANN202 - config.settings.Settings
    return load_settings(
        data_dir=tmp_path / "data",
        metrics={"port": 0},
        deid={"secret": "a test key that is long enough"},
        deface={"masker": "template", **deface},
    )


def _job(runner: JobRunner, files: list[Path]) -> steps.Job:
    manifest = runner.spool.load(spool_series(runner.settings.data_dir, files))
    return steps.Job(manifest, steps.destinations_of(runner.settings, manifest))


def test_the_shipped_weights_are_small_and_checked(tmp_path: Path) -> None:
    weights = verify_weights()
    assert weights == DETECTOR_DIR / WEIGHTS and weights.stat().st_size < 1_000_000
    tampered = tmp_path / "detector"
    shutil.copytree(DETECTOR_DIR, tampered)
    with (tampered / WEIGHTS).open("r+b") as file:
        file.seek(1000)
        file.write(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="do not match SHA256SUMS"):
        FaceCheck(model_dir=tampered).detector  # noqa: B018 - loading the detector checks the weights


def test_a_face_is_found_before_defacing_and_not_after_the_shipped_masker(
    face_check: FaceCheck,
    small_series: list[Path],
    shipped_masker,  # noqa: ANN001
) -> None:
    volume = build_volume(read_instances(small_series))
    before = face_check.check(volume)
    assert before.face_found and before.best is not None and before.best.score >= 0.5, before.describe()
    assert before.views == ("front", "left45", "right45")
    blank = shipped_masker.predict(volume).blank(include_ears=True)
    after = Volume(
        np.where(blank, volume.array.min(), volume.array), volume.spacing, volume.origin, volume.direction
    )
    result = face_check.check(after)
    assert not result.face_found, result.describe()
    assert result.describe().startswith("no face in 3 views")


def test_the_check_step_quarantines_a_half_defaced_series_and_sends_nothing(
    tmp_path: Path, small_series: list[Path], upper_face_masker: Path
) -> None:
    settings = _settings(tmp_path, model_dir=str(upper_face_masker))
    runner = JobRunner(settings, lambda: build_masker(settings))
    job_id = spool_series(settings.data_dir, small_series)
    outcome = runner.run(job_id)
    assert outcome.state == "quarantined"
    manifest = runner.spool.load(job_id)
    assert manifest.reason_code == "mask.face_detected" and REASON.match(manifest.reason or ""), (
        manifest.reason
    )
    assert [c.state for c in manifest.history][-3:] == [
        JobState.masked,
        JobState.written,
        JobState.quarantined,
    ]
    assert manifest.face_check and manifest.face_check[0]["face_found"] is True
    folder = runner.spool.quarantine_dir / job_id
    assert (folder / "qc.png").stat().st_size > 10_000 and (folder / "facecheck.png").stat().st_size > 10_000
    assert not (folder / "out").exists(), "nothing de-identified"
    assert not any((settings.data_dir / "archive").rglob("*.dcm")), "nothing sent"


def test_the_check_step_passes_a_defaced_series_and_says_what_it_saw(
    tmp_path: Path,
    small_series: list[Path],
    shipped_masker,  # noqa: ANN001
) -> None:
    settings = _settings(tmp_path, masker="nnunet")
    runner = JobRunner(settings, lambda: shipped_masker)
    job = _job(runner, small_series)
    steps.mask(runner.context, job)
    steps.write(runner.context, job)
    steps.check(runner.context, job)
    assert "no face in 3 views" in job.notes[JobState.checked]
    record = job.manifest.face_check[0]
    assert record["face_found"] is False and record["threshold"] == settings.deface.face_check_threshold
    assert job.timings["face_check"] > 0


@pytest.fixture(scope="module")
def half_defaced(
    tmp_path_factory: pytest.TempPathFactory, small_series: list[Path], upper_face_masker: Path
) -> tuple[JobRunner, steps.Job]:
    """A job of the small series masked and blanked by the broken masker, not yet checked."""
    settings = _settings(tmp_path_factory.mktemp("half"), model_dir=str(upper_face_masker))
    runner = JobRunner(settings, lambda: build_masker(settings))
    job = _job(runner, small_series)
    steps.mask(runner.context, job)
    steps.write(runner.context, job)
    return runner, job


def _context(runner: JobRunner, **deface: object) -> steps.JobContext:
    """The runner's context with other deface settings (and a face check built for them)."""
    settings = runner.settings
    changed = settings.model_copy(update={"deface": settings.deface.model_copy(update=deface)})
    return replace(runner.context, settings=changed)


def test_with_the_check_off_a_half_defaced_series_passes_the_step(half_defaced) -> None:  # noqa: ANN001
    """The switch works both ways: the same broken mask is not caught when the check is off."""
    runner, job = half_defaced
    steps.check(_context(runner, face_check="off"), job)
    assert job.notes[JobState.checked] == "face check off (deface.face_check)"


def test_the_threshold_decides(half_defaced) -> None:  # noqa: ANN001
    runner, job = half_defaced
    steps.check(_context(runner, face_check_threshold=2.0), job)  # no score reaches 2: passes
    assert "no face in 3 views" in job.notes[JobState.checked]
    with pytest.raises(MaskingError, match="face still detectable after defacing") as caught:
        steps.check(runner.context, job)
    assert caught.value.code == "mask.face_detected"


def test_face_check_reads_on_and_off_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "pediface.yaml"
    path.write_text("deface:\n  face_check: off\n")
    assert load_settings(path).deface.face_check == "off"
    path.write_text("deface:\n  face_check: on\n")
    assert load_settings(path).deface.face_check == "on"
    path.write_text("deface:\n  face_check: maybe\n")
    with pytest.raises(ValueError, match="face_check"):
        load_settings(path)


def test_a_slab_without_a_face_is_evidence_of_no_face_in_the_field_of_view(face_check: FaceCheck) -> None:
    from tests.unit.test_no_face import GE, _volume
    from worker.deface.evidence import no_face_evidence

    refusal = MaskingError("no face", code="mask.no_face", details={"face_ml": 15.0, "min_face_ml": 50.0})
    evidence, why = no_face_evidence(_volume(GE, 15), refusal, "ax", face_check=face_check)
    assert evidence is not None, why
    assert "face check: no face in field of view before defacing (no face in 3 views" in evidence.summary()


def test_the_documented_default_threshold_is_the_measured_one() -> None:
    from config.settings import Settings
    from worker.facecheck import FACE_SCORE_THRESHOLD

    assert Settings.model_fields["deface"].default_factory().face_check_threshold == FACE_SCORE_THRESHOLD
    assert (
        f"Threshold: **{FACE_SCORE_THRESHOLD}**"
        in (Path(__file__).parents[2] / "docs" / "defacing.md").read_text()
    )


def test_the_fast_renders_are_the_evaluations_renders() -> None:
    """One OpenCV warp per axial plane gives the picture of the evaluation's 3D resampling."""
    from batch.images import load, stored, to_volume
    from tests.conftest import TEMPLATE_HEAD
    from worker.render import face_check_renders, lps_array, render_surface, surface_threshold

    image = load(TEMPLATE_HEAD)
    volume = to_volume(image, stored(image))
    array = lps_array(volume, 2.0)
    fast = face_check_renders(volume, views={"left45": 45.0, "right45": -45.0})
    for view, azimuth in (("left45", 45.0), ("right45", -45.0)):
        reference = render_surface(array, 2.0, azimuth, threshold=surface_threshold(array))
        assert fast[view].shape == reference.shape
        assert np.abs(fast[view].astype(int) - reference.astype(int)).mean() < 2.0
        assert (fast[view] > 0).mean() > 0.2, "a head is drawn"


def test_a_checked_job_shows_as_processing_and_in_flight() -> None:
    from spool.manifest import IN_FLIGHT
    from spool.report import Phase, phase_of

    assert phase_of(JobState.checked) == Phase.processing and JobState.checked in IN_FLIGHT
