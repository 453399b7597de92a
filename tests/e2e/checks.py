"""Checks of a defaced, de-identified series against its original, shared by the end-to-end tests.

The checks read both series with SimpleITK's own DICOM reader (GDCM), not with
pediface's volume builder, so that a geometry bug in pediface cannot hide itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk


def read_series(paths: list[Path]) -> sitk.Image:
    folder = {p.parent for p in paths}
    assert len(folder) == 1, "one folder per series"
    reader = sitk.ImageSeriesReader()
    # Name the series: the folder may hold others (the mask SEG beside the defaced series).
    series_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    names = reader.GetGDCMSeriesFileNames(str(next(iter(folder))), series_uid)
    assert len(names) == len(paths), f"GDCM sees {len(names)} files of one series, expected {len(paths)}"
    reader.SetFileNames(names)
    return reader.Execute()


def _has_private(ds: pydicom.Dataset) -> bool:
    for element in ds.iterall():
        if element.tag.is_private:
            return True
    return False


def head_landmarks(image: sitk.Image, step: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(centre of the head, tip of the nose) in LPS mm, found from intensities alone.

    The head is the largest connected component above Otsu's threshold (on a
    ``step``-times shrunk copy, which is plenty for landmarks); the nose tip is its
    most anterior (smallest LPS y) voxel below the head's centre.
    """
    small = sitk.Shrink(sitk.Cast(image, sitk.sitkFloat32), [step] * 3)
    foreground = sitk.OtsuThreshold(small, 0, 1)
    head = sitk.RelabelComponent(sitk.ConnectedComponent(foreground)) == 1
    z, y, x = np.nonzero(sitk.GetArrayFromImage(head))
    index = np.stack([x, y, z], axis=1).astype(np.float64)
    direction = np.array(small.GetDirection()).reshape(3, 3)
    points = np.asarray(small.GetOrigin()) + (index * np.asarray(small.GetSpacing())) @ direction.T
    centre = points.mean(axis=0)
    lower = points[points[:, 2] < centre[2]]
    nose = lower[np.argmin(lower[:, 1])]
    return centre, nose


def ball(image: sitk.Image, centre: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of ``centre`` (LPS), as a boolean (z, y, x) array.

    The direction matrix is orthonormal, so distances can be measured in the image's
    own axes: |origin + D(s*i) - c| = |s*i - D^T(c - origin)|, which separates per axis.
    """
    direction = np.array(image.GetDirection()).reshape(3, 3)
    local = direction.T @ (np.asarray(centre) - np.asarray(image.GetOrigin()))
    squares = [
        ((np.arange(n) * s - c) ** 2).astype(np.float32)
        for n, s, c in zip(image.GetSize(), image.GetSpacing(), local, strict=False)
    ]
    dx, dy, dz = squares
    return (dz[:, None, None] + dy[None, :, None] + dx[None, None, :]) < radius_mm**2


def assert_defaced_deidentified(original: list[Path], output: list[Path]) -> dict[str, float]:
    """Assert everything the walking-skeleton issue asks of a delivered series; returns figures."""
    assert len(output) == len(original), f"{len(output)} instances delivered for {len(original)} received"
    before = [pydicom.dcmread(p) for p in original]
    after = [pydicom.dcmread(p) for p in output]  # pydicom reads every output file

    # New UIDs, one study and one series, consistent across the instances.
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        old = {str(ds[keyword].value) for ds in before}
        new = {str(ds[keyword].value) for ds in after}
        assert len(new) == 1, f"{keyword} differs across the delivered instances"
        assert not new & old, f"{keyword} was not replaced"
    old_sops = {str(ds.SOPInstanceUID) for ds in before}
    new_sops = {str(ds.SOPInstanceUID) for ds in after}
    assert len(new_sops) == len(after) and not new_sops & old_sops, (
        "SOP Instance UIDs not replaced one to one"
    )
    for ds in after:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID

    # Identifiers gone.
    first = before[0]
    for ds in after:
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            value = str(ds.get(keyword, ""))
            assert value != str(first.get(keyword, "")) or value == "", f"{keyword} survived"
        assert ds.get("PatientBirthDate", "") == "", "PatientBirthDate survived"
        assert not ds.get("InstitutionName") and not ds.get("InstitutionAddress"), "institution survived"
        assert not _has_private(ds), "a private attribute survived"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.ImageType[0] == "DERIVED"

    # Geometry unchanged, instance by instance.
    def geometry(ds: pydicom.Dataset) -> tuple:
        return (
            tuple(float(v) for v in ds.ImagePositionPatient),
            tuple(float(v) for v in ds.ImageOrientationPatient),
        )

    assert sorted(map(geometry, before)) == sorted(map(geometry, after)), "geometry changed"

    # Pixels: read both with GDCM.
    image_in, image_out = read_series(original), read_series(output)
    for getter in ("GetOrigin", "GetSpacing", "GetDirection", "GetSize"):
        assert np.allclose(getattr(image_in, getter)(), getattr(image_out, getter)(), atol=1e-4), getter
    a_in, a_out = sitk.GetArrayFromImage(image_in), sitk.GetArrayFromImage(image_out)
    changed = a_in != a_out
    background = a_in.min()
    assert changed.any(), "no voxel was blanked"
    assert np.all(a_out[changed] == background), "blanked voxels are not the series' background value"

    centre, nose = head_landmarks(image_in)
    # Brain: a 50 mm ball around a point 15 mm above the head's centre, well behind the face.
    brain = ball(image_in, centre + np.array([0.0, 0.0, 15.0]), 50.0)
    assert not changed[brain].any(), f"{int(changed[brain].sum())} voxels changed inside the brain ball"
    assert np.array_equal(a_in[brain], a_out[brain])
    # Face: everything within 10 mm of the nose tip is background now.
    near_nose = ball(image_in, nose, 10.0)
    assert np.all(a_out[near_nose] == background), "the nose is still there"
    return {
        "voxels_blanked": float(changed.sum()),
        "fraction_blanked": float(changed.mean()),
        "nose_to_centre_mm": float(np.linalg.norm(nose - centre)),
    }
