"""``pediface model import``: bring someone else's nnU-Net model into pediface's model folder layout.

Understood (:func:`detect_layout`):

``v1`` / ``v1-zip``
    An nnU-Net v1 trained model (``3d_fullres/TaskNNN_X/nnUNetTrainerV2__nnUNetPlansv2.1/`` with ``plans.pkl``
    and ``fold_*/model_final_checkpoint.model(.pkl)``), or any folder or zip holding exactly one: what the
    paper's 2023-era tool ships. Converted to nnU-Net v2 by :mod:`training.nnunet_v1`.
``v2-folder`` / ``v2-zip``
    An nnU-Net v2 results folder (``plans.json``, ``dataset.json``, ``fold_*/checkpoint_final.pth``), or the
    zip ``nnUNetv2_export_model_to_zip`` writes.

Every kind ends as the layout of ``models/nnunet-face``, built in a sibling temporary folder and renamed into
place only when complete::

    plans.json  dataset.json  fold_<f>/checkpoint_final.pth  pediface-model.json  IMPORT.json  SHA256SUMS

The labels are renumbered 1 = face, 2 = ears (when there are ears), the others after them, by permuting the
rows of the network's output layers (exact); checkpoints are re-saved as plain data (loadable with
``weights_only=True``); ``IMPORT.json`` records the source's files and their sha256; and the folder is loaded
by pediface's own masker, and one patch run through the network, before the import counts as done.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from training.nnunet_v1 import Converted, convert
from training.safe_load import V1_CHECKPOINT, ModelImportError, load_torch, v1_model_dirs
from worker.deface.base import CHECKSUM_FILE
from worker.deface.base import sha256_of as sha256
from worker.deface.model_meta import MODEL_META, ModelMeta

V2_CHECKPOINT = "checkpoint_final.pth"
MAX_UNZIPPED_BYTES = 8 << 30
"""A zip that unpacks to more than this is refused (nnU-Net models are at most a few GB with 5 folds)."""

_FACE_NAMES = ("face", "face_mask", "facemask", "deface", "defacing")
_EAR_NAMES = ("ears", "ear")


def detect_layout(path: Path) -> str:
    """``"v1"``, ``"v1-zip"``, ``"v2-folder"`` or ``"v2-zip"``; :class:`ModelImportError` if none fits."""
    path = Path(path)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise ModelImportError(f"{path} is a file but not a zip archive")
        with zipfile.ZipFile(path) as archive:
            names = [PurePosixPath(n) for n in archive.namelist()]
        if any(n.name.startswith("checkpoint_") and n.suffix == ".pth" for n in names) and any(
            n.name == "plans.json" for n in names
        ):
            return "v2-zip"
        if any(n.name == f"{V1_CHECKPOINT}.pkl" for n in names):
            return "v1-zip"
        raise ModelImportError(f"{path}: no nnU-Net v1 or v2 model in this zip")
    if not path.is_dir():
        raise ModelImportError(f"{path} does not exist")
    v1, v2 = v1_model_dirs(path), _v2_model_dirs(path)
    if v1 and v2:
        raise ModelImportError(f"{path} holds nnU-Net v1 and v2 models; point at one of them")
    if v1 or v2:
        return "v1" if v1 else "v2-folder"
    raise ModelImportError(
        f"{path}: no nnU-Net model found (v1: fold_*/{V1_CHECKPOINT}.pkl; "
        "v2: plans.json, dataset.json and fold_*/checkpoint_*.pth)"
    )


def _v2_model_dirs(root: Path) -> list[Path]:
    return sorted(
        {
            plans.parent
            for plans in root.rglob("plans.json")
            if (plans.parent / "dataset.json").is_file() and any(plans.parent.glob("fold_*/checkpoint_*.pth"))
        }
    )


def _one(candidates: list[Path], what: str, select: str | None, root: Path) -> Path:
    """The single model folder; ``select`` (part of its path, e.g. ``Task070_X``) picks among several."""
    if select:
        candidates = [c for c in candidates if select in c.relative_to(root).as_posix()]
    if len(candidates) != 1:
        listing = "\n  ".join(str(c.relative_to(root)) for c in candidates) or "(none)"
        raise ModelImportError(
            f"expected one {what} model, found {len(candidates)}:\n  {listing}\n"
            "point at one, or pass --select PART"
        )
    return candidates[0]


def _safe_extract(archive_path: Path, into: Path) -> None:
    """Unzip refusing absolute paths, ``..``, links, and more than :data:`MAX_UNZIPPED_BYTES`."""
    with zipfile.ZipFile(archive_path) as archive:
        total = 0
        for info in archive.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ModelImportError(f"{archive_path}: refusing the unsafe member {info.filename!r}")
            total += info.file_size
            if total > MAX_UNZIPPED_BYTES:
                raise ModelImportError(f"{archive_path} unpacks to more than {MAX_UNZIPPED_BYTES >> 30} GiB")
        archive.extractall(into)


# -- nnU-Net v2 ---------------------------------------------------------------------------------------


def read_v2(model_dir: Path, fold: str | None = None) -> Converted:
    """An nnU-Net v2 results folder, checked and read as plain data."""
    plans = json.loads((model_dir / "plans.json").read_text(encoding="utf-8"))
    dataset = json.loads((model_dir / "dataset.json").read_text(encoding="utf-8"))
    folds = sorted(p for p in model_dir.glob("fold_*") if (p / V2_CHECKPOINT).is_file())
    if fold is not None:
        folds = [p for p in folds if p.name == f"fold_{fold}"]
    if not folds:
        raise ModelImportError(f"{model_dir}: no fold_{fold if fold is not None else '*'}/{V2_CHECKPOINT}")
    labels = dataset.get("labels", {})
    if any(isinstance(v, list | tuple) for v in labels.values()) or "regions_class_order" in dataset:
        raise ModelImportError("a region-based model (overlapping labels) is not a face and ear label map")
    values = sorted(int(v) for v in labels.values())
    if values != list(range(len(values))):
        raise ModelImportError(f"labels {labels} are not numbered 0..n-1")
    weights, configuration, trainer, mirror_axes = {}, None, None, None
    for fold_dir in folds:
        checkpoint = load_torch(fold_dir / V2_CHECKPOINT)
        configuration = checkpoint["init_args"]["configuration"]
        trainer = checkpoint["trainer_name"]
        mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
        if configuration not in plans["configurations"]:
            raise ModelImportError(f"{fold_dir}: configuration {configuration} is not in plans.json")
        weights[fold_dir.name.removeprefix("fold_")] = dict(checkpoint["network_weights"])
    return Converted(
        plans=plans,
        dataset=dataset,
        configuration=str(configuration),
        weights=weights,
        trainer=str(trainer),
        mirror_axes=tuple(mirror_axes) if mirror_axes else None,
        label_names={int(v): str(k) for k, v in labels.items() if int(v) > 0},
        record={"source_kind": "v2", "trainer": trainer, "dataset_name": plans.get("dataset_name")},
    )


# -- labels -------------------------------------------------------------------------------------------


def choose_labels(
    names: dict[int, str], count: int, face: int | None, ears: int | None
) -> tuple[int, int | None]:
    """The source's face and ear labels: the flags if given, else found by name; the face is required."""
    by_name = {name.lower(): value for value, name in names.items()}
    if face is None:
        face = next((by_name[n] for n in _FACE_NAMES if n in by_name), None)
        if ears is None:
            ears = next((by_name[n] for n in _EAR_NAMES if n in by_name), None)
    labels = list(range(1, count))
    if face is None:
        named = ", ".join(f"{v} {n}" for v, n in sorted(names.items())) or "no names shipped"
        raise ModelImportError(
            f"which label is the face? the model has labels {labels} ({named}): pass --face-label"
        )
    if face not in labels:
        raise ModelImportError(f"face label {face} is not one of the model's labels {labels}")
    if ears is not None and (ears not in labels or ears == face):
        raise ModelImportError(
            f"ear label {ears} is not one of the model's labels {labels} other than the face"
        )
    return face, ears


def label_order(count: int, face: int, ears: int | None) -> list[int]:
    """The source label of each output channel: background, face, ears (if any), then the others."""
    head = [face] + ([ears] if ears is not None else [])
    return [0, *head, *(label for label in range(1, count) if label not in head)]


def _labels(order: list[int], names: dict[int, str], ears: int | None) -> dict[str, int]:
    out = {"background": 0, "face": 1, **({"ears": 2} if ears is not None else {})}
    for new, old in enumerate(order[len(out) :], start=len(out)):
        name = names.get(old, f"label{old}")
        out[f"other_{name}" if name.lower() in ("background", "face", "ears", "ear") else name] = new
    return out


# -- the import ---------------------------------------------------------------------------------------


def import_model(
    path: Path,
    models: Path,
    *,
    name: str | None = None,
    fold: str | None = None,
    face_label: int | None = None,
    ear_label: int | None = None,
    orientation: str = "LPS",
    min_face_ml: float | None = None,
    select: str | None = None,
    allow_unknown_trainer: bool = False,
    check: bool = True,
) -> dict:
    """Install the model at ``path`` as the pediface model folder ``models/<name>`` (which must not exist).

    ``name`` defaults to the dataset's (``dataset990_pedifaceiso``). Returns the provenance record written as
    ``IMPORT.json`` plus ``installed`` (the folder) and ``labels``; raises :class:`ModelImportError` with a
    reason a person can act on when the source cannot be imported.
    """
    path, models = Path(path), Path(models)
    kind = detect_layout(path)
    with tempfile.TemporaryDirectory(prefix="pediface-import-") as unpacked:
        root = path
        if kind.endswith("zip"):
            root = Path(unpacked)
            _safe_extract(path, root)
        if kind.startswith("v1"):
            model_dir = _one(v1_model_dirs(root), "nnU-Net v1", select, root)
            source = convert(model_dir, fold, allow_unknown_trainer=allow_unknown_trainer)
            files = [
                p
                for p in model_dir.rglob("*")
                if p.is_file()
                and (p.name in ("plans.pkl", "postprocessing.json") or p.name.startswith(V1_CHECKPOINT))
            ]
        else:
            model_dir = _one(_v2_model_dirs(root), "nnU-Net v2", select, root)
            source = read_v2(model_dir, fold)
            files = [
                model_dir / "plans.json",
                model_dir / "dataset.json",
                *(model_dir / f"fold_{f}" / V2_CHECKPOINT for f in source.weights),
            ]
        count = len(source.dataset["labels"])
        face, ears = choose_labels(source.label_names, count, face_label, ear_label)
        order = label_order(count, face, ears)
        name = _name_of(name or source.plans.get("dataset_name") or model_dir.name)
        out_dir = models / name
        if out_dir.exists():
            raise ModelImportError(f"{out_dir} exists already: choose another --name, or remove it")
        meta = ModelMeta(
            name=name,
            folds=tuple(source.weights),
            orientation=orientation,
            min_face_ml=ModelMeta.min_face_ml if min_face_ml is None else min_face_ml,
        )
        record = {
            **source.record,
            "source_kind": kind,
            "source": str(path),
            "source_files": {str(p.relative_to(model_dir)): sha256(p) for p in sorted(files)},
            **({"source_zip_sha256": sha256(path)} if kind.endswith("zip") else {}),
            "configuration": source.configuration,
            "folds": list(source.weights),
            "label_map_source_to_output": {str(old): new for new, old in enumerate(order)},
        }
        labels = _labels(order, source.label_names, ears)
        _install(out_dir, source, order, labels, meta, record)
    if check:
        record["check"] = check_folder(out_dir)
    return {**record, "installed": str(out_dir), "labels": labels, "name": name}


def _name_of(dataset_name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", dataset_name.lower()).strip("-.") or "imported"


def _install(
    out_dir: Path, source: Converted, order: list[int], labels: dict[str, int], meta: ModelMeta, record: dict
) -> None:
    """Write the folder next to ``out_dir`` and rename it into place when complete."""
    import torch

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        dataset = {**source.dataset, "labels": labels}
        (staging / "plans.json").write_text(json.dumps(source.plans, indent=2) + "\n")
        (staging / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
        for fold_id, weights in source.weights.items():
            weights = dict(weights)
            outputs = [k for k in weights if re.search(r"(^|\.)seg_layers\.\d+\.(weight|bias)$", k)]
            if not outputs:
                raise ModelImportError("the network has no seg_layers: not a U-Net nnU-Net v2 can load")
            for key in outputs:
                weights[key] = weights[key][order].clone()
            (staging / f"fold_{fold_id}").mkdir()
            torch.save(
                {
                    "network_weights": weights,
                    "init_args": {
                        "plans": source.plans,
                        "configuration": source.configuration,
                        "fold": fold_id,
                        "dataset_json": dataset,
                    },
                    "trainer_name": source.trainer,
                    "inference_allowed_mirroring_axes": source.mirror_axes,
                },
                staging / f"fold_{fold_id}" / V2_CHECKPOINT,
            )
        (staging / MODEL_META).write_text(meta.to_json())
        (staging / "IMPORT.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        listed = [
            "dataset.json",
            "plans.json",
            MODEL_META,
            "IMPORT.json",
            *(f"fold_{f}/{V2_CHECKPOINT}" for f in source.weights),
        ]
        (staging / CHECKSUM_FILE).write_text("".join(f"{sha256(staging / f)}  {f}\n" for f in listed))
        staging.chmod(0o755)  # mkdtemp makes it private; a model folder is read by every worker
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_folder(out_dir: Path) -> dict[str, Any]:
    """Load the folder with pediface's masker (checksums, labels, grid) and run one patch through it."""
    import torch

    from worker.deface import load_masker

    masker = load_masker("nnunet", out_dir, device="cpu")
    predictor = masker._predictor  # noqa: SLF001 - the network the masker will run
    patch = [int(p) for p in predictor.configuration_manager.patch_size]
    channels = len(predictor.dataset_json["channel_names"])
    with torch.no_grad():
        logits = predictor.network.eval()(torch.zeros((1, channels, *patch)))
    if not torch.isfinite(logits).all():
        raise ModelImportError("the imported network gives non-finite output")
    return {
        "loaded": masker.name,
        "patch_size": patch,
        "outputs": int(logits.shape[1]),
        "spacing_zyx_mm": list(masker.spacing_zyx),
        "mirroring": masker._predictor.allowed_mirroring_axes,
    }  # noqa: SLF001
