"""Deface one item: a NIfTI/MGZ volume or a DICOM series, into a staging folder.

:class:`Defacer` holds the masker (built once per process, on first use: it is the slow part) and
runs the worker's own pipeline: for DICOM :func:`worker.pipeline.deface_series` exactly as the
gateway's workers do (stacks split, every stack masked, pixels blanked in the original instances,
headers de-identified per PS3.15 Annex E with the keyed pseudonyms); for NIfTI/MGZ the masker on the
volume and the mask blanked in the stored values. Nothing is written outside the item's staging
folder; :mod:`batch.run` renames the files into place once the item is complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from batch import images
from batch.discover import DicomSeries, Item, NiftiItem
from batch.outputs import DEFACED, QUARANTINED, dicom_series_folder, nifti_outputs, qc_picture
from common.errors import InputError, PedifaceError
from common.logs import get_logger
from config.settings import Settings
from worker.deface.base import FaceMasker
from worker.types import FaceMask, Volume

log = get_logger("pediface.batch")


@dataclass(frozen=True)
class Outcome:
    """What became of one item: staged files and their places under OUTPUT, or why it was not defaced."""

    index: int
    verdict: str
    reason: str = ""
    code: str = ""
    seconds: float = 0.0
    moves: tuple[tuple[Path, PurePosixPath], ...] = ()
    output: str = ""
    details: dict[str, float | str] = field(default_factory=dict)


class Defacer:
    """Defaces items one at a time with one masker (build it once per process).

    Parameters
    ----------
    settings : Settings
        deface (masker, margin, ears, mask SEG) and deid (profile, key, lookup) sections.
    staging : Path
        ``OUTPUT/.pediface-partial``: each item gets a folder of its own in it.
    qc_dir : Path or None
        Where before/after pictures go (never OUTPUT: the "before" shows the face); None: no pictures.
    """

    def __init__(self, settings: Settings, staging: Path, qc_dir: Path | None) -> None:
        self.settings = settings
        self.staging = staging
        self.qc_dir = qc_dir
        self._masker: FaceMasker | None = None
        self._policy = None
        self._key: bytes | None = None

    @property
    def masker(self) -> FaceMasker:
        if self._masker is None:
            from worker.deface import build_masker

            started = time.perf_counter()
            self._masker = build_masker(self.settings)
            log.info(
                "masker_loaded", masker=self._masker.name, seconds=round(time.perf_counter() - started, 1)
            )
        return self._masker

    def run(self, index: int, item: Item) -> Outcome:
        """Deface ``item``; a refusal or any failure is a quarantined outcome, never an exception."""
        started = time.perf_counter()
        stage = self.staging / f"item-{index:06d}"
        stage.mkdir(parents=True, exist_ok=True)
        try:
            if isinstance(item, DicomSeries):
                outcome = self._dicom(index, item, stage)
            else:
                outcome = self._nifti(index, item, stage)
        except PedifaceError as exc:
            log.warning("item_quarantined", item=index, code=exc.code, reason=str(exc))
            outcome = Outcome(index, QUARANTINED, str(exc), exc.code)
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop the batch; the log has the trace
            log.exception("item_failed", item=index)
            outcome = Outcome(
                index, QUARANTINED, f"internal error ({type(exc).__name__}); see the log", "internal"
            )
        seconds = round(time.perf_counter() - started, 2)
        return Outcome(**{**outcome.__dict__, "seconds": seconds})

    # -- NIfTI / MGZ -------------------------------------------------------------------------------

    def _nifti(self, index: int, item: NiftiItem, stage: Path) -> Outcome:
        image = images.load(item.path)
        data = images.stored(image)
        volume = images.to_volume(image, data)
        mask = self.masker.predict(volume)
        blank = mask.blank(include_ears=self.settings.deface.remove_ears)
        if not blank.any():
            raise InputError("the face mask is empty: nothing would be removed", code="mask.empty")
        background = volume.array.min()
        defaced = np.where(blank, background, volume.array).astype(volume.array.dtype)
        defaced_path, mask_path = nifti_outputs(item)
        moves = [(images.save_like(image, defaced, stage / "defaced" / defaced_path.name), defaced_path)]
        if mask_path is not None:
            moves.append(
                (
                    images.save_like(image, mask.labels, stage / "mask" / mask_path.name, label_map=True),
                    mask_path,
                )
            )
        if item.sidecar is not None:
            sidecar = stage / "sidecar" / item.sidecar.name
            sidecar.parent.mkdir()
            sidecar.write_bytes(item.sidecar.read_bytes())
            moves.append((sidecar, defaced_path.with_name(item.sidecar.name)))
        self._qc(volume, defaced, mask, qc_picture(item, defaced_path))
        return Outcome(
            index, DEFACED, moves=tuple(moves), output=str(defaced_path), details=dict(mask.details)
        )

    # -- DICOM -------------------------------------------------------------------------------------

    def _dicom(self, index: int, item: DicomSeries, stage: Path) -> Outcome:
        from worker.deid import DeidPolicy
        from worker.pipeline import deface_series
        from worker.volume.read import read_instances

        if self._policy is None:
            self._policy = DeidPolicy.from_settings(self.settings.deid)
            self._key = self.settings.deid_key()
        assert self._key is not None
        datasets = read_instances(list(item.files))
        result = deface_series(
            datasets,
            self.masker,
            self._policy,
            self._key,
            remove_ears=self.settings.deface.remove_ears,
            mask_segmentation=self.settings.deface.send_mask_seg,
            no_face_in_fov=self.settings.deface.no_face_in_fov,
        )
        first = result.datasets[0]
        folder = dicom_series_folder(
            str(first.get("PatientID", "")), str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        )
        moves = [(self._save_series(result.datasets, stage / "series"), folder)]
        if result.segmentation is not None:
            seg = result.segmentation
            seg_folder = folder.with_name(str(seg.SeriesInstanceUID))
            moves.append((self._save_series([seg], stage / "segmentation"), seg_folder))
        self._qc(result.before, result.after.array, result.mask, qc_picture(item, folder))
        details: dict[str, float | str] = {
            "instances": len(result.datasets),
            "stacks": len(result.stacks),
            **{f"filtered_{k}": v for k, v in result.filtered_counts.items()},
        }
        # deface.no_face_in_fov: deidentify sends a series without a face in view de-identified only.
        reason = "" if result.blanked_voxels else "no face in field of view: de-identified, nothing to blank"
        return Outcome(index, DEFACED, reason=reason, moves=tuple(moves), output=str(folder), details=details)

    @staticmethod
    def _save_series(datasets: list, folder: Path) -> Path:
        folder.mkdir(parents=True)
        for ds in datasets:
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        return folder

    # -- QC ----------------------------------------------------------------------------------------

    def _qc(self, before: Volume, after_array: np.ndarray, mask: FaceMask, relative: PurePosixPath) -> None:
        if self.qc_dir is None:
            return
        from worker.qc import render_before_after

        target = self.qc_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        after = Volume(after_array, before.spacing, before.origin, before.direction, before.sources)
        try:
            render_before_after(before, after, mask, target)
        except Exception:  # noqa: BLE001 - a picture that fails must not fail a defaced item
            log.exception("qc_picture_failed")
