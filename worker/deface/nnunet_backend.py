"""The seam between the face masker and the network it runs: nnU-Net's own predictor on torch, or the
model's ONNX export (:mod:`worker.deface.onnx_backend`) on CPU.

:func:`load_backend` chooses when the masker is built: torch on CUDA when a GPU is usable, for several
folds and for model folders without an ONNX export; the ONNX export on CPU otherwise. This is the only
module that imports torch or nnunetv2, and only when the torch backend is built, never at import time.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from common.logs import get_logger
from worker.deface.base import verify_model_dir
from worker.deface.model_meta import MODEL_META, ModelMeta

REQUIRED = ("dataset.json", "plans.json")
"""Files every nnU-Net v2 model folder holds beside its folds' checkpoints."""

log = get_logger("pediface.worker.nnunet")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """nnU-Net prints to stdout (e.g. on every CPU predictor it builds): into the log, at debug level."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        yield
    if printed.getvalue().strip():
        log.debug("nnunet_printed", text=printed.getvalue().strip())


def verify_nnunet_dir(
    model_dir: Path, folds: tuple[str, ...] | None = None, checkpoint: str = "checkpoint_final.pth"
) -> dict[str, str]:
    """Check the folder's ``SHA256SUMS``: every listed file must match, and the plans, the dataset, the
    model description (when there is one) and each fold's checkpoint must be listed.

    ``folds``: the ones to load; None: those ``pediface-model.json`` names (fold 0 without one).
    """
    model_dir = Path(model_dir)
    described = (model_dir / MODEL_META).exists()
    # The description is read before it is verified only to know which folds to require: it is listed,
    # so a changed one fails the same check.
    folds = folds or ModelMeta.read(model_dir).folds
    required = (*REQUIRED, *((MODEL_META,) if described else ()), *(f"fold_{f}/{checkpoint}" for f in folds))
    return verify_model_dir(model_dir, required)


def cuda_device_present() -> bool:
    """Whether this machine shows an NVIDIA GPU to this process, found without importing torch.

    The device nodes (or the driver's GPU list) are a cheap first test; only when they are there is
    torch imported to ask whether it can use one (a CPU build of torch cannot).
    """
    if not (any(Path("/dev").glob("nvidia[0-9]*")) or any(Path("/proc/driver/nvidia/gpus").glob("*"))):
        return False
    import torch

    return bool(torch.cuda.is_available())


class NnUNetBackend(Protocol):
    """Runs one nnU-Net network on arrays already on the model's grid: what the masker needs of it."""

    spacing: tuple[float, ...]  # the configuration's spacing (nnU-Net's transposed axis order)
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    allowed_mirroring_axes: tuple[int, ...] | None  # the axes the model was trained mirrored on
    device: str  # "cpu" or "cuda"

    def mirror(self, axes: tuple[int, ...] | None) -> None:
        """Test-time mirroring on these axes of the (transposed) network input; None: none."""
        ...

    def predict(self, array: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """The model's label values, shaped like the (z, y, x) ``array`` given at ``spacing`` (mm)."""
        ...

    def describe(self) -> str:
        """Short name for the mask's details (``"torch (cpu)"``, ``"onnx (openvino, float32)"``)."""
        ...


class TorchBackend:
    """nnU-Net v2's own ``nnUNetPredictor``: CUDA, several folds, and folders without an ONNX export."""

    def __init__(
        self, model_dir: Path, folds: tuple[str, ...], checkpoint: str, device: str, threads: int | None
    ) -> None:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        if threads is not None:
            torch.set_num_threads(threads)
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
        self.device = device
        with _quiet():
            self._predictor = nnUNetPredictor(
                tile_step_size=0.5,
                use_gaussian=True,
                use_mirroring=True,
                perform_everything_on_device=device == "cuda",
                device=torch.device(device),
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            self._predictor.initialize_from_trained_model_folder(
                str(model_dir),
                use_folds=tuple(int(f) if f.isdigit() else f for f in folds),
                checkpoint_name=checkpoint,
            )
        self.spacing = tuple(float(v) for v in self._predictor.configuration_manager.spacing)
        self.transpose_forward = tuple(int(a) for a in self._predictor.plans_manager.transpose_forward)
        self.transpose_backward = tuple(int(a) for a in self._predictor.plans_manager.transpose_backward)
        allowed = self._predictor.allowed_mirroring_axes
        self.allowed_mirroring_axes = None if allowed is None else tuple(int(a) for a in allowed)

    def mirror(self, axes: tuple[int, ...] | None) -> None:
        self._predictor.use_mirroring = axes is not None
        self._predictor.allowed_mirroring_axes = axes

    def predict(self, array: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        with _quiet():
            labels = self._predictor.predict_single_npy_array(
                array[None].astype(np.float32), {"spacing": [float(s) for s in spacing]}, None, None, False
            )
        return np.asarray(labels)

    def describe(self) -> str:
        return f"torch ({self.device})"


def onnx_export_of(model_dir: Path, fold: str, checkpoint: str, checksums: dict[str, str]) -> Path | None:
    """The fold's ONNX export (``.onnx`` beside the checkpoint) if the folder's SHA256SUMS lists it."""
    name = f"fold_{fold}/{Path(checkpoint).with_suffix('.onnx').name}"
    return model_dir / name if name in checksums else None


def load_backend(
    model_dir: Path,
    checksums: dict[str, str],
    *,
    folds: tuple[str, ...],
    checkpoint: str,
    device: str,
    threads: int | None,
    backend: str = "auto",
    precision: str = "auto",
    runtime: str = "auto",
) -> NnUNetBackend:
    """The backend to predict with: torch on CUDA when a GPU is usable (``device`` ``"auto"`` or
    ``"cuda"``); else, for one fold whose ONNX export the folder lists and with a runtime installed,
    the export on CPU; else torch on CPU. ``backend`` (``"auto"``, ``"onnx"``, ``"torch"``) forces one."""
    if backend not in ("auto", "onnx", "torch"):
        raise ValueError(f"backend must be 'auto', 'onnx' or 'torch', got {backend!r}")
    if device == "cuda" or (device == "auto" and backend != "onnx" and cuda_device_present()):
        if backend == "onnx":
            raise ValueError("the ONNX backend runs on CPU only; use device 'cpu' or backend 'torch'")
        return TorchBackend(model_dir, folds, checkpoint, "cuda", threads)
    exported = onnx_export_of(model_dir, folds[0], checkpoint, checksums) if len(folds) == 1 else None
    if backend != "torch":
        from worker.deface.onnx_backend import OnnxBackend, UnsupportedModel, available_runtime

        if exported is not None and available_runtime(runtime) is not None:
            try:
                onnx = OnnxBackend(
                    exported,
                    json.loads((model_dir / "plans.json").read_text()),
                    json.loads((model_dir / "dataset.json").read_text()),
                    threads=threads,
                    precision=precision,
                    runtime=runtime,
                )
            except UnsupportedModel as unsupported:
                if backend == "onnx":
                    raise
                log.warning("onnx_backend_unsupported", model=str(model_dir), reason=str(unsupported))
                return TorchBackend(model_dir, folds, checkpoint, "cpu", threads)
            source = onnx.metadata.get("pediface.checkpoint_sha256")
            if source != checksums.get(f"fold_{folds[0]}/{checkpoint}"):
                raise ValueError(
                    f"{exported} was exported from another checkpoint than fold_{folds[0]}/{checkpoint}: "
                    "export it again (python -m training.export_onnx)"
                )
            return onnx
        if backend == "onnx":
            raise ValueError(
                f"backend 'onnx' asked for, but {model_dir} lists no ONNX export of fold {folds[0]}"
                if exported is None
                else f"backend 'onnx' asked for, but the ONNX runtime {runtime!r} is not installed"
            )
    return TorchBackend(model_dir, folds, checkpoint, "cpu", threads)
