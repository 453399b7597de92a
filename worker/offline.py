"""``pediface deface``: the pipeline on local files, without the network or the spool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pediface.errors import InputError
from pediface.progress import steps
from pediface.settings import Settings
from pediface.spool import atomic_write
from worker.deid import DeidPolicy
from worker.pipeline import deface_series
from worker.types import FaceMask, Volume
from worker.volume import read_instances

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES[::-1]:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def deface_path(input_path: Path, output: Path, settings: Settings, *, qc: bool = True) -> list[Path]:
    """Deface a NIfTI file or a folder holding one DICOM series; returns the files written."""
    from worker.app import build_masker

    if not input_path.exists():
        raise FileNotFoundError(f"{input_path} does not exist")
    if not (input_path.is_dir() or (input_path.is_file() and is_nifti(input_path))):
        raise ValueError(f"{input_path} is neither a NIfTI file (.nii, .nii.gz) nor a folder of DICOM files")
    output.mkdir(parents=True, exist_ok=True)
    # A bar on stderr when it is a terminal: loading the model and masking take a while on a CPU.
    with steps(2, f"defacing {input_path.name}") as bar:
        bar.step("loading the masker")
        masker = build_masker(settings)
        bar.step("masking and writing")
        if input_path.is_dir():
            return _deface_dicom(input_path, output, masker, settings, qc)
        return _deface_nifti(input_path, output, masker, settings, qc)


def _deface_nifti(path: Path, output: Path, masker, settings: Settings, qc: bool) -> list[Path]:
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path.name} is not a 3D scalar image", code="input.dimensions")
    volume = Volume.from_sitk(image)
    mask = masker.predict(volume)
    blank = mask.blank(include_ears=settings.deface.remove_ears)
    if not blank.any():
        raise InputError("the face mask is empty: nothing would be removed", code="mask.empty")
    background = volume.array.min()
    defaced_array = np.where(blank, background, volume.array).astype(volume.array.dtype)
    stem = nifti_stem(path)
    written = [
        _write_image(defaced_array, image, output / f"{stem}_defaced.nii.gz"),
        _write_image(mask.labels, image, output / f"{stem}_face_mask.nii.gz"),
    ]
    if qc:
        written.append(_qc(volume, defaced_array, mask, output / f"{stem}_qc.png"))
    return written


def _deface_dicom(folder: Path, output: Path, masker, settings: Settings, qc: bool) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    datasets = read_instances(files)
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) != 1:
        raise InputError(
            f"{folder} holds {len(series)} series; give one series per folder", code="input.series"
        )
    result = deface_series(
        datasets,
        masker,
        DeidPolicy.from_settings(settings.deid),
        settings.deid_key(),
        remove_ears=settings.deface.remove_ears,
    )
    written = []
    for ds in result.datasets:
        target = output / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    written.append(
        _write_image(result.mask.labels, result.before.to_sitk(dtype=None), output / "face_mask.nii.gz")
    )
    if qc:
        written.append(_qc(result.before, result.after.array, result.mask, output / "qc.png"))
    return written


def _write_image(array: np.ndarray, reference: sitk.Image, target: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    tmp = target.with_name(f".{target.name}.tmp.nii.gz")
    sitk.WriteImage(image, str(tmp), useCompression=True)
    atomic_write(target, tmp.read_bytes())
    tmp.unlink()
    return target


def _qc(before: Volume, after_array: np.ndarray, mask: FaceMask, target: Path) -> Path:
    from worker.qc import render_before_after

    after = Volume(after_array, before.spacing, before.origin, before.direction, before.sources)
    return render_before_after(before, after, mask, target)
