"""A whole MR session through the gateway into a research archive (Orthanc); a faceless run through the CLI.

The session, sent as a PACS forwarding rule sends it: a 2D T1 and an enhanced 3D T1 with faces, a GE
fMRI run without one, a localiser and a non-image object (Philips Raw Data), with the research
profile, deface.no_face_in_fov: deidentify and the mask SEG. Every series ends with a definite,
logged outcome: the T1s defaced and sent with their SEGs, the fMRI run sent de-identified with "no
face in field of view" and its evidence in its record, the localiser quarantined with its reason,
the raw data refused at association (the gateway accepts image storage SOP classes only).
Orthanc accepts and indexes every instance; what it holds gives dciodvfy no new error, and
dcm2niix on the fMRI run gives the input's grid, slice timing and phase encoding.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from evaluation.bids import PHYSICS, compare, convert, descriptors_with_phi
from evaluation.conformance import dciodvfy_errors, new_errors
from tests.conftest import DICOM, Processes, need_shared, need_tool, wait_for_port, wait_until
from tests.e2e.test_faults import config, jobs
from tests.e2e.test_orthanc import orthanc, rest

pytestmark = pytest.mark.e2e

T1 = DICOM / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFS"
XA = DICOM / "dcm_qa_xa30" / "siemens_xa30_t1w_tfl3d_sag_enhanced"
FMRI = DICOM / "dcm_qa_nih" / "ge_epi_fmri_ax_mr0004"
RAW = DICOM / "dcm_qa_cs_dl" / "philips_t1w_tse_ax_enhanced_PHANTOM" / "0001_Raw.dcm"
RESEARCH = {
    "deid": {"profile": "research"},
    "deface": {"no_face_in_fov": "deidentify", "send_mask_seg": True},
}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".txt" and p.name != "LICENSE")


def _localiser(tmp: Path) -> Path:
    """A localiser series of one image (a slice of the T1 marked as such, in a series of its own)."""
    ds = pydicom.dcmread(_files(T1)[17])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = 1
    path = tmp / "localiser.dcm"
    ds.save_as(path)
    return path


def _fmri_parity(inputs: list[Path], outputs: list[Path], work: Path) -> None:
    """dcm2niix on the fMRI run's input and output: same grid, analysis fields, sidecar but the documented."""
    for name, files in (("in", inputs), ("out", outputs)):
        (work / name).mkdir(parents=True)
        for path in files:
            shutil.copy(path, work / name / path.name)
    before, after = convert(work / "in", work / "nii-in"), convert(work / "out", work / "nii-out")
    parity = compare("fmri", before, after)
    first = pydicom.dcmread(inputs[0], stop_before_pixels=True)
    assert not parity.unexpected(descriptors_with_phi(before, first)), parity.unexpected()
    physics = {key for output in before.values() for key in PHYSICS if key in output.sidecar}
    assert {"SliceTiming", "PhaseEncodingDirection", "EffectiveEchoSpacing"} <= physics
    assert not physics & (parity.dropped | set(parity.changed))


@pytest.mark.slow(seconds=75)
def test_a_whole_session_ends_series_by_series_with_a_logged_outcome(
    tmp_path: Path, processes: Processes
) -> None:
    need_shared(DICOM)
    archive_port, archive = orthanc(processes, tmp_path, "archive", "ARCHIVE")
    env, data_dir, port = config(
        tmp_path, destination={"kind": "dicom", "ae_title": "ARCHIVE", "port": archive_port}, **RESEARCH
    )
    run = processes.pediface("run", "run", env=env)
    wait_for_port(port, proc=run)
    session = {"t1": _files(T1), "xa": _files(XA), "fmri": _files(FMRI), "localiser": [_localiser(tmp_path)]}
    for files in [*session.values(), [RAW]]:
        # -R: propose the SOP classes of the files (dcmtk's default list has no Raw Data Storage)
        argv = [need_tool("storescu"), "-R", "-aet", "PACS", "-aec", "PEDIFACE", "127.0.0.1", str(port)]
        sent = subprocess.run([*argv, *map(str, files)], capture_output=True, text=True, timeout=300)
        if files == [RAW]:  # a non-image object: refused at the network edge, so never a job
            assert sent.returncode != 0 and "No Acceptable Presentation Contexts" in sent.stderr
        else:
            assert sent.returncode == 0, sent.stderr

    def finished() -> list[dict]:
        assert run.poll() is None, processes.log("run")[-3000:]
        found = jobs(data_dir)
        final = [j for j in found if j["state"] in ("sent", "quarantined")]
        return found if len(found) == len(session) and len(final) == len(found) else []

    records = wait_until(finished, 900, "every series of the session to end")
    sent = {r["n_instances"]: r for r in records if r["state"] == "sent"}
    assert sorted(sent) == [1, len(session["t1"]), len(session["fmri"])]  # the enhanced T1 is one instance
    t1, fmri = sent[len(session["t1"])], sent[len(session["fmri"])]
    (localiser,) = [r for r in records if r["state"] == "quarantined"]
    assert localiser["reason_code"] == "input.no_stack" and "1 localizer" in localiser["reason"]
    assert not t1["no_face_in_fov"] and not sent[1]["no_face_in_fov"] and fmri["no_face_in_fov"]
    evidence = fmri["no_face_in_fov"][0]
    assert evidence["face_ml"] < evidence["min_face_ml"] and not evidence["field_of_view"]["reaches_face"]
    assert any("no face in field of view" in change["note"] for change in fmri["history"])
    # The face check saw no face on the run as received, and found none left on the defaced T1.
    assert any("no face in field of view before defacing" in change["note"] for change in fmri["history"])
    assert t1["face_check"] and t1["face_check"][0]["face_found"] is False
    audit = [json.loads(line) for line in (data_dir / "audit.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "series_processed" and e.get("no_face_in_fov") for e in audit)
    assert sum(e.get("event") == "series_quarantined" for e in audit) == 1

    # Orthanc accepts and indexes all of it: three series and two mask SEGs (none for the fMRI run).
    expected = len(session["t1"]) + len(session["xa"]) + len(session["fmri"]) + 2
    stats = wait_until(
        lambda: (s := rest(archive, "/statistics"))["CountInstances"] == expected and s, 120, "Orthanc"
    )
    assert stats["CountSeries"] == 5
    by_modality: dict[str, list[str]] = {}
    for series in rest(archive, "/series?expand"):
        by_modality.setdefault(series["MainDicomTags"].get("Modality", ""), []).append(series["ID"])
    assert len(by_modality["SEG"]) == 2 and len(by_modality["MR"]) == 3

    # What the archive holds passes dciodvfy with no new error, and dcm2niix keeps the fMRI physics.
    stored = tmp_path / "stored"
    stored.mkdir()
    inputs = {path.name: path for files in session.values() for path in files}
    before = set().union(*(dciodvfy_errors(p.read_bytes()) or set() for p in inputs.values()))
    fmri_out = []
    for series in by_modality["MR"] + by_modality["SEG"]:
        instances = rest(archive, f"/series/{series}/instances")
        for n, instance in enumerate(instances):
            data = rest(archive, f"/instances/{instance['ID']}/file")
            target = stored / f"{series[:8]}-{n:04d}.dcm"
            target.write_bytes(data)  # type: ignore[arg-type]
            if len(instances) == len(session["fmri"]):
                fmri_out.append(target)
            if n in (0, len(instances) - 1):
                new, _ = new_errors(before, dciodvfy_errors(data) or set())  # type: ignore[arg-type]
                assert not new, (series, new)
    _fmri_parity(session["fmri"], fmri_out, tmp_path / "parity")


def test_the_cli_sends_a_run_without_a_face_de_identified_with_its_physics(tmp_path: Path) -> None:
    need_shared(FMRI)
    settings = tmp_path / "pediface.yaml"
    settings.write_text(json.dumps({"data_dir": str(tmp_path / "data"), **RESEARCH}))
    out, series = tmp_path / "out", tmp_path / "series"
    series.mkdir()
    for path in _files(FMRI):  # the series' files only (its folder also holds a README)
        shutil.copy(path, series / path.name)
    result = subprocess.run(
        [sys.executable, "-m", "pediface", "deface", "--no-qc", str(series), str(out)],
        env={**__import__("os").environ, "PEDIFACE_CONFIG": str(settings)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # One folder per de-identified patient/study/series under OUTPUT (never the input's names).
    folders = {p.parent for p in out.rglob("*.dcm")}
    assert len(folders) == 1 and len((next(iter(folders))).relative_to(out).parts) == 3, folders
    written = sorted(next(iter(folders)).glob("*.dcm"))
    assert len(written) == len(_files(FMRI))
    assert all(pydicom.dcmread(p, stop_before_pixels=True).ImageType[0] == "ORIGINAL" for p in written[:3])
    _fmri_parity(_files(FMRI), written, tmp_path / "parity")
