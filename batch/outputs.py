"""Where a batch writes, under what names, and how a half-finished run is never seen.

Names:

* a NIfTI/MGZ file (the paper's tool's layout): ``NAME_defaced.nii.gz`` and ``NAME_face_mask.nii.gz``
  beside each other, in the input's sub-folder (``input/a/x.nii.gz`` -> ``OUTPUT/a/x_defaced.nii.gz``);
* a BIDS image: the same path and name as in the source dataset, in a BIDS derivative dataset
  (:func:`derivative_description`), its JSON sidecar beside it;
* a DICOM series: ``OUTPUT/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``,
  every value the *de-identified* one (keyed pseudonyms), so no path carries PHI; the series of one
  patient share the patient and study folders because the pseudonyms are keyed.

Every file is first written into ``OUTPUT/.pediface-partial/`` and renamed into place (one rename per
file, or per DICOM series folder) only when the item is complete; the report row follows the rename.
A crash leaves complete outputs and a staging folder that the next run empties.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from batch.discover import DicomSeries, Item, NiftiItem, image_stem
from common.files import atomic_write, fsync_dir
from common.version import __version__

REPORT = "pediface-report.csv"
QUARANTINE = "quarantine"
STAGING = ".pediface-partial"
LOCK = ".pediface-lock"
BIDS_IGNORE = (REPORT, f"{QUARANTINE}/")
"""Our own files in a BIDS derivative, which its validator must not read as data."""

DEFACED = "defaced"
QUARANTINED = "quarantined"
SKIPPED = "skipped"


@dataclass(frozen=True)
class Row:
    """One line of ``pediface-report.csv``."""

    input: str
    output: str
    kind: str
    verdict: str
    reason: str
    seconds: float


COLUMNS = tuple(Row.__dataclass_fields__)


def _safe(name: str) -> str:
    """A file name made of letters, digits, ``.``, ``_`` and ``-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "_"


def nifti_outputs(item: NiftiItem) -> tuple[PurePosixPath, PurePosixPath | None]:
    """(defaced image, face mask) paths under OUTPUT; a BIDS image has no mask beside it."""
    if item.bids is not None:
        return item.bids, None
    folder = PurePosixPath(item.label).parent
    stem, suffix = image_stem(item.path)
    suffix = suffix.lower()
    return folder / f"{stem}_defaced{suffix}", folder / f"{stem}_face_mask{suffix}"


def dicom_series_folder(patient_id: str, study_uid: str, series_uid: str) -> PurePosixPath:
    """``<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>`` of a de-identified series."""
    return PurePosixPath(_safe(patient_id or "patient"), _safe(study_uid), _safe(series_uid))


def quarantine_note(item: Item) -> PurePosixPath:
    """Where the reason an item was not defaced is written (never its pixels)."""
    return PurePosixPath(QUARANTINE, f"{_safe(item.label.replace('/', '__'))}.json")


def qc_picture(item: Item, output: PurePosixPath | None) -> PurePosixPath:
    """The QC picture's path under the QC folder: after the output, else after the input."""
    if output is not None and isinstance(item, DicomSeries):
        return output.with_name(output.name + ".png")
    if output is not None:
        return output.with_name(image_stem(Path(output.name))[0] + ".png")
    return PurePosixPath(_safe(item.label.replace("/", "__")) + ".png")


def derivative_description(source: dict | None) -> dict:
    """``dataset_description.json`` of the defaced BIDS derivative (BIDS 1.9 "Derivatives")."""
    source = source or {}
    description = {
        "Name": f"{source.get('Name', 'dataset')} (faces and ears removed)",
        "BIDSVersion": str(source.get("BIDSVersion", "1.9.0")),
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "pediface",
                "Version": __version__,
                "Description": "Face and ear voxels of every anat/ image set to the image's background "
                "value (nnU-Net face-and-ear mask, dilated by a safety margin).",
            }
        ],
    }
    for key in ("License", "Authors", "Acknowledgements", "HowToAcknowledge", "Funding", "EthicsApprovals"):
        if key in source:
            description[key] = source[key]
    return description


# -- the report -----------------------------------------------------------------------------------


class Report:
    """``OUTPUT/pediface-report.csv``: one row per input, appended as items finish, rewritten at the end.

    A row is appended (and fsynced) right after the item's outputs were renamed into place, so after a
    crash the report lists exactly the items that are done; :meth:`finish` rewrites it with one row
    per input (the newest) in input order.
    """

    def __init__(self, output: Path) -> None:
        self.path = output / REPORT
        self.rows: dict[str, Row] = {}
        if not self.path.is_file():
            return
        if not self.path.read_bytes().endswith(b"\n"):
            with open(self.path, "ab") as handle:  # end a line torn by a crash before appending to it
                handle.write(b"\n")
        with open(self.path, newline="", encoding="utf-8") as handle:
            for record in csv.DictReader(handle):
                if None in record.values() or record.get("verdict") not in (DEFACED, QUARANTINED, SKIPPED):
                    continue  # a torn line of a crashed run: that item is simply done again
                try:
                    self.rows[record["input"]] = Row(**{**record, "seconds": float(record["seconds"] or 0)})
                except (KeyError, TypeError, ValueError):
                    continue

    def done(self, label: str, output: Path, *, retry_quarantined: bool = False) -> Row | None:
        """The earlier row of a finished item (its outputs still there), or None to run it."""
        row = self.rows.get(label)
        if row is None:
            return None
        if row.verdict == DEFACED and row.output and (output / row.output).exists():
            return row
        if row.verdict == QUARANTINED and not retry_quarantined:
            return row
        return None

    def add(self, row: Row) -> None:
        """Record a finished item durably (append, flush, fsync)."""
        self.rows[row.input] = row
        new = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(COLUMNS)
            writer.writerow(_cells(row))
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self, order: Iterable[str]) -> None:
        """Rewrite the report atomically: the rows of ``order`` first (in that order), then the rest."""
        ordered = list(dict.fromkeys([*(label for label in order if label in self.rows), *self.rows]))
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        for label in ordered:
            writer.writerow(_cells(self.rows[label]))
        atomic_write(self.path, buffer.getvalue().encode("utf-8"))


def _cells(row: Row) -> list[str]:
    values = asdict(row)
    values["seconds"] = f"{row.seconds:.1f}"
    return [str(values[column]) for column in COLUMNS]


# -- staging and placing --------------------------------------------------------------------------


@contextlib.contextmanager
def locked(output: Path) -> Iterator[None]:
    """Hold ``OUTPUT/.pediface-lock``: two runs into one folder would overwrite each other's staging."""
    output.mkdir(parents=True, exist_ok=True)
    with open(output / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another pediface run is writing into {output}") from None
        try:
            yield
        finally:
            (output / LOCK).unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def fresh_staging(output: Path) -> Path:
    """An empty ``OUTPUT/.pediface-partial`` (what a crashed run left there is thrown away)."""
    staging = output / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def place(output: Path, moves: Iterable[tuple[Path, PurePosixPath]]) -> None:
    """Rename each staged file or folder to its place under ``output`` (replacing an older copy)."""
    for staged, relative in moves:
        target = output / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if staged.is_dir() and target.exists():
            shutil.rmtree(target)  # a series placed by a run that crashed before its report row
        os.replace(staged, target)
        fsync_dir(target.parent)


def write_quarantine_note(output: Path, note: PurePosixPath, content: dict) -> None:
    target = output / note
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, (json.dumps(content, indent=2) + "\n").encode("utf-8"))


def write_derivative_files(output: Path, description: dict | None, carried: Iterable[Path]) -> None:
    """A BIDS derivative's own files: its description, the source's top-level sidecars, .bidsignore."""
    output.mkdir(parents=True, exist_ok=True)
    text = json.dumps(derivative_description(description), indent=2) + "\n"
    atomic_write(output / "dataset_description.json", text.encode("utf-8"))
    atomic_write(output / ".bidsignore", ("\n".join(BIDS_IGNORE) + "\n").encode("utf-8"))
    for path in carried:
        atomic_write(output / path.name, path.read_bytes())
