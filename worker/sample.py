"""A small DICOM MR series made from the shipped template head, for the demo and smoke tests.

The template (pydeface's MIT-licensed population mean head, in ``models/``) has a
face, so defacing it is meaningful; the headers carry obviously fake PHI so that
de-identification can be seen to work. Nothing here is a real patient.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: Sagittal slices like a 3D T1: rows run anterior->posterior, columns superior->inferior.
_ROW = (0.0, 1.0, 0.0)
_COLUMN = (0.0, 0.0, -1.0)


def write_sample_series(template: Path, out_dir: Path, spacing_mm: float = 2.0) -> list[Path]:
    """Write the template head as a sagittal MR series (one file per slice) and return the files."""
    head = sitk.ReadImage(str(template), sitk.sitkFloat32)
    normal = np.cross(_ROW, _COLUMN)
    direction = np.column_stack([_ROW, _COLUMN, normal])
    # Cover the template's bounding box in the new orientation.
    corners = [
        head.TransformIndexToPhysicalPoint((i, j, k))
        for i in (0, head.GetSize()[0] - 1)
        for j in (0, head.GetSize()[1] - 1)
        for k in (0, head.GetSize()[2] - 1)
    ]
    local = np.array(corners) @ direction  # coordinates along row, column, normal
    low, high = local.min(axis=0), local.max(axis=0)
    size = [int(np.ceil((h - lo) / spacing_mm)) + 1 for lo, h in zip(low, high, strict=False)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing((spacing_mm,) * 3)
    grid.SetDirection(tuple(direction.ravel()))
    grid.SetOrigin(tuple(direction @ low))
    resampled = sitk.Resample(head, grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    array = np.clip(sitk.GetArrayFromImage(resampled), 0, 65535).astype(np.uint16)

    out_dir.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k, pixels in enumerate(array):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = "MR"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.PatientName = "DEMO^SAMPLE^PEDIFACE"
        ds.PatientID = "DEMO-0001"
        ds.PatientBirthDate = "20150101"
        ds.PatientSex = "O"
        ds.InstitutionName = "Demo Children's Hospital"
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.AccessionNumber = "DEMOACC1"
        ds.StudyDescription = "MRI HEAD (demo sample)"
        ds.SeriesDescription = "T1 3D SAG (template head)"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [*_ROW, *_COLUMN]
        ds.ImagePositionPatient = [float(v) for v in resampled.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.PixelSpacing = [spacing_mm, spacing_mm]
        ds.SliceThickness = spacing_mm
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        path = out_dir / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
