"""Training of the face-and-ear nnU-Net model: teacher labels, synthetic data, nnU-Net on CPU.

Run ``python -m training --help``. Nothing here is imported by the
pipeline; only :mod:`training.train` imports torch / nnunetv2.
"""
