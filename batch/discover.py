"""What is in a researcher's folder: typed items to deface, and what is skipped and why.

:func:`discover` takes any of

* one NIfTI or MGZ file;
* a BIDS dataset (``dataset_description.json`` at the top): every ``sub-*/[ses-*/]anat/`` image, with
  its JSON sidecar;
* a DICOMDIR, or a folder with a DICOMDIR at its top (a CD or a PACS export): the files it lists;
* any other folder, walked to any depth: NIfTI/MGZ files, and DICOM files grouped into series by
  Study and Series Instance UID wherever they lie (one folder per series, a whole study or patient
  mixed in one folder, or both).

Only headers are read (``stop_before_pixels``, a handful of tags), so discovery is quick and
nothing here needs numpy or torch. Files that are neither DICOM nor images (sidecars, licences,
thumbnails, hidden files) and series that are not head images (reports, presentation states,
spectroscopy, localisers, another body part) are returned as :class:`Skipped` with a reason a
person can read; reasons never carry header values that could identify anyone.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")
"""File names taken as volumes to deface (NIfTI-1/2, FreeSurfer MGH/MGZ)."""

HEADER_TAGS = (
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "ImageType",
    "BodyPartExamined",
    "SeriesDescription",
    "ProtocolName",
    "NumberOfFrames",
)
"""The only attributes discovery reads (by keyword)."""

MODALITIES = ("MR", "CT")
"""Modalities whose series are defaced; others are skipped."""

MIN_FRAMES = 8
"""Fewest image frames in a series worth trying (the pipeline needs 8 slices per stack)."""

_HEAD_PARTS = re.compile(
    r"head|brain|skull|face|neck|orbit|\bear|iac|sinus|pituitar|spine|jaw|tmj|nose|eye|cran|cereb|sella|"
    r"temporal|mandib|maxill|dental|neuro",
    re.IGNORECASE,
)
"""Body Part Examined values taken as (possibly) a head; a series naming another part is skipped."""

_LOCALISER_NAMES = re.compile(r"locali[sz]er|scout|survey|tri-?pilot|3-?plane", re.IGNORECASE)
"""Series descriptions / protocol names of localisers that do not say so in Image Type."""

_LOCALISER_TYPES = {"LOCALIZER", "LOCALISER", "SCOUT"}

_BIDS_SKIPPED_FOLDERS = ("derivatives", "sourcedata", "code")
"""Top-level folders of a BIDS dataset that hold no raw images to deface."""


def is_image_file(path: Path) -> bool:
    """A NIfTI or MGZ file, by its name."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def image_stem(path: Path) -> tuple[str, str]:
    """``("sub-01_T1w", ".nii.gz")``: a volume file's name without and with its (double) suffix."""
    lower = path.name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return path.name[: -len(suffix)], path.name[-len(suffix) :]
    return path.stem, path.suffix


@dataclass(frozen=True)
class NiftiItem:
    """One NIfTI or MGZ volume; ``bids`` is its path inside a BIDS dataset, if it is in one."""

    path: Path
    label: str
    bids: PurePosixPath | None = None
    sidecar: Path | None = None

    @property
    def kind(self) -> str:
        return "bids" if self.bids is not None else "nifti"


@dataclass(frozen=True)
class DicomSeries:
    """The files of one DICOM series (every instance with its Series Instance UID, wherever it lay)."""

    files: tuple[Path, ...]
    label: str
    study_uid: str
    series_uid: str
    modality: str
    frames: int
    kind: ClassVar[str] = "dicom"


Item = NiftiItem | DicomSeries


@dataclass(frozen=True)
class Skipped:
    """A file, folder or series not defaced, and why. ``kind``: ``file``, ``folder``, ``dicom``, ``bids``."""

    label: str
    reason: str
    kind: str = "file"


@dataclass(frozen=True)
class Discovery:
    """The result of :func:`discover`.

    ``layout`` is ``"file"``, ``"folder"``, ``"dicomdir"`` or ``"bids"``; ``bids_description`` is the
    source's ``dataset_description.json`` and ``carried`` the dataset-level files (top-level JSON
    sidecars, README, LICENSE) a BIDS derivative takes over.
    """

    root: Path
    layout: str
    items: tuple[Item, ...]
    skipped: tuple[Skipped, ...]
    bids_description: dict | None = None
    carried: tuple[Path, ...] = field(default=())


class _Labels:
    """Paths relative to the input root, as people read them (``study/series1/IM0001``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, path: Path) -> str:
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return str(path)
        return relative.as_posix() if relative.parts else self.root.name


def discover(path: Path, *, on_file: Callable[[int], None] | None = None) -> Discovery:
    """Find every volume to deface under ``path``.

    Parameters
    ----------
    path : Path
        A NIfTI/MGZ file, a DICOMDIR, or a folder (BIDS, DICOM, NIfTI, or mixed).
    on_file : callable, optional
        Called with the number of files looked at so far (for a progress display).

    Returns
    -------
    Discovery
        Items in a stable order (by label), and what was skipped.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is a file that is neither a volume nor a DICOMDIR.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        if is_image_file(path):
            return Discovery(path.parent, "file", (NiftiItem(path, path.name),), ())
        if path.name.upper() == "DICOMDIR":
            return _from_dicomdir(path, path.parent, on_file)
        raise ValueError(f"{path} is not a NIfTI or MGZ file, a DICOMDIR, or a folder")
    if (path / "dataset_description.json").is_file():
        return _from_bids(path)
    dicomdir = next((p for p in sorted(path.iterdir()) if p.is_file() and p.name.upper() == "DICOMDIR"), None)
    if dicomdir is not None:
        return _from_dicomdir(dicomdir, path, on_file)
    return _from_folder(path, on_file)


# -- walking ------------------------------------------------------------------------------------


def _walk(
    root: Path, skipped: list[Skipped], label: _Labels, skip_dirs: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Every visible file under ``root`` in a stable order; hidden files and folders are noted as skipped."""
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in sorted(dirs):
            if name.startswith(".") or (here == root and name in skip_dirs):
                why = "hidden folder" if name.startswith(".") else f"{name}/ holds no raw images to deface"
                skipped.append(Skipped(label(here / name), why, "folder"))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here == root and d in skip_dirs))
        for name in sorted(files):
            if name.startswith("."):
                skipped.append(Skipped(label(here / name), "hidden file"))
            else:
                yield here / name


def _from_folder(root: Path, on_file: Callable[[int], None] | None) -> Discovery:
    label = _Labels(root)
    skipped: list[Skipped] = []
    items: list[Item] = []
    headers = []
    for count, path in enumerate(_walk(root, skipped, label), start=1):
        if on_file is not None:
            on_file(count)
        if is_image_file(path):
            items.append(NiftiItem(path, label(path)))
        elif path.name.upper() == "DICOMDIR":
            skipped.append(
                Skipped(label(path), "DICOMDIR index below the top folder: its files are read where they lie")
            )
        else:
            header = _header_or_skip(path, label, skipped)
            if header is not None:
                headers.append((path, header))
    series, not_series = _series(headers, label)
    return Discovery(root, "folder", _sorted(items + series), tuple(skipped + not_series))


def _from_dicomdir(dicomdir: Path, root: Path, on_file: Callable[[int], None] | None) -> Discovery:
    """The instances a DICOMDIR lists (PS3.10 File-set); files it does not list are not read."""
    from pydicom import dcmread
    from pydicom.fileset import FileSet

    label = _Labels(root)
    try:
        fileset = FileSet(dcmread(dicomdir))
    except Exception as exc:  # noqa: BLE001 - any parse failure: say so, and name the file
        raise ValueError(f"{dicomdir} is not a readable DICOMDIR: {exc}") from exc
    skipped = [Skipped(label(dicomdir), "DICOMDIR index: the files it lists are read")]
    headers = []
    for count, instance in enumerate(fileset, start=1):
        if on_file is not None:
            on_file(count)
        path = Path(instance.path)
        if not path.is_file():
            skipped.append(Skipped(label(path), "listed in the DICOMDIR but missing"))
            continue
        header = _header_or_skip(path, label, skipped)
        if header is not None:
            headers.append((path, header))
    series, not_series = _series(headers, label)
    return Discovery(root, "dicomdir", _sorted(series), tuple(skipped + not_series))


def _from_bids(root: Path) -> Discovery:
    """Every ``anat/`` image of a BIDS dataset; other images are listed as skipped."""
    label = _Labels(root)
    try:
        description = json.loads((root / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{root / 'dataset_description.json'} is not valid JSON: {exc}") from exc
    skipped: list[Skipped] = []
    items: list[Item] = []
    carried = []
    for path in _walk(root, skipped, label, _BIDS_SKIPPED_FOLDERS):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if len(relative.parts) == 1:
            if (
                path.suffix == ".json"
                and path.name != "dataset_description.json"
                or path.name in ("README", "README.md", "README.txt", "LICENSE")
            ):
                carried.append(path)
            continue
        if not is_image_file(path):
            continue  # BIDS metadata (sidecars, tables, bvec/bval) travels with its image or stays
        datatype = relative.parts[-2]
        if relative.parts[0].startswith("sub-") and datatype == "anat":
            stem, _ = image_stem(path)
            sidecar = path.with_name(stem + ".json")
            items.append(NiftiItem(path, label(path), relative, sidecar if sidecar.is_file() else None))
        else:
            skipped.append(Skipped(label(path), f"{datatype}/ image: only anat/ images are defaced", "bids"))
    return Discovery(root, "bids", _sorted(items), tuple(skipped), description, tuple(carried))


def _sorted(items: list[Item]) -> tuple[Item, ...]:
    return tuple(sorted(items, key=lambda item: item.label))


# -- DICOM --------------------------------------------------------------------------------------


def _header_or_skip(path: Path, label: _Labels, skipped: list[Skipped]):  # noqa: ANN202 - pydicom Dataset
    from pydicom import dcmread

    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except Exception:  # noqa: BLE001 - pydicom raises many kinds on a file that is not DICOM
        skipped.append(Skipped(label(path), "not a DICOM, NIfTI or MGZ file"))
        return None
    if not header.get("SeriesInstanceUID") or not header.get("StudyInstanceUID"):
        if str(getattr(header.get("file_meta"), "MediaStorageSOPClassUID", "")) == _DIRECTORY_CLASS:
            skipped.append(Skipped(label(path), "DICOM directory (DICOMDIR) under another name"))
        else:
            skipped.append(Skipped(label(path), "DICOM file without Study and Series Instance UIDs"))
        return None
    return header


_DIRECTORY_CLASS = "1.2.840.10008.1.3.10"


def sop_class_kind(uid: str) -> str:
    """``"image"``, or what else an instance of this SOP class is, in words."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else "unknown SOP class"
    if "Spectroscopy" in name:
        return "MR spectroscopy"
    if "Presentation State" in name:
        return "presentation state"
    if " SR " in f" {name} " or "Key Object" in name or "Document" in name:
        return "structured report"
    if "Raw Data" in name:
        return "raw data"
    if "Image Storage" in name:
        return "image"
    return f"non-image object ({name})"


def _series(headers: list, label: _Labels) -> tuple[list[Item], list[Skipped]]:
    """Group headers by (Study, Series) UID; each group is a :class:`DicomSeries` or a :class:`Skipped`."""
    groups: dict[tuple[str, str], list] = {}
    for path, header in headers:
        groups.setdefault((str(header.StudyInstanceUID), str(header.SeriesInstanceUID)), []).append(
            (path, header)
        )
    folders = {key: _common_folder([p for p, _ in members]) for key, members in groups.items()}
    shared = Counter(folders.values())
    items: list[Item] = []
    skipped: list[Skipped] = []
    used: Counter[str] = Counter()
    for key in sorted(groups, key=lambda k: (folders[k], _series_number(groups[k]))):
        members = groups[key]
        folder = label(folders[key])
        name = folder if shared[folders[key]] == 1 else f"{folder} (series {_series_number(members)})"
        used[name] += 1
        if used[name] > 1:
            name = f"{name} #{used[name]}"
        reason = _why_not(members)
        if reason is not None:
            skipped.append(Skipped(name, reason, "dicom"))
            continue
        images = [h for _, h in members if sop_class_kind(str(h.get("SOPClassUID", ""))) == "image"]
        modality = Counter(str(h.get("Modality", "")) for h in images).most_common(1)[0][0]
        items.append(
            DicomSeries(
                files=tuple(sorted(p for p, _ in members)),
                label=name,
                study_uid=key[0],
                series_uid=key[1],
                modality=modality,
                frames=sum(_frames(h) for h in images),
            )
        )
    return items, skipped


def _why_not(members: list) -> str | None:
    """Why a series is not a head image to deface, or None when it is worth trying."""
    kinds = Counter(sop_class_kind(str(h.get("SOPClassUID", ""))) for _, h in members)
    images = [h for _, h in members if sop_class_kind(str(h.get("SOPClassUID", ""))) == "image"]
    if not images:
        return f"{kinds.most_common(1)[0][0]}, not an image"
    modalities = {str(h.get("Modality", "")) for h in images}
    if not modalities & set(MODALITIES):
        return f"modality {'/'.join(sorted(modalities)) or 'missing'}: only MR and CT are defaced"
    if all({str(v).upper() for v in (h.get("ImageType") or [])} & _LOCALISER_TYPES for h in images):
        return "localiser (Image Type)"
    first = images[0]
    if any(_LOCALISER_NAMES.search(str(first.get(k, ""))) for k in ("SeriesDescription", "ProtocolName")):
        return "localiser (series description)"
    part = str(first.get("BodyPartExamined", "")).strip()
    if part and not _HEAD_PARTS.search(part):
        return f"body part {part}, not a head"
    frames = sum(_frames(h) for h in images)
    if frames < MIN_FRAMES:
        return f"{frames} image frame(s): too few slices for a 3D head"
    return None


def _frames(header) -> int:  # noqa: ANN001 - pydicom Dataset
    try:
        return max(1, int(header.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _series_number(members: list) -> str:
    numbers = sorted({str(h.get("SeriesNumber", "")).strip() for _, h in members} - {""})
    return numbers[0] if numbers else "?"


def _common_folder(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))
