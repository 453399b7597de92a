"""nnU-Net v1 plans rewritten as an nnU-Net v2 ``plans.json`` configuration (see :mod:`training.nnunet_v1`).

v1's plans (``plans_per_stage[stage]``: patch size, spacing, pooling and kernels in the transposed axis order,
as v2's are; ``transpose_forward``; per-channel normalisation and intensity properties) map one to one onto a
v2 configuration. Normalisation: ``nonCT`` -> ``ZScoreNormalization``, ``CT`` -> ``CTNormalization`` (v1's
``mn``/``mx``/``sd`` renamed), ``noNorm`` -> ``NoNormalization``; ``CT2`` and CT inside a mask have no v2
equivalent and are refused. Resampling is v1's: data order 3, segmentations 0, probabilities 1, order 0
along a separate coarse axis. Images are read with SimpleITK, as v1 read them, so the axis order is the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from training.safe_load import ModelImportError

V1_NORMALISATION = {"nonCT": "ZScoreNormalization", "CT": "CTNormalization", "noNorm": "NoNormalization"}


def configuration_of(model_dir: Path, plans: dict, init: list, trainer: str) -> tuple[str, Any]:
    """(v2 configuration name, v1 stage): 3d_fullres is the last stage, 3d_lowres the first of two."""
    above = model_dir.parent.parent.name
    known = ("3d_fullres", "3d_lowres", "2d", "3d_cascade_fullres")
    configuration = above if above in known else None
    stages = sorted(plans["plans_per_stage"])
    stage = init[5] if len(init) > 5 and init[5] is not None else None
    if stage is None:
        stage = stages[0] if configuration == "3d_lowres" else stages[-1]
    if configuration is None:
        configuration = "3d_lowres" if len(stages) > 1 and stage == stages[0] else "3d_fullres"
    if configuration == "3d_cascade_fullres" or "Cascade" in trainer:
        raise ModelImportError(
            "a cascade model needs the low-resolution stage's output as input: not supported"
        )
    return configuration, stage


def v2_plans(
    model_dir: Path,
    plans: dict,
    stage_plans: dict,
    configuration: str,
    init: list,
    in_channels: int,
    arch_kwargs: dict,
) -> tuple[dict, str]:
    schemes = [str(plans["normalization_schemes"][c]) for c in range(in_channels)]
    use_mask = [bool(plans["use_mask_for_norm"][c]) for c in range(in_channels)]
    for c, scheme in enumerate(schemes):
        if scheme not in V1_NORMALISATION:
            raise ModelImportError(f"channel {c}: v1 normalisation {scheme!r} has no nnU-Net v2 equivalent")
        if scheme == "CT" and use_mask[c]:
            raise ModelImportError(
                f"channel {c}: v1's CT normalisation inside a mask zeroes outside it; v2's does not"
            )
    intensity = (plans.get("dataset_properties") or {}).get("intensityproperties") or {}
    renamed = (
        ("mx", "max"),
        ("mean", "mean"),
        ("median", "median"),
        ("mn", "min"),
        ("percentile_00_5", "percentile_00_5"),
        ("percentile_99_5", "percentile_99_5"),
        ("sd", "std"),
    )
    foreground = {}
    for c in range(in_channels):
        properties = intensity.get(c) or {}
        foreground[str(c)] = {new: float(properties[old]) for old, new in renamed if old in properties}
        if schemes[c] == "CT" and len(foreground[str(c)]) < len(renamed):
            raise ModelImportError(
                f"channel {c}: CT normalisation, but the plans carry no intensity properties"
            )
    task = model_dir.parent.name
    match = re.match(r"Task(\d+)_(.+)", task)
    dataset_name = f"Dataset{int(match[1]):03d}_{match[2]}" if match else f"Dataset999_{task or 'imported'}"
    plans_name = model_dir.name.split("__")[-1] if "__" in model_dir.name else "nnUNetPlansv2.1"
    forward = [int(i) for i in plans.get("transpose_forward") or (0, 1, 2)]
    backward = [int(i) for i in plans.get("transpose_backward") or (0, 1, 2)]
    export = plans.get("segmentation_export_params") or {}
    spacings = np.array([np.asarray(s, float) for s in plans.get("original_spacings", [])] or [[np.nan] * 3])
    sizes = np.array([np.asarray(s, float) for s in plans.get("original_sizes", [])] or [[np.nan] * 3])

    def resampling(is_seg: bool, order: int) -> dict:
        return {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}

    v2_plans = {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(x) for x in np.median(spacings, 0)[forward]],
        "original_median_shape_after_transp": [
            int(round(x)) if np.isfinite(x) else 0 for x in np.median(sizes, 0)[forward]
        ],
        "image_reader_writer": "SimpleITKIO",  # v1 read every image with SimpleITK: the same axis order
        "transpose_forward": forward,
        "transpose_backward": backward,
        "configurations": {
            configuration: {
                "data_identifier": f"{plans_name}_{configuration}_from_v1",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": int(stage_plans.get("batch_size", 2)),
                "patch_size": [int(p) for p in stage_plans["patch_size"]],
                "median_image_size_in_voxels": [
                    float(x) for x in stage_plans["median_patient_size_in_voxels"]
                ],
                "spacing": [float(x) for x in stage_plans["current_spacing"]],
                "normalization_schemes": [V1_NORMALISATION[s] for s in schemes],
                "use_mask_for_norm": use_mask,
                # v1: data order 3 (0 along a separate coarse z), segmentations 0, probabilities 1
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling(False, 3),
                "resampling_fn_seg_kwargs": resampling(True, 0),
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": int(export.get("interpolation_order", 1)),
                    "order_z": int(export.get("interpolation_order_z", 0)),
                    "force_separate_z": export.get("force_separate_z"),
                },
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": arch_kwargs,
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": bool(init[4]) if len(init) > 4 else True,
            }
        },
        "experiment_planner_used": f"converted from nnU-Net v1 ({plans_name}) by pediface model import",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": foreground,
    }
    return v2_plans, dataset_name
