"""What a researcher gets from our output: dcm2niix on the input and on the output, side by side.

A research archive converts what pediface sends to NIfTI and a BIDS sidecar, almost always with
dcm2niix, and analyses that. :func:`convert` runs dcm2niix as a researcher would (its defaults:
BIDS sidecar, anonymised sidecar) and summarises each output: the sidecar, the image grid and
affine, bval/bvec. :func:`compare` pairs the outputs of the input and of the de-identified copy
and sorts every sidecar field into kept (same value), dropped, added and changed;
:meth:`SeriesParity.unexpected` names what differs beyond the documented list
(:data:`MAY_DIFFER`): the proof that the research profile keeps what analysis needs.

Used by the unit tests (``tests/unit/test_research_profile.py``) and ``python -m bench.parity``,
which writes the tables of docs/research-profile.md. Nothing in the pipeline imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset

MAY_DIFFER: dict[str, str] = {
    "InstitutionName": "identifies the site (Table E.1-1 X/Z/D)",
    "InstitutionAddress": "identifies the site",
    "InstitutionalDepartmentName": "identifies the site",
    "StationName": "identifies the scanner (Retain Device Identity not selected)",
    "DeviceSerialNumber": "identifies the scanner (Retain Device Identity not selected)",
    "AcquisitionDateTime": "dates shifted by the keyed per-patient offset (Modified Dates)",
    "StudyDate": "dates shifted",
    "SeriesDate": "dates shifted",
    "AcquisitionDate": "dates shifted",
    "ImageType": "DERIVED: the pixels were changed (defaced), PS3.3 C.7.6.1.1.2",
    "RawImage": "follows ImageType (ORIGINAL/DERIVED)",
    "ImageTypeText": "follows ImageType (ORIGINAL/DERIVED)",
    "BidsGuess": "dcm2niix guesses 'derived' for a DERIVED image; the rest of its guess stays",
    "DeidentificationMethod": "the record of what was done (PS3.15 E.1.1)",
    "DeidentificationMethodCodeSequence": "the record of what was done, coded (CID 7050)",
}
"""Sidecar fields that may be dropped or changed, with why (docs/research-profile.md)."""

DESCRIPTORS = {
    "SeriesDescription": "SeriesDescription",
    "ProtocolName": "ProtocolName",
    "StudyDescription": "StudyDescription",
    "ProcedureStepDescription": "PerformedProcedureStepDescription",
}
"""Sidecar fields from descriptors, by the attribute they come from: they may differ only where the
input's value held an identifier (Clean Descriptors, :func:`descriptors_with_phi`)."""

PHYSICS = (
    "SliceTiming",
    "PhaseEncodingDirection",
    "EffectiveEchoSpacing",
    "TotalReadoutTime",
    "DwellTime",
    "ParallelReductionFactorInPlane",
    "ScanningSequence",
    "SequenceVariant",
    "ReceiveCoilName",
)
"""Fields analysis needs (distortion and slice-time correction): identical wherever the input has them."""


def dcm2niix() -> str:
    """The dcm2niix executable: ``$DCM2NIIX``, the one beside this Python, or on PATH."""
    beside = Path(sys.executable).with_name("dcm2niix")
    found = os.environ.get("DCM2NIIX") or (str(beside) if beside.exists() else shutil.which("dcm2niix"))
    if not found:
        raise FileNotFoundError("dcm2niix not found (pip install dcm2niix)")
    return found


@dataclass(frozen=True)
class Output:
    """One dcm2niix output: its sidecar, its grid and affine, and bval/bvec when written."""

    sidecar: dict
    grid: dict
    bval: tuple[str, ...] | None = None
    bvec: tuple[str, ...] | None = None


def convert(folder: Path, work: Path) -> dict[str, Output]:
    """dcm2niix on `folder` (BIDS sidecar, its defaults otherwise), outputs by name, in `work`."""
    import nibabel

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(
        [dcm2niix(), "-b", "y", "-z", "n", "-f", "%s", "-o", str(work), str(folder)],
        capture_output=True,
        timeout=600,
        check=False,
    )
    outputs: dict[str, Output] = {}
    for sidecar in sorted(work.glob("*.json")):
        image = nibabel.load(str(sidecar.with_suffix(".nii")))
        header = image.header
        grid = {
            "shape": tuple(int(n) for n in image.shape),
            "pixdim": tuple(round(float(v), 5) for v in header["pixdim"][:5]),
            "affine": tuple(tuple(round(float(v), 4) for v in row) for row in image.affine),
        }
        bval, bvec = sidecar.with_suffix(".bval"), sidecar.with_suffix(".bvec")
        outputs[sidecar.stem] = Output(
            sidecar=json.loads(sidecar.read_text()),
            grid=grid,
            bval=tuple(bval.read_text().split()) if bval.exists() else None,
            bvec=tuple(bvec.read_text().split()) if bvec.exists() else None,
        )
    return outputs


@dataclass
class SeriesParity:
    """How the sidecars of one series compare (field names only, and values where changed)."""

    name: str
    outputs: int
    grid_same: bool
    diffusion_same: bool
    kept: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)
    added: set[str] = field(default_factory=set)
    changed: dict[str, tuple[object, object]] = field(default_factory=dict)
    unpaired: list[str] = field(default_factory=list)

    def unexpected(self, descriptors_with_phi: set[str] = frozenset()) -> list[str]:
        """What differs beyond :data:`MAY_DIFFER` (and the descriptors that held an identifier)."""
        allowed = set(MAY_DIFFER) | set(descriptors_with_phi)
        problems = [f"output {name} has no counterpart" for name in self.unpaired]
        if not self.grid_same:
            problems.append("image grid or affine differ")
        if not self.diffusion_same:
            problems.append("bval/bvec differ")
        problems += [f"{key} dropped" for key in sorted(self.dropped - allowed)]
        problems += [f"{key} added" for key in sorted(self.added - allowed)]
        problems += [f"{key} changed" for key in sorted(set(self.changed) - allowed)]
        return problems


def write_outputs(files: list[Path], target: Path, policy: object | None, key: bytes) -> Path:
    """Copies of `files` in `target`: as they are (`policy` None), or as the pipeline writes their
    headers for a destination with that :class:`~worker.deid.DeidPolicy` (``derived_copy``)."""
    import pydicom

    from worker.pipeline import derived_copy

    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in files:
        if policy is None:
            shutil.copy(path, target / path.name)
        else:
            out = derived_copy(pydicom.dcmread(path), policy, key, "pediface")  # type: ignore[arg-type]
            out.save_as(target / path.name, enforce_file_format=True)
    return target


def descriptors_with_phi(outputs: dict[str, Output], first: Dataset) -> set[str]:
    """The descriptor fields of `outputs` that Clean Descriptors changes, given the input instance `first`."""
    from worker.deid.descriptors import Identifiers, clean_descriptor

    identifiers = Identifiers.of(first)
    changed = set()
    for output in outputs.values():
        for field_name in DESCRIPTORS:
            value = output.sidecar.get(field_name)
            if isinstance(value, str) and clean_descriptor(value, identifiers) != value:
                changed.add(field_name)
    return changed


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-6, atol=1e-9))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def compare(name: str, before: dict[str, Output], after: dict[str, Output]) -> SeriesParity:
    """Compare dcm2niix's outputs of a series' input (`before`) and output (`after`)."""
    pairs = [(key, before[key], after[key]) for key in sorted(before) if key in after]
    unpaired = sorted(set(before) ^ set(after))
    parity = SeriesParity(
        name=name,
        outputs=len(before),
        grid_same=all(a.grid == b.grid for _, a, b in pairs),
        diffusion_same=all((a.bval, a.bvec) == (b.bval, b.bvec) for _, a, b in pairs),
        unpaired=unpaired,
    )
    ignored = {"ConversionSoftwareVersion"}
    for _, a, b in pairs:
        for key in sorted((set(a.sidecar) | set(b.sidecar)) - ignored):
            if key not in b.sidecar:
                parity.dropped.add(key)
            elif key not in a.sidecar:
                parity.added.add(key)
            elif _same(a.sidecar[key], b.sidecar[key]):
                parity.kept.add(key)
            else:
                parity.changed[key] = (a.sidecar[key], b.sidecar[key])
    parity.kept -= parity.dropped | parity.added | set(parity.changed)
    return parity
