"""Face maskers: find the voxels to blank in a head volume.

:func:`load_masker` is the one entry point the pipeline uses; each kind lives
in its own module and is imported only when asked for, so that a worker that
masks by template registration never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.settings import Settings
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


#: Model folders shipped with pediface, by masker kind (``models/`` at the top of the source tree).
MODELS_ROOT = Path(__file__).resolve().parents[2] / "models"
SHIPPED_MODELS = {"template": "template-pydeface", "nnunet": "nnunet-face"}


def model_dir_of(settings: Settings) -> Path:
    """The configured model folder, else the shipped one of the configured kind."""
    deface = settings.deface
    return Path(deface.model_dir or MODELS_ROOT / SHIPPED_MODELS[deface.masker.value])


def build_masker(settings: Settings) -> FaceMasker:
    """The configured face masker (slow: once per worker process)."""
    deface = settings.deface
    options: dict[str, Any] = {"margin_mm": deface.margin_mm, "threads": deface.threads}
    if deface.masker.value == "nnunet":
        options["precision"] = deface.cpu_precision.value
    return load_masker(deface.masker.value, model_dir_of(settings), **options)


def check_masker(settings: Settings) -> None:
    """Check the configured model folder without loading it (raises ``ValueError``).

    The worker's main process calls this at start; each pool process then builds its own masker
    (``worker.app``). torch must not run in a process that later forks: its
    OpenMP thread pool does not survive a fork, and the forked child hangs on its first prediction.
    """
    if settings.deface.masker.value == "nnunet":
        from worker.deface.nnunet_backend import verify_nnunet_dir

        verify_nnunet_dir(model_dir_of(settings))
    else:
        build_masker(settings)  # no torch: cheap, and checks more than the checksums


__all__ = [
    "MASKER_KINDS",
    "MODELS_ROOT",
    "SHIPPED_MODELS",
    "FaceMasker",
    "build_masker",
    "check_masker",
    "load_masker",
    "model_dir_of",
]
