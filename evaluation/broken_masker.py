"""A deliberately broken template masker, to show that the face check catches what a masker leaves.

Its face region is pydeface's cut to the upper half: it blanks the brow, eyes and upper nose and leaves
the nose tip, mouth and chin. Used by the tests' fixture and ``bench/facecheck.py``; never shipped.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from worker.deface import MODELS_ROOT

FILES = ("pydeface_mean_reg2mean.nii.gz", "pydeface_facemask.nii.gz", "LICENSE")


def write_upper_face_masker(folder: Path) -> Path:
    """Write the broken masker's model folder at ``folder`` (which must not exist) and return it."""
    import nibabel as nib
    import numpy as np

    source = MODELS_ROOT / "template-pydeface"
    shutil.copytree(source, folder)
    image = nib.load(str(source / "pydeface_facemask.nii.gz"))
    keep = np.asarray(image.dataobj).astype(np.float32)  # 1 keep, 0 face (RAS: the last axis runs up)
    rows = np.flatnonzero((keep == 0).any(axis=(0, 1)))
    keep[:, :, : (rows.min() + rows.max()) // 2] = 1.0
    nib.save(nib.Nifti1Image(keep, image.affine, image.header), str(folder / "pydeface_facemask.nii.gz"))
    sums = [f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}" for name in FILES]
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return folder
