"""Training of the face-and-ear nnU-Net model: teacher labels, synthetic data, nnU-Net on CPU.

Run ``python -m worker.deface.training --help``. Nothing here is imported by the
pipeline; only :mod:`worker.deface.training.train` imports torch / nnunetv2.
"""
