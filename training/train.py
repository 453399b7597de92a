"""Train the small face-and-ear nnU-Net v2 model on CPU, and export a slim model folder.

Steps (each a function, all driven by :func:`train_model`):

1. :func:`build_teachers` - teacher labels for every head in :data:`~.heads.HEADS` (PNG per head).
2. :func:`build_dataset` - synthetic 4 mm training pairs from the training heads (not the held-out ones),
   written as an nnU-Net raw dataset.
3. :func:`plan_and_preprocess` - nnU-Net's fingerprint and planner, then a custom ``3d_small`` configuration
   (64^3 patch, 4 mm, features 16-32-32-32-32, batch 2) added to the plans and preprocessed.
4. :func:`run_training` - the base ``nnUNetTrainer`` through the Python API on CPU, mirroring only
   left-right (the last array axis on an LPS grid), for a number of iterations or a wall-clock budget.
5. :func:`export_model` - plans.json, dataset.json, fold_0/checkpoint_final.pth (network weights,
   init args, trainer name, mirroring axes only) and SHA256SUMS.

Scratch data lives under ``work_dir`` (default ``/tmp/pediface-train``), never in the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID:03d}_PedifaceFace"
CONFIGURATION = "3d_small"
SPACING_MM = 4.0
PATCH = [64, 64, 64]
FEATURES = [16, 32, 32, 32, 32]
ITERATIONS_PER_EPOCH = 25
MIRROR_AXES = (2,)
"""Left-right only: the x axis of an LPS-aligned (z, y, x) array."""
CLASS_WEIGHTS = (1.0, 1.0, 3.0)
"""Cross-entropy weights of background, face, ears. The ears are a few hundred voxels at 4 mm and
look like the scalp around them: unweighted, the first model never predicted them (ear probability
below 0.2 everywhere after 1,000 iterations)."""


def _env(work_dir: Path, threads: int) -> None:
    os.environ["nnUNet_raw"] = str(work_dir / "nnUNet_raw")
    os.environ["nnUNet_preprocessed"] = str(work_dir / "nnUNet_preprocessed")
    os.environ["nnUNet_results"] = str(work_dir / "nnUNet_results")
    os.environ["nnUNet_n_proc_DA"] = str(threads)
    os.environ["nnUNet_def_n_proc"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def build_teachers(work_dir: Path, png_dir: Path | None = None, names: list[str] | None = None) -> None:
    """Teacher labels (npz on a 2 mm LPS grid) for the heads, and their QC PNGs."""
    import SimpleITK as sitk

    from training.heads import HEADS
    from training.render import render_labels
    from training.teacher import TeacherLabeller, read_head

    out = work_dir / "teacher"
    out.mkdir(parents=True, exist_ok=True)
    labeller = TeacherLabeller()
    for name in names or list(HEADS):
        result = labeller.label(read_head(HEADS[name]))
        array = sitk.GetArrayFromImage(result.image)
        np.savez_compressed(
            out / f"{name}.npz",
            image=array,
            labels=result.labels,
            tissue=result.tissue,
            brain=result.brain,
            origin=np.asarray(result.image.GetOrigin()),
            spacing=np.asarray(result.image.GetSpacing()),
        )
        if png_dir is not None:
            render_labels(array, result.labels, 2.0, png_dir / f"{name}.png", name)
        print(name, result.metrics, flush=True)


def skull_stripped(tissue: np.ndarray) -> np.ndarray:
    """The tissue map of a skull-stripped brain: everything outside the atlas brain becomes air.

    Negative examples: a brain without skin, skull or face must get no face label, so the model
    learns that bright tissue at the front of a volume is not by itself a face.
    """
    return np.where(tissue >= 5, tissue, 0).astype(tissue.dtype)


def build_dataset(
    work_dir: Path,
    n_cases: int,
    seed: int = 0,
    resume: bool = False,
    negatives: float = 0.0,
    contrasts: tuple[str, ...] | None = None,
) -> Path:
    """Synthetic pairs from the training heads, as an nnU-Net raw dataset; returns its folder.

    Each case has its own random stream (``seed``, case number), so ``resume=True`` keeps the
    complete cases already written and generates only the missing ones. A share ``negatives``
    of the cases are skull-stripped brains labelled all background (:func:`skull_stripped`).
    ``contrasts``: those each case's contrast is drawn from (default ``synth.CONTRASTS``, version 2's).
    """
    import SimpleITK as sitk

    from training.heads import HEADS, HELD_OUT
    from training.synth import CONTRASTS, synthesize

    raw = work_dir / "nnUNet_raw" / DATASET_NAME
    if raw.exists() and not resume:
        shutil.rmtree(raw)
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    names = [n for n in HEADS if n not in HELD_OUT and (work_dir / "teacher" / f"{n}.npz").exists()]
    heads = {n: np.load(work_dir / "teacher" / f"{n}.npz") for n in names}
    log = []
    for case in range(n_cases):
        name = names[case % len(names)]
        if resume and (raw / "labelsTr" / f"case_{case:04d}.nii.gz").exists():
            continue
        rng = np.random.default_rng([seed, case])
        tissue, labels = heads[name]["tissue"], heads[name]["labels"]
        negative = bool(rng.random() < negatives)
        if negative:
            tissue, labels = skull_stripped(tissue), np.zeros_like(labels)
        image, labels, params = synthesize(tissue, labels, rng, contrasts=contrasts or CONTRASTS)
        params["negative"] = negative
        for array, path in (
            (image, raw / "imagesTr" / f"case_{case:04d}_0000.nii.gz"),
            (labels, raw / "labelsTr" / f"case_{case:04d}.nii.gz"),
        ):
            img = sitk.GetImageFromArray(array)
            img.SetSpacing([SPACING_MM] * 3)
            sitk.WriteImage(img, str(path), useCompression=True)
        log.append({"case": case, "head": name, **params})
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "face": 1, "ears": 2},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "description": "pediface synthetic heads (SynthSeg-style) from teacher labels; " + ", ".join(names),
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    with open(work_dir / "synth_cases.jsonl", "a") as handle:
        for entry in log:
            handle.write(json.dumps(entry) + "\n")
    return raw


def plan_and_preprocess(work_dir: Path, threads: int = 1) -> None:
    """Fingerprint, plan, add the ``3d_small`` configuration, preprocess it."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    extract_fingerprints([DATASET_ID], num_processes=threads, check_dataset_integrity=True, verbose=False)
    plan_experiments([DATASET_ID])
    plans_path = work_dir / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    full = plans["configurations"]["3d_fullres"]
    arch = json.loads(json.dumps(full["architecture"]))
    n = len(FEATURES)
    arch["arch_kwargs"].update(
        n_stages=n,
        features_per_stage=FEATURES,
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_conv_per_stage=[2] * n,
        n_conv_per_stage_decoder=[2] * (n - 1),
    )
    plans["configurations"][CONFIGURATION] = {
        "inherits_from": "3d_fullres",
        "data_identifier": f"nnUNetPlans_{CONFIGURATION}",
        "patch_size": PATCH,
        "spacing": [SPACING_MM] * 3,
        "batch_size": 2,
        "median_image_size_in_voxels": PATCH,
        "architecture": arch,
    }
    plans_path.write_text(json.dumps(plans, indent=2))
    preprocess([DATASET_ID], configurations=[CONFIGURATION], num_processes=[threads], verbose=False)


def run_training(
    work_dir: Path,
    iterations: int,
    budget_s: float | None = None,
    threads: int = 1,
    init_from: Path | None = None,
    initial_lr: float | None = None,
) -> Path:
    """Train fold 0 with the base nnUNetTrainer on CPU; stop at ``iterations`` or ``budget_s``.

    ``init_from``: a checkpoint (e.g. the shipped model's) whose network weights start the
    training instead of a random initialisation; the optimiser and schedule start afresh, at
    ``initial_lr`` when given (nnU-Net's default 0.01 otherwise), decaying by nnU-Net's poly rule.
    Returns the trainer's output folder (holding ``checkpoint_final.pth``).
    """
    import torch
    from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.set_num_threads(threads)
    pre = work_dir / "nnUNet_preprocessed" / DATASET_NAME
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    # Dice over the whole batch, not per case: a case without ears (a negative, a crop) would
    # otherwise reward predicting no ears anywhere.
    plans["configurations"][CONFIGURATION]["batch_dice"] = True
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainer = nnUNetTrainer(plans, CONFIGURATION, 0, dataset_json, device=torch.device("cpu"))
    build_loss = trainer._build_loss

    def weighted_loss():  # noqa: ANN202 - nnU-Net's own signature
        loss = build_loss()
        inner = getattr(loss, "loss", loss)  # inside the deep-supervision wrapper
        inner.ce = RobustCrossEntropyLoss(weight=torch.tensor(CLASS_WEIGHTS, dtype=torch.float32))
        return loss

    trainer._build_loss = weighted_loss
    if initial_lr is not None:
        trainer.initial_lr = initial_lr  # read by configure_optimizers, at on_train_start
    epochs = max(1, int(np.ceil(iterations / ITERATIONS_PER_EPOCH)))
    trainer.num_iterations_per_epoch = ITERATIONS_PER_EPOCH
    trainer.num_val_iterations_per_epoch = 2
    trainer.num_epochs = epochs
    trainer.save_every = 4

    configure = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size

    def left_right_only():  # noqa: ANN202 - nnU-Net's own signature
        rotation, dummy_2d, initial_patch, _ = configure()
        trainer.inference_allowed_mirroring_axes = MIRROR_AXES
        return rotation, dummy_2d, initial_patch, MIRROR_AXES

    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size = left_right_only
    started = time.time()
    trainer.initialize()
    if init_from is not None:
        weights = torch.load(init_from, map_location="cpu", weights_only=False)["network_weights"]
        trainer.network.load_state_dict(weights)
        print(f"network initialised from {init_from}", flush=True)
    trainer.on_train_start()
    for _epoch in range(trainer.current_epoch, trainer.num_epochs):
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        outputs = [
            trainer.train_step(next(trainer.dataloader_train))
            for _ in range(trainer.num_iterations_per_epoch)
        ]
        trainer.on_train_epoch_end(outputs)
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            val = [
                trainer.validation_step(next(trainer.dataloader_val))
                for _ in range(trainer.num_val_iterations_per_epoch)
            ]
            trainer.on_validation_epoch_end(val)
        trainer.on_epoch_end()
        done = trainer.current_epoch * ITERATIONS_PER_EPOCH
        print(f"iterations {done} elapsed {time.time() - started:.0f}s", flush=True)
        if budget_s is not None and time.time() - started > budget_s:
            break
    trainer.on_train_end()
    (Path(trainer.output_folder) / "pediface_training.json").write_text(
        json.dumps(
            {
                "iterations": trainer.current_epoch * ITERATIONS_PER_EPOCH,
                "seconds": round(time.time() - started, 1),
                "threads": threads,
            }
        )
    )
    return Path(trainer.output_folder)


def export_model(trainer_dir: Path, model_dir: Path, checkpoint: str = "checkpoint_final.pth") -> Path:
    """A slim model folder: plans.json, dataset.json, fold_0/checkpoint_final.pth, SHA256SUMS."""
    import torch

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "fold_0").mkdir(exist_ok=True)
    results = trainer_dir.parent
    shutil.copy(results / "plans.json", model_dir / "plans.json")
    shutil.copy(results / "dataset.json", model_dir / "dataset.json")
    full = torch.load(trainer_dir / checkpoint, map_location="cpu", weights_only=False)
    slim = {
        "network_weights": full["network_weights"],
        "init_args": full["init_args"],
        "trainer_name": full["trainer_name"],
        "inference_allowed_mirroring_axes": MIRROR_AXES,
    }
    torch.save(slim, model_dir / "fold_0" / "checkpoint_final.pth")
    files = ["dataset.json", "plans.json", "fold_0/checkpoint_final.pth"]
    lines = []
    for name in files:
        digest = hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
        lines.append(f"{digest}  {name}")
    (model_dir / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return model_dir


def train_model(
    model_dir: Path,
    *,
    work_dir: Path = Path("/tmp/pediface-train"),
    n_cases: int = 120,
    iterations: int = 500,
    budget_s: float | None = None,
    threads: int = 1,
    seed: int = 0,
    teachers: bool = True,
    png_dir: Path | None = None,
    resume: bool = False,
    negatives: float = 0.15,
    init_from: Path | None = None,
    contrasts: tuple[str, ...] | None = None,
    initial_lr: float | None = None,
) -> Path:
    """The whole recipe: teachers, synthetic data, plan/preprocess, train, export to ``model_dir``."""
    work_dir = Path(work_dir)
    _env(work_dir, threads)
    if teachers:
        build_teachers(work_dir, png_dir)
    build_dataset(work_dir, n_cases, seed, resume, negatives, contrasts)
    plan_and_preprocess(work_dir, threads)
    trainer_dir = run_training(work_dir, iterations, budget_s, threads, init_from, initial_lr)
    return export_model(trainer_dir, Path(model_dir))
