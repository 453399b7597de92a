"""The engine on every real vendor series in ../shared/data/dicom (private tags of four vendors included).

Each series is de-identified with the Basic profile. The output must read back, hold no private
attribute and no identifying value of the input, keep every instance's frame geometry and pixels
(and build the very same volume where the input builds one), and give ``dciodvfy`` no error that
the input did not have.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from common.errors import InputError
from evaluation.conformance import dciodvfy_errors
from worker.deid import DeidPolicy, deidentify
from worker.deid.allowlist import allow_list
from worker.deid.table import profile_table
from worker.volume.geometry import frame_geometries
from worker.volume.pixels import stack_volume
from worker.volume.read import read_instances
from worker.volume.stacks import split_series

KEY = b"pediface-unit-test-key-0123456789"
BASIC = DeidPolicy()
DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
SERIES = sorted(
    folder for folder in DICOM.glob("*/*") if folder.is_dir() and any(folder.glob("*")) if DICOM.is_dir()
)

#: Attributes the images need, compared at the top level and in the functional groups.
NEEDED = (
    "SOPClassUID", "Modality", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PhotometricInterpretation", "SamplesPerPixel", "NumberOfFrames",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
    "RepetitionTime", "EchoTime", "FlipAngle", "MagneticFieldStrength", "EffectiveEchoTime",
    "DimensionIndexValues", "InStackPositionNumber", "TemporalPositionIndex", "Manufacturer",
)  # fmt: skip


def test_the_shared_series_are_there() -> None:
    if not SERIES:
        pytest.skip(f"shared DICOM data missing at {DICOM}: the engine was NOT run on real series")
    assert len(SERIES) >= 10


@dataclass
class Run:
    folder: Path
    inputs: list[Dataset]
    raw: list[bytes]
    outputs: list[Dataset]
    written: list[bytes]


@pytest.fixture(scope="module", params=SERIES, ids=lambda folder: folder.name)
def run(request: pytest.FixtureRequest) -> Run:
    folder: Path = request.param
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix != ".txt")
    inputs = read_instances(files)
    outputs = [deidentify(ds, BASIC, KEY) for ds in inputs]
    written = []
    for out in outputs:
        buffer = io.BytesIO()
        out.save_as(buffer, enforce_file_format=True)
        written.append(buffer.getvalue())
    return Run(folder, inputs, [path.read_bytes() for path in files], outputs, written)


def test_every_instance_reads_back_without_private_attributes(run: Run) -> None:
    assert len(run.outputs) == len(run.inputs)
    for original, data in zip(run.inputs, run.written, strict=True):
        reread = pydicom.dcmread(io.BytesIO(data))
        reread.walk(lambda _ds, elem: elem.value)
        assert not _private_tags(reread)
        assert reread.PatientIdentityRemoved == "YES"
        assert reread.SOPClassUID == original.SOPClassUID
        assert reread.SOPInstanceUID != original.SOPInstanceUID
        assert reread.file_meta.MediaStorageSOPInstanceUID == reread.SOPInstanceUID


def _private_tags(ds: Dataset) -> list[int]:
    found: list[int] = []
    ds.walk(lambda _ds, elem: found.append(elem.tag) if elem.tag.is_private else None)
    return found


#: The engine's dummy values: an input value equal to one of them shows in the output as a dummy.
DUMMIES = {"ANONYMOUS", "19000101", "000000", "19000101000000", "000D"}


def _texts(value: object) -> list[str]:
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(item).strip(" \x00") for item in items if isinstance(item, str | pydicom.uid.UID)]


def _identifying_and_kept(ds: Dataset) -> tuple[set[str], bytes]:
    """Texts the Basic profile must remove (table rows, private attributes) and texts it keeps."""
    table, allowed = profile_table(), allow_list()
    identifying: set[str] = set()
    kept: list[str] = []

    def visit(dataset: Dataset) -> None:
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
                continue
            if not isinstance(elem.value, str | MultiValue | list | tuple):
                continue  # binary and numbers: not searchable as text
            texts = _texts(elem.value)
            if elem.tag.is_private or table.lookup(int(elem.tag)) is not None:
                identifying.update(text for text in texts if len(text) >= 6 and text not in DUMMIES)
            elif int(elem.tag) in allowed:
                kept.extend(texts)

    visit(ds)
    return identifying, "\x00".join(kept).encode()


def leaked_values(original: Dataset, out: Dataset) -> list[str]:
    """Identifying values of ``original`` found in ``out``'s header bytes that no kept value explains."""
    identifying, kept = _identifying_and_kept(original)
    header = Dataset()
    for elem in out:
        if elem.tag.group != 0x7FE0:
            header.add(elem)
    buffer = io.BytesIO()
    header.save_as(buffer, implicit_vr=False, little_endian=True)
    text = buffer.getvalue()
    return sorted(value for value in identifying if value.encode() in text and value.encode() not in kept)


def test_no_identifying_value_survives(run: Run) -> None:
    for original, out in zip(run.inputs, run.outputs, strict=True):
        leaked = leaked_values(original, out)
        assert not leaked, f"{run.folder.name}: {len(leaked)} identifying values survived"


#: Series the volume builder refuses, and why: the refusal must be the same before and after.
NO_GEOMETRY = {"emri_small_enhanced_mr_5_transfer_syntaxes": "input.geometry"}

#: Siemens mosaics: the Basic profile removes the private CSA header that says how many slices a
#: mosaic holds, so the de-identified mosaic can no longer be cut into slices (the research profile
#: keeps it). Pixels and frame geometry are still checked above.
MOSAICS = {"siemens_epi_mosaic_cor_oblique", "siemens_epi_mosaic_9_transfer_syntaxes"}


def test_geometry_and_pixels_are_unchanged(run: Run) -> None:
    rereads = [pydicom.dcmread(io.BytesIO(data)) for data in run.written]
    with_pixels = [i for i, ds in enumerate(run.inputs) if "PixelData" in ds]
    assert with_pixels, f"{run.folder.name} has images"
    for index in with_pixels:
        assert np.array_equal(run.inputs[index].pixel_array, rereads[index].pixel_array)
    if run.folder.name in NO_GEOMETRY:
        # The pydicom test object has no orientation or position: refused alike before and after.
        for datasets in ([run.inputs[i] for i in with_pixels], [rereads[i] for i in with_pixels]):
            with pytest.raises(InputError) as refused:
                split_series(datasets)
            assert refused.value.code == NO_GEOMETRY[run.folder.name]
        return
    before = frame_geometries([run.inputs[i] for i in with_pixels])
    after = frame_geometries([rereads[i] for i in with_pixels])
    for one, two in zip(before, after, strict=True):
        assert np.allclose(one.position, two.position)
        assert np.allclose(one.row_cosine, two.row_cosine)
        assert np.allclose(one.column_cosine, two.column_cosine)
        assert one.pixel_spacing == two.pixel_spacing and one.stack_key == two.stack_key
    if run.folder.name in MOSAICS:
        assert len(split_series(run.inputs).stacks) == len(run.inputs), "one stack per mosaic before"
        with pytest.raises(InputError) as refused:
            split_series(rereads)
        assert refused.value.code == "input.mosaic"
        return
    # Every stack (one for a 3D series; echoes or time points for the others) builds the same
    # volume from the de-identified instances.
    stacks_before, stacks_after = split_series(run.inputs), split_series(rereads)
    assert stacks_before.filtered_counts() == stacks_after.filtered_counts()
    assert len(stacks_before.stacks) == len(stacks_after.stacks) >= 1
    for one, two in zip(stacks_before.stacks, stacks_after.stacks, strict=True):
        volume, again = stack_volume(run.inputs, one), stack_volume(rereads, two)
        assert np.array_equal(volume.array, again.array)
        assert np.allclose(volume.spacing, again.spacing)
        assert np.allclose(volume.origin, again.origin)
        assert np.allclose(volume.direction, again.direction)


def _needed(ds: Dataset) -> dict[str, object]:
    found: dict[str, object] = {}

    def visit(dataset: Dataset, where: str) -> None:
        for keyword in NEEDED:
            if keyword in dataset:
                found[where + keyword] = dataset[keyword].value
        for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            for index, group in enumerate(dataset.get(name, [])):
                for elem in group:
                    if elem.VR == "SQ" and not elem.tag.is_private:  # private: removed, rightly
                        for item in elem.value:
                            visit(item, f"{name}[{index}].{elem.keyword}.")

    visit(ds, "")
    return found


def test_what_the_images_need_is_kept(run: Run) -> None:
    for original, out in zip(run.inputs, run.outputs, strict=True):
        assert _needed(out) == _needed(original)


def test_dciodvfy_finds_no_new_error(run: Run) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools): outputs were not validated")
    for raw, data in list(zip(run.raw, run.written, strict=True))[:2]:
        new = sorted(dciodvfy_errors(data) - dciodvfy_errors(raw))
        assert not new, f"{run.folder.name}: dciodvfy errors the input did not have: {new}"
