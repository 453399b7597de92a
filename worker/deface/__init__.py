"""Face maskers: find the voxels to blank in a head volume.

:func:`load_masker` is the one entry point the pipeline uses; each kind lives
in its own module and is imported only when asked for, so that a worker that
masks by template registration never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.deface.base import FaceMasker


def _load_template(model_dir: Path, **options: Any) -> FaceMasker:
    from worker.deface.template import TemplateMasker

    return TemplateMasker(model_dir, **options)


def _load_nnunet(model_dir: Path, **options: Any) -> FaceMasker:
    from worker.deface.nnunet import NnUNetMasker

    return NnUNetMasker(model_dir, **options)


_LOADERS: dict[str, Callable[..., FaceMasker]] = {
    "template": _load_template,
    "nnunet": _load_nnunet,
}
"""Masker kinds by name. A new kind (``"nnunet"``) adds one loader here."""

MASKER_KINDS: tuple[str, ...] = tuple(sorted(_LOADERS))


def load_masker(kind: str, model_dir: Path, **options: Any) -> FaceMasker:
    """Build the masker of one kind from its model folder (slow: do it once per process).

    Parameters
    ----------
    kind : str
        One of :data:`MASKER_KINDS`.
    model_dir : Path
        The folder holding the model files and their ``SHA256SUMS``.
    **options
        Keyword arguments of that kind's constructor (for ``"template"``:
        ``margin_mm``, ``threads``, ``seed``).

    Returns
    -------
    FaceMasker
        A masker ready to ``predict``.

    Raises
    ------
    ValueError
        If ``kind`` is unknown, or the model folder fails its checksum check.
    TypeError
        If an option is not one that kind accepts.
    """
    try:
        loader = _LOADERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown masker kind {kind!r}; available kinds: {', '.join(MASKER_KINDS)}"
        ) from None
    return loader(Path(model_dir), **options)


__all__ = ["MASKER_KINDS", "FaceMasker", "load_masker"]
