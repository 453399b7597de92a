"""pediface: a DICOM gateway that defaces head MRI and de-identifies headers for research sharing.

The ``pediface`` package holds what both sides share (settings, spool layout,
errors, logging, the CLI); ``gateway`` is the network edge and ``worker`` the
Celery app and the pipeline. ``gateway`` never imports ``worker``.
"""

__version__ = "0.1.0"
