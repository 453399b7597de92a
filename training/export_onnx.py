"""Export an nnU-Net model folder's network to ONNX, for the worker's CPU backend (no torch at run time).

``python -m training.export_onnx models/nnunet-face`` writes ``fold_0/checkpoint_final.onnx`` beside the
checkpoint, with dynamic batch and spatial axes (tiles of any size the network's strides divide), and
adds it to the folder's ``SHA256SUMS``. The ONNX file records which checkpoint it came from (its sha256),
the nnU-Net configuration and trainer, and the mirroring axes the model was trained for; the worker
refuses an ONNX file whose checkpoint is not the one the folder lists (a re-trained checkpoint with a
stale export). Before writing, the exported network is run with ONNX Runtime beside torch on random
tiles and must agree with it.

Needs torch, nnunetv2, onnx and onnxruntime (the ``worker`` and ``training`` extras).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

OPSET = 17
"""ONNX opset of the export: InstanceNormalization, ConvTranspose and LeakyRelu are native operators."""

MAX_LOGIT_DIFFERENCE = 1e-3
"""Largest absolute difference between torch's and ONNX Runtime's logits accepted by the check."""

METADATA_PREFIX = "pediface."
"""Prefix of the metadata keys the worker reads (``pediface.checkpoint_sha256`` and so on)."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_onnx(model_dir: Path, fold: int = 0, checkpoint: str = "checkpoint_final.pth") -> Path:
    """Export ``model_dir``'s network of one fold to ONNX and list it in ``SHA256SUMS``; returns its path.

    Raises
    ------
    ValueError
        If the folder fails its checksum check, or ONNX Runtime's result differs from torch's.
    """
    import onnx
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from worker.deface.nnunet_backend import verify_nnunet_dir

    model_dir = Path(model_dir)
    verify_nnunet_dir(model_dir, fold, checkpoint)
    checkpoint_path = model_dir / f"fold_{fold}" / checkpoint
    saved = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(
        str(model_dir), use_folds=(fold,), checkpoint_name=checkpoint
    )
    network = predictor.network
    network.load_state_dict(predictor.list_of_parameters[0])
    network.eval()
    patch = [int(v) for v in predictor.configuration_manager.patch_size]
    channels = len(predictor.dataset_json["channel_names"])
    sample = torch.randn(1, channels, *patch)
    axes = {0: "batch", **{2 + i: f"spatial_{i}" for i in range(len(patch))}}
    target = checkpoint_path.with_suffix(".onnx")
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "network.onnx"
        torch.onnx.export(
            network,
            (sample,),
            str(raw),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
            opset_version=OPSET,
            dynamo=False,
        )
        model = onnx.load(str(raw))
    metadata = {
        "checkpoint": f"fold_{fold}/{checkpoint}",
        "checkpoint_sha256": _sha256(checkpoint_path),
        "configuration": str(saved["init_args"]["configuration"]),
        "trainer": str(saved["trainer_name"]),
        "mirroring_axes": json.dumps([int(a) for a in saved.get("inference_allowed_mirroring_axes") or ()]),
        "torch": torch.__version__,
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    _check_against_torch(network, data, channels, patch)
    target.write_bytes(data)
    _list_in_sums(model_dir, target.relative_to(model_dir).as_posix())
    return target


def _check_against_torch(network: object, data: bytes, channels: int, patch: list[int]) -> None:
    """ONNX Runtime's logits must match torch's on random tiles: one patch, and a batch of a larger tile."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in ([1, channels, *patch], [2, channels, *[p + 16 for p in patch]]):
        tile = rng.standard_normal(shape).astype(np.float32)
        with torch.inference_mode():
            expected = network(torch.from_numpy(tile)).numpy()  # type: ignore[operator]
        actual = session.run(None, {"image": tile})[0]
        difference = float(np.abs(actual - expected).max())
        if difference > MAX_LOGIT_DIFFERENCE:
            raise ValueError(f"ONNX Runtime's logits differ from torch's by {difference:g} on a {shape} tile")


def _list_in_sums(model_dir: Path, name: str) -> None:
    """Add (or update) ``name``'s line in the folder's SHA256SUMS, keeping the other lines as they are."""
    sums = model_dir / "SHA256SUMS"
    lines = [
        line for line in sums.read_text().splitlines() if line.strip() and not line.endswith(f"  {name}")
    ]
    lines.append(f"{_sha256(model_dir / name)}  {name}")
    sums.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export_onnx", description=__doc__)
    parser.add_argument("model_dir", type=Path, help="an nnU-Net model folder (e.g. models/nnunet-face)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    args = parser.parse_args(argv)
    path = export_onnx(args.model_dir, args.fold, args.checkpoint)
    print(f"wrote {path} and listed it in {args.model_dir / 'SHA256SUMS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
