"""Discovery of what a researcher's folder holds, on real vendor series and heads from ../shared/data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from batch.discover import DicomSeries, NiftiItem, discover
from tests.conftest import DICOM, HEADS, need_shared

HFS = DICOM / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFS"
HFP = DICOM / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFP"


def _copy_series(source: Path, target: Path, *, limit: int | None = None, **changes: object) -> list[Path]:
    """Copy a shared series' files, optionally changing header values (new UIDs for another series)."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(source.iterdir())[:limit]:
        if not changes:
            written.append(Path(shutil.copy(path, target / path.name)))
            continue
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(target / path.name)
        written.append(target / path.name)
    return written


def report_instance(study_uid: str, series_uid: str) -> Dataset:
    """A minimal Basic Text SR instance (a radiology report object, no pixels)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = "crlab", "HFS"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20220407", "120000", "1", ""
    ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    ds.ValueType, ds.ContentDate, ds.ContentTime = "CONTAINER", "20220407", "120000"
    ds.CompletionFlag, ds.VerificationFlag, ds.ContinuityOfContent = "COMPLETE", "UNVERIFIED", "SEPARATE"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "11528-7", "LN", "Radiology Report"
    ds.ConceptNameCodeSequence = [name]
    return ds


def test_a_study_with_series_at_any_depth_and_mixed_in_one_folder(tmp_path: Path) -> None:
    need_shared(HFS)
    study = tmp_path / "STUDY"
    first = pydicom.dcmread(next(HFS.iterdir()), stop_before_pixels=True)
    _copy_series(HFS, study / "ser1")
    # the prone series, made part of the same study, two folders deeper
    _copy_series(HFP, study / "a" / "b" / "ser2", StudyInstanceUID=first.StudyInstanceUID)
    # two more series mixed in one folder: new Series Instance UIDs and numbers
    mixed = study / "mixed"
    mixed.mkdir()
    for number in (7, 8):
        series_uid = generate_uid()
        for path in sorted(HFS.iterdir()):
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, number
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(mixed / f"{number}-{path.name}")
    (study / "ser1" / "0001.nfo").write_text("export info\n")
    shutil.copy(HFS.parent / "LICENSE", study / "LICENSE")
    (study / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (study / ".thumbs").mkdir()
    (study / "ser1" / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")

    found = discover(study)

    assert found.layout == "folder"
    assert all(isinstance(item, DicomSeries) for item in found.items)
    assert [(item.label, len(item.files)) for item in found.items] == [
        ("a/b/ser2", 35),
        ("mixed (series 7)", 35),
        ("mixed (series 8)", 35),
        ("ser1", 35),
    ]
    ser1 = found.items[-1]
    assert ser1.series_uid == str(first.SeriesInstanceUID) and ser1.modality == "MR" and ser1.frames == 35
    assert found.items[0].study_uid == ser1.study_uid
    assert {(s.label, s.reason) for s in found.skipped} == {
        ("ser1/0001.nfo", "not a DICOM, NIfTI or MGZ file"),
        ("ser1/preview.png", "not a DICOM, NIfTI or MGZ file"),
        ("LICENSE", "not a DICOM, NIfTI or MGZ file"),
        (".DS_Store", "hidden file"),
        (".thumbs", "hidden folder"),
    }


def _one_instance_series(folder: Path, name: str, **changes: object) -> None:
    """Eight instances of the supine series as a series of their own, with header changes."""
    series_uid = generate_uid()
    folder.mkdir(parents=True)
    for path in sorted(HFS.iterdir())[:8]:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / f"{name}-{path.name}")


def test_series_that_are_not_head_images_are_skipped_with_the_reason(tmp_path: Path) -> None:
    need_shared(HFS)
    root = tmp_path / "export"
    _one_instance_series(root / "loc", "loc", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    _one_instance_series(root / "scout", "scout", SeriesDescription="AAHead_Scout")
    _one_instance_series(root / "knee", "knee", BodyPartExamined="KNEE")
    _one_instance_series(root / "pet", "pet", Modality="PT")
    _copy_series(HFS, root / "short", limit=3, SeriesInstanceUID=generate_uid())
    first = pydicom.dcmread(next(HFS.iterdir()), stop_before_pixels=True)
    (root / "report").mkdir()
    report_instance(str(first.StudyInstanceUID), generate_uid()).save_as(
        root / "report" / "sr.dcm", enforce_file_format=True
    )
    _one_instance_series(root / "head", "head", BodyPartExamined="HEAD")

    found = discover(root)

    assert [item.label for item in found.items] == ["head"]
    assert {s.label: s.reason for s in found.skipped} == {
        "loc": "localiser (Image Type)",
        "scout": "localiser (series description)",
        "knee": "body part KNEE, not a head",
        "pet": "modality PT: only MR and CT are defaced",
        "short": "3 image frame(s): too few slices for a 3D head",
        "report": "structured report, not an image",
    }
    assert {s.kind for s in found.skipped} == {"dicom"}


def test_a_dicomdir_lists_the_files_to_read(tmp_path: Path) -> None:
    need_shared(HFS)
    fileset = FileSet()
    for path in sorted(HFS.iterdir()):
        fileset.add(pydicom.dcmread(path))
    first = pydicom.dcmread(next(HFS.iterdir()), stop_before_pixels=True)
    fileset.add(report_instance(str(first.StudyInstanceUID), generate_uid()))
    cd = tmp_path / "cd"
    fileset.write(cd)
    (cd / "autorun.inf").write_text("[autorun]\n")  # a viewer's files beside: not listed, not read

    for given in (cd, cd / "DICOMDIR"):
        found = discover(given)
        assert found.layout == "dicomdir" and found.root == cd
        assert [(item.label, len(item.files)) for item in found.items] == [("PT000000/ST000000/SE000000", 35)]
        assert [(s.label, s.reason) for s in found.skipped] == [
            ("DICOMDIR", "DICOMDIR index: the files it lists are read"),
            ("PT000000/ST000000/SE000001", "structured report, not an image"),
        ]


def test_a_bids_dataset_gives_its_anat_images_with_their_sidecars(tmp_path: Path) -> None:
    need_shared(HEADS)
    root = tmp_path / "ds"
    anat = root / "sub-01" / "ses-1" / "anat"
    func = root / "sub-01" / "ses-1" / "func"
    anat.mkdir(parents=True)
    func.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    (root / "README").write_text("tiny\n")
    (root / "T1w.json").write_text("{}")
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    shutil.copy(HEADS / "IXI012-HH-1211_T1_2mm.nii.gz", anat / "sub-01_ses-1_T1w.nii.gz")
    (anat / "sub-01_ses-1_T1w.json").write_text("{}")
    shutil.copy(HEADS / "IXI012-HH-1211_T1_2mm.nii.gz", anat / "sub-01_ses-1_T2w.nii.gz")
    shutil.copy(HEADS / "IXI012-HH-1211_T1_2mm.nii.gz", func / "sub-01_ses-1_task-rest_bold.nii.gz")
    (root / "derivatives" / "fmriprep").mkdir(parents=True)

    found = discover(root)

    assert found.layout == "bids" and found.bids_description == {"Name": "tiny", "BIDSVersion": "1.9.0"}
    assert [(i.label, i.kind, str(i.bids), i.sidecar and i.sidecar.name) for i in found.items] == [
        (
            "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
            "bids",
            "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
            "sub-01_ses-1_T1w.json",
        ),
        (
            "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz",
            "bids",
            "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz",
            None,
        ),
    ]
    assert {(s.label, s.reason) for s in found.skipped} == {
        ("derivatives", "derivatives/ holds no raw images to deface"),
        (
            "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz",
            "func/ image: only anat/ images are defaced",
        ),
    }
    assert sorted(p.name for p in found.carried) == ["README", "T1w.json"]


def test_one_file_a_folder_of_niftis_and_what_is_refused(tmp_path: Path) -> None:
    need_shared(HEADS)
    head = HEADS / "IXI012-HH-1211_T1_2mm.nii.gz"
    found = discover(head)
    assert found.layout == "file" and found.items == (NiftiItem(head, head.name),)
    folder = tmp_path / "input"
    (folder / "site2").mkdir(parents=True)
    shutil.copy(head, folder / "a.nii.gz")
    shutil.copy(head, folder / "site2" / "b.NII.GZ")
    shutil.copy(head, folder / "c.mgz")  # by its name only: the reader refuses it later if it is not MGZ
    assert [i.label for i in discover(folder).items] == ["a.nii.gz", "c.mgz", "site2/b.NII.GZ"]
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a NIfTI or MGZ file, a DICOMDIR, or a folder"):
        discover(tmp_path / "notes.txt")
