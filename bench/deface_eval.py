"""Peers for ``pediface evaluate``: `python -m bench.deface_eval` runs the evaluation with peer defacers.

Peers are not project dependencies. What runs here:

* ``mede`` (PyPI 0.0.12, TIO-IKIM's "medical_image_deidentification", MIT): a MedNeXt network
  trained to deface, whose weights (``mede/models/mednext_deface.pth``, a plain state dict)
  ship inside the wheel. ``pip install -c constraints.txt mede`` is refused by pip: every mede
  release pins ``torch==2.2.2`` (and ``numpy==1.26.4``, ``pydicom==3.0.1``), and the project
  pins torch 2.13. So the wheel is fetched with ``pip download --no-deps`` into a scratch
  folder and unpacked there (never into the venv); :class:`MedeMasker` builds mede's own
  network class from that folder, loads its weights with the project's torch, and repeats
  mede's inference steps (``mede/dicom_skullstrip_defacing.py`` and ``InferenceDataset``):
  reorient to RAS, axes (S, R, A), nearest-neighbour resize to 64x224x224, min-max
  normalisation, one forward pass, resize back, keep where the output > 0.5. mede's own
  ``Inference`` class cannot be imported as is: it imports torchvision, whose C operators do
  not load with this torch build. CPU only, nothing downloaded at run time.
* ``pydeface`` needs FSL's ``flirt``, which is not installable here (no FSL on PyPI or Debian's
  archive); :class:`worker.deface.template.TemplateMasker` is the same method (pydeface's template
  and face mask, affine registration), so it stands in for it.

Usage::

    python -m bench.deface_eval --maskers template nnunet mede --out /tmp/eval.md
    pediface evaluate --out /tmp/pediface-eval.md
    python -m bench.deface_eval --maskers mede --merge /tmp/pediface-eval.json --out /tmp/all.md

``--merge`` adds the rows of an earlier ``pediface evaluate --out X.json`` run to the table, so the
peer does not have to be rerun with the project's maskers (times then come from two runs on the
same machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from bench.report import machine, stamp

REPO = Path(__file__).resolve().parents[1]
MEDE_VERSION = "0.0.12"
MEDE_DIR = Path("/tmp/pediface-peers") / f"mede-{MEDE_VERSION}"
MEDE_INPUT_SIZE = (64, 224, 224)
"""mede's ``INPUT_SIZE`` (dataset.py): every volume is resized to this (S, R, A) shape."""


def fetch_mede(folder: Path = MEDE_DIR) -> Path:
    """The unpacked mede wheel in ``folder`` (downloaded with pip, no dependencies, if absent)."""
    if (folder / "mede" / "models" / "mednext_deface.pth").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            f"mede=={MEDE_VERSION}",
            "-d",
            str(folder / "wheel"),
        ],
        check=True,
    )
    wheel = next((folder / "wheel").glob("mede-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(folder)
    return folder


class MedeMasker:
    """mede's shipped MedNeXt defacer behind the :class:`worker.deface.base.FaceMasker` interface.

    Everything mede would zero (its output is the input times a "keep" mask) is labelled face.
    """

    name = f"mede-{MEDE_VERSION}"

    def __init__(self, folder: Path = MEDE_DIR, threads: int | None = None) -> None:
        import torch

        folder = fetch_mede(folder)
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        from mede.mednext.MedNextV1 import MedNeXt  # torch only, no torchvision

        if threads is not None:
            torch.set_num_threads(threads)

        class Mednext(torch.nn.Module):  # mede.model.Mednext, whose module imports timm/torchvision
            def __init__(self) -> None:
                super().__init__()
                self.model = MedNeXt(
                    in_channels=1,
                    n_channels=32,
                    n_classes=1,
                    exp_r=2,
                    kernel_size=3,
                    deep_supervision=False,
                    do_res=True,
                    do_res_up_down=True,
                    block_counts=[2] * 9,
                )

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.model(x)

        self._torch = torch
        self.model = Mednext()
        state = torch.load(
            folder / "mede" / "models" / "mednext_deface.pth", weights_only=True, map_location="cpu"
        )
        self.model.load_state_dict(state)
        self.model.eval()

    def predict(self, volume):  # noqa: ANN001, ANN201 - FaceMasker signature
        import nibabel as nib

        from worker.types import FaceLabel, FaceMask

        started = time.perf_counter()
        torch = self._torch
        # The volume as the NIfTI file mede would read: data (x, y, z), RAS affine.
        direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(volume.spacing, dtype=float)[None, :]
        affine[:3, 3] = volume.origin
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
        image = nib.Nifti1Image(np.transpose(volume.array, (2, 1, 0)).astype(np.float32), affine)
        original = nib.orientations.io_orientation(affine)
        ras_ornt = nib.orientations.axcodes2ornt(("R", "A", "S"))
        ras = image.as_reoriented(nib.orientations.ornt_transform(original, ras_ornt))
        pixels = np.ascontiguousarray(np.transpose(np.asarray(ras.dataobj, dtype=np.float32), (2, 0, 1)))
        x = torch.nn.Upsample(size=list(MEDE_INPUT_SIZE))(torch.from_numpy(pixels)[None, None])
        if x.max() > 0:
            x = (x - x.min()) / (x.max() - x.min())
        with torch.no_grad():
            prediction = self.model(x.float())
        keep = torch.nn.Upsample(size=pixels.shape)(prediction).numpy()[0, 0] > 0.5
        keep_ras = nib.Nifti1Image(np.transpose(keep, (1, 2, 0)).astype(np.uint8), ras.affine)
        back = keep_ras.as_reoriented(nib.orientations.ornt_transform(ras_ornt, original))
        keep_zyx = np.transpose(np.asarray(back.dataobj, dtype=np.uint8), (2, 1, 0)) > 0
        labels = (~keep_zyx).astype(np.uint8) * np.uint8(FaceLabel.FACE)
        seconds = round(time.perf_counter() - started, 2)
        return FaceMask(labels=np.ascontiguousarray(labels), masker=self.name, details={"seconds": seconds})


def _load_results(path: Path) -> list:
    from evaluation.results import Result, ViewResult

    data = json.loads(path.read_text())
    out = []
    for row in data["results"]:
        views = {k: ViewResult(**v) for k, v in row.pop("views").items()}
        out.append(Result(**row, views=views))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--maskers", nargs="+", default=["mede"], choices=["template", "nnunet", "mede"])
    parser.add_argument("--heads", nargs="+", default=None, help="head names (default: pediface evaluate's)")
    parser.add_argument("--synthetic", type=int, default=0, help="synthetic heads per contrast")
    parser.add_argument(
        "--merge", type=Path, action="append", default=[], help="JSON of an earlier run to add"
    )
    parser.add_argument("--out", type=Path, default=None, help="write Markdown here (and JSON beside it)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--renders", type=Path, default=None, help="write every render here (PNG)")
    args = parser.parse_args(argv)

    from evaluation.heads import DEFAULT_HEADS
    from evaluation.results import markdown, to_json
    from evaluation.run import parameters, run
    from worker.deface import load_masker

    maskers = {}
    for kind in args.maskers:
        if kind == "mede":
            maskers["mede"] = MedeMasker(threads=args.threads)
        else:
            folder = REPO / "models" / ("template-pydeface" if kind == "template" else "nnunet-face")
            maskers[kind] = load_masker(kind, folder, threads=args.threads)
    started = time.perf_counter()
    results = run(
        maskers,
        args.heads or DEFAULT_HEADS,
        args.synthetic,
        on_step=lambda text: print(
            f"{time.perf_counter() - started:7.1f} s  {text}", file=sys.stderr, flush=True
        ),
        renders_dir=args.renders,
    )
    merged = [r for path in args.merge for r in _load_results(path)] + results
    order = {m: i for i, m in enumerate(["template", "nnunet", "mede"])}
    merged.sort(
        key=lambda r: (
            r.kind == "synthetic",
            r.kind == "negative",
            not r.held_out,
            r.head,
            order.get(r.masker, 9),
        )
    )
    table = markdown(merged)
    print(table)
    if args.out:
        meta = {
            "stamp": stamp(),
            "machine": machine(),
            "parameters": parameters(),
            "maskers": list(maskers),
            "merged": [str(p) for p in args.merge],
        }
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(to_json(merged, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
