"""nnU-Net v2 inference on CPU from an ONNX export of the network: numpy, scipy and an ONNX runtime only.

The face masker's default CPU backend (:mod:`worker.deface.nnunet` picks it when the model folder lists
an ``.onnx`` export and no CUDA device is present): it needs neither torch nor nnunetv2, which cost a
worker process 3-4.5 s and ~470 MB to import, and runs the network two to three times faster.

It follows nnU-Net v2's own inference for one case given as an array (``nnUNetPredictor.
predict_single_npy_array``, nnunetv2 2.8) step by step, written here from its documented behaviour:

1. transpose the axes as the plans say (``transpose_forward``);
2. crop to the bounding box of the non-zero voxels, holes filled (``crop_to_nonzero``);
3. normalise each channel with its scheme from the plans (z-score over the crop, or only inside the
   non-zero mask when ``use_mask_for_norm``; CT clipping and scaling; rescale to 0-1; none);
4. the input must already be at the model's spacing (the masker resamples it); nnU-Net would resample;
5. pad with zeros, centred, to at least the patch size (``pad_nd_image``);
6. slide the patch over the image in nnU-Net's steps (step 0.5 of the patch, spread evenly; one
   position on an axis the patch covers), weighting each tile's logits by a Gaussian importance map
   (sigma 1/8 of the patch) and dividing by the summed weights;
7. test-time mirroring: each tile is also predicted flipped along every non-empty combination of the
   allowed axes, flipped back, and the logits averaged;
8. argmax over the classes (no softmax needed for an argmax), padding removed, the crop put back
   into a background-filled array of the input's shape, axes transposed back.

Differences: nnU-Net accumulates logits in float16 on the CPU; this module in float32, so a voxel
whose two best classes are within float16 rounding of each other may go the other way. Region-based
models (``regions_class_order`` in dataset.json) and cascades are not supported
(:class:`UnsupportedModel`: the masker then uses the torch backend).

Runtimes: OpenVINO when installed (oneDNN's direct 3D convolutions: the faster of the two here),
else ONNX Runtime (``onnxruntime`` CPU wheel); both read the same ``.onnx`` file. The network runs in
float32, or in bfloat16 where the CPU computes it natively (:data:`PRECISIONS`; OpenVINO only).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

METADATA_PREFIX = "pediface."
"""Prefix of the keys training/export_onnx.py writes into the ONNX file's metadata."""

RUNTIMES = ("openvino", "onnxruntime")
"""ONNX runtimes this backend can drive, in order of preference."""

TILE_STEP = 0.5
"""Sliding-window step as a share of the patch (nnU-Net's default ``tile_step_size``)."""

SUPPORTED_SCHEMES = (
    "ZScoreNormalization",
    "CTNormalization",
    "NoNormalization",
    "RescaleTo01Normalization",
    "RGBTo01Normalization",
)


class UnsupportedModel(ValueError):
    """The model uses something this backend does not reproduce (the torch backend can run it)."""


def resolve_configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    """A configuration of nnU-Net plans with its ``inherits_from`` chain applied (a shallow update)."""
    configurations = plans.get("configurations") or {}
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    while name:
        if name in seen or name not in configurations:
            raise ValueError(f"configuration {name!r} is missing from the plans or inherits in a circle")
        seen.add(name)
        chain.append(configurations[name])
        name = configurations[name].get("inherits_from") or ""
    resolved: dict[str, Any] = {}
    for configuration in reversed(chain):
        resolved.update(configuration)
    return resolved


def available_runtime(name: str = "auto") -> str | None:
    """``name`` if installed (``"auto"``: the first of :data:`RUNTIMES` installed), else None."""
    import importlib.util

    wanted = RUNTIMES if name == "auto" else (name,)
    return next((each for each in wanted if importlib.util.find_spec(each) is not None), None)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


PRECISIONS = ("auto", "float32", "bfloat16")
"""Arithmetic of the network: ``auto`` is bfloat16 where the CPU computes it natively (AMX or
AVX-512 BF16, with OpenVINO), else float32."""


def _session(
    path: Path, runtime: str, threads: int, precision: str
) -> tuple[Callable[[np.ndarray], np.ndarray], dict, str]:
    """``(run, metadata, precision)``: a function from an input batch to its logits, the file's
    metadata and the arithmetic it runs in (``float32`` or ``bfloat16``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision == "bfloat16" and not native_bf16:
            raise ValueError("bfloat16 asked for, but this CPU has no native bfloat16 arithmetic")
        if precision == "auto":
            precision = "bfloat16" if native_bf16 else "float32"
        model = core.read_model(str(path))
        rt_info = model.get_rt_info()
        metadata = {}
        if "framework" in list(rt_info.keys()):  # ONNX metadata_props land under rt_info["framework"]
            framework = rt_info["framework"]
            metadata = {key: framework[key].astype(str) for key in framework.keys()}
        compiled = core.compile_model(
            model,
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        request = compiled.create_infer_request()

        def run_openvino(batch: np.ndarray) -> np.ndarray:
            return np.array(request.infer({0: batch})[0], copy=True)

        return run_openvino, metadata, precision
    if runtime == "onnxruntime":
        if precision == "bfloat16":
            raise ValueError("bfloat16 is available with OpenVINO only (pip install openvino)")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnxruntime(batch: np.ndarray) -> np.ndarray:
            return session.run(None, {name: batch})[0]

        return run_onnxruntime, dict(session.get_modelmeta().custom_metadata_map), "float32"
    raise ValueError(f"unknown ONNX runtime {runtime!r}; known: {', '.join(RUNTIMES)}")


@lru_cache(maxsize=4)
def gaussian_importance(patch: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's tile weights: a Gaussian (sigma 1/8 of the patch) centred on the patch, peak 10, no zeros."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1.0
    weights = gaussian_filter(delta, [p / 8.0 for p in patch], 0, mode="constant", cval=0.0)
    weights *= 10.0 / weights.max()
    weights[weights == 0] = weights[weights > 0].min()
    return weights.astype(np.float32)


def tile_starts(size: int, patch: int, step: float = TILE_STEP) -> list[int]:
    """Start indices of the tiles along one axis: at most ``step * patch`` apart, spread evenly."""
    count = int(np.ceil((size - patch) / (patch * step))) + 1
    if count == 1:
        return [0]
    spacing = (size - patch) / (count - 1)
    return [int(np.round(spacing * i)) for i in range(count)]


def nonzero_box(data: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the voxels non-zero in any channel, holes filled; the whole image if none."""
    from scipy.ndimage import binary_fill_holes

    nonzero = binary_fill_holes(np.any(data != 0, axis=0))
    box = []
    for axis in range(nonzero.ndim):
        present = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(nonzero.ndim) if a != axis)))
        box.append(
            slice(int(present[0]), int(present[-1]) + 1) if present.size else slice(0, nonzero.shape[axis])
        )
    return tuple(box)


def normalise(
    channel: np.ndarray, scheme: str, use_mask: bool, properties: dict[str, float], inside: np.ndarray | None
) -> np.ndarray:
    """One channel normalised as nnU-Net's scheme of that name does (float32)."""
    image = channel.astype(np.float32, copy=True)
    eps = 1e-8
    if scheme == "ZScoreNormalization":
        if use_mask and inside is not None:
            values = image[inside]
            image[inside] = (values - values.mean()) / max(float(values.std()), eps)
        else:
            image -= image.mean()
            image /= max(float(image.std()), eps)
    elif scheme == "CTNormalization":
        np.clip(image, properties["percentile_00_5"], properties["percentile_99_5"], out=image)
        image -= properties["mean"]
        image /= max(float(properties["std"]), eps)
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= max(float(image.max()), eps)
    elif scheme == "RGBTo01Normalization":
        image /= 255.0
    elif scheme != "NoNormalization":
        raise ValueError(f"normalisation scheme {scheme!r} is not supported by the ONNX backend")
    return image


class OnnxBackend:
    """One fold of an nnU-Net v2 model, exported to ONNX, predicting label arrays on the CPU.

    Parameters
    ----------
    onnx_path : Path
        The exported network (training/export_onnx.py); its metadata names the configuration.
    plans, dataset : dict
        The model folder's ``plans.json`` and ``dataset.json``.
    mirror_axes : sequence of int
        Spatial axes (of the transposed array) to mirror at test time; empty for none.
    threads : int, optional
        Threads of the runtime; default: the CPUs this process may use.
    runtime : str
        ``"auto"`` (the first of :data:`RUNTIMES` installed), ``"openvino"`` or ``"onnxruntime"``.
    precision : str
        One of :data:`PRECISIONS`.

    Raises
    ------
    ValueError
        If no runtime is installed, or the model uses something this backend does not do.
    """

    device = "cpu"

    def __init__(
        self,
        onnx_path: Path,
        plans: dict[str, Any],
        dataset: dict[str, Any],
        *,
        mirror_axes: Sequence[int] = (),
        threads: int | None = None,
        runtime: str = "auto",
        precision: str = "auto",
    ) -> None:
        if runtime != "auto" and runtime not in RUNTIMES:
            raise ValueError(f"runtime must be 'auto' or one of {', '.join(RUNTIMES)}, got {runtime!r}")
        found = available_runtime(runtime)
        if found is None:
            raise ValueError(f"ONNX runtime {runtime!r} is not installed (one of {', '.join(RUNTIMES)})")
        runtime = found
        self.runtime = runtime
        self._run, self.metadata, self.precision = _session(
            Path(onnx_path), runtime, threads or _cpu_count(), precision
        )
        name = self.metadata.get(METADATA_PREFIX + "configuration")
        if not name:
            raise ValueError(f"{onnx_path} does not name its nnU-Net configuration (export it again)")
        self.configuration = str(name)
        config = resolve_configuration(plans, self.configuration)
        if config.get("previous_stage"):
            raise UnsupportedModel("cascaded nnU-Net configurations are not supported by the ONNX backend")
        if dataset.get("regions_class_order"):
            raise UnsupportedModel("region-based nnU-Net models are not supported by the ONNX backend")
        self.patch = tuple(int(p) for p in config["patch_size"])
        self.spacing = tuple(float(s) for s in config["spacing"])
        self.schemes = list(config["normalization_schemes"])
        unsupported = sorted(set(self.schemes) - set(SUPPORTED_SCHEMES))
        if unsupported:
            raise UnsupportedModel(
                f"normalisation {', '.join(unsupported)} is not supported by the ONNX backend"
            )
        self.use_mask = [bool(v) for v in config["use_mask_for_norm"]]
        self.intensity = plans.get("foreground_intensity_properties_per_channel") or {}
        identity = list(range(len(self.patch)))
        self.transpose_forward = tuple(int(a) for a in plans.get("transpose_forward", identity))
        self.transpose_backward = tuple(int(a) for a in plans.get("transpose_backward", identity))
        # The checkpoint's mirroring axes, recorded at export; none recorded: trained without mirroring.
        recorded = self.metadata.get(METADATA_PREFIX + "mirroring_axes")
        self.allowed_mirroring_axes = (
            None if recorded is None else tuple(int(a) for a in json.loads(recorded))
        )
        self.n_channels = len(dataset["channel_names"])
        self.mirror_axes: tuple[int, ...] = ()
        self.mirror(tuple(mirror_axes) or None)

    def mirror(self, axes: tuple[int, ...] | None) -> None:
        """Test-time mirroring on these axes of the (transposed) network input; None: none."""
        axes = tuple(int(a) for a in axes or ())
        if any(not 0 <= a < len(self.patch) for a in axes):
            raise ValueError(f"mirror axes {axes} do not fit a {len(self.patch)}D patch")
        self.mirror_axes = axes

    def predict(self, array: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Labels (uint8, the input's spatial shape) of a (z, y, x) or (c, z, y, x) array at ``spacing``.

        Raises
        ------
        ValueError
            If the array's channels or spacing do not fit the model (resample to :attr:`spacing` first).
        RuntimeError
            If the runtime fails.
        """
        data = np.asarray(array)
        if data.ndim == len(self.patch):
            data = data[None]
        if data.shape[0] != self.n_channels or data.ndim != len(self.patch) + 1:
            raise ValueError(f"a {data.shape} array does not fit a {self.n_channels}-channel model")
        data = data.transpose([0, *[a + 1 for a in self.transpose_forward]])
        spacing_t = [float(spacing[a]) for a in self.transpose_forward]
        shape = data.shape[1:]
        if any(int(round(s / t * n)) != n for s, t, n in zip(spacing_t, self.spacing, shape, strict=True)):
            raise ValueError(
                f"the ONNX backend needs the input at the model's spacing {self.spacing}, got {spacing_t}"
            )
        box = nonzero_box(data)
        cropped = data[(slice(None), *box)]
        inside = None
        if any(self.use_mask):
            from scipy.ndimage import binary_fill_holes

            inside = binary_fill_holes(np.any(cropped != 0, axis=0))
        normalised = np.stack(
            [
                normalise(
                    cropped[c], self.schemes[c], self.use_mask[c], self.intensity.get(str(c), {}), inside
                )
                for c in range(self.n_channels)
            ]
        )
        logits = self._sliding_window(normalised)
        labels = np.zeros(shape, dtype=np.uint8)
        labels[box] = np.argmax(logits, axis=0).astype(np.uint8)
        return labels.transpose(self.transpose_backward)

    # -- steps ------------------------------------------------------------------

    def _sliding_window(self, data: np.ndarray) -> np.ndarray:
        """Gaussian-weighted, mirrored logits of ``data`` (c, *spatial), padded to the patch and back."""
        shape = np.array(data.shape[1:])
        padded_shape = np.maximum(shape, self.patch)
        below = (padded_shape - shape) // 2
        pad = [
            (0, 0),
            *[(int(b), int(p - s - b)) for b, p, s in zip(below, padded_shape, shape, strict=True)],
        ]
        padded = (
            np.pad(data, pad, mode="constant", constant_values=0.0) if np.any(padded_shape != shape) else data
        )
        weights = gaussian_importance(self.patch)
        logits: np.ndarray | None = None
        total = np.zeros(padded.shape[1:], dtype=np.float32)
        starts = [tile_starts(int(n), p) for n, p in zip(padded_shape, self.patch, strict=True)]
        flips = [
            tuple(a + 2 for a in combination)
            for k in range(1, len(self.mirror_axes) + 1)
            for combination in itertools.combinations(self.mirror_axes, k)
        ]
        for corner in itertools.product(*starts):
            window = tuple(slice(c, c + p) for c, p in zip(corner, self.patch, strict=True))
            tile = np.ascontiguousarray(padded[(slice(None), *window)][None], dtype=np.float32)
            prediction = self._infer(tile)
            for axes in flips:
                prediction += np.flip(self._infer(np.ascontiguousarray(np.flip(tile, axes))), axes)
            prediction = prediction[0] / (len(flips) + 1)
            if logits is None:
                logits = np.zeros((prediction.shape[0], *padded.shape[1:]), dtype=np.float32)
            logits[(slice(None), *window)] += prediction * weights
            total[window] += weights
        assert logits is not None
        logits /= total
        unpad = tuple(slice(int(b), int(b + s)) for b, s in zip(below, shape, strict=True))
        return logits[(slice(None), *unpad)]

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self._run(batch)
        except Exception as error:  # noqa: BLE001 - the runtimes raise their own types
            raise RuntimeError(f"{self.runtime} failed on a {batch.shape} tile: {error}") from error

    def describe(self) -> str:
        return f"onnx ({self.runtime}, {self.precision})"
