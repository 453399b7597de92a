"""The version of pediface (read by pyproject.toml, stamped into every derived DICOM object)."""

__version__ = "0.1.0"
