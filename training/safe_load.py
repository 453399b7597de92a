"""Model files from elsewhere, read as plain data: nothing in them may run code.

A downloaded model is a set of pickles (nnU-Net v1's ``.model.pkl`` and ``plans.pkl``, the ``torch.save``
checkpoints of v1 and v2). Unpickling runs whatever a pickle names, so here only plain data is let through:
:class:`RestrictedUnpickler` for plain pickles (builtins, OrderedDict, numpy arrays, dtypes and scalars; any
``nnunet.*`` class becomes an inert :class:`V1Stub`), ``torch.load(weights_only=True)`` with numpy's types
allowed for checkpoints (also under numpy 1's ``numpy.core`` names, which every model saved before 2024
carries: torch matches allowed globals by name).
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

V1_CHECKPOINT = "model_final_checkpoint.model"
"""File name of an nnU-Net v1 fold's final weights (and, with ``.pkl``, of its plain-data companion)."""


class ModelImportError(ValueError):
    """The source is not a model pediface can import; the message says why."""


class V1Stub:
    """Stands in for any ``nnunet.*`` class a v1 pickle names: it records, and never runs, anything."""

    _module = "?"
    _name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> V1Stub:
        stub = object.__new__(cls)
        stub.args = args
        return stub

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<V1Stub {self._module}.{self._name}>"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data only: builtins, OrderedDict, numpy arrays, dtypes and scalars.

    ``nnunet.*`` (v1) references become :class:`V1Stub` subclasses; anything else is refused, so a crafted
    pickle in a downloaded model cannot run code. numpy 1 wrote ``numpy.core``, numpy 2 ``numpy._core``.
    """

    _NUMPY = {"_reconstruct", "scalar", "_frombuffer", "ndarray", "dtype"}
    _NUMPY_MODULES = (
        "numpy",
        "numpy.core.multiarray",
        "numpy._core.multiarray",
        "numpy.core.numeric",
        "numpy._core.numeric",
    )
    _BUILTINS = {"set", "frozenset", "slice", "complex", "range", "bytearray"}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "builtins" and name in self._BUILTINS:
            return getattr(__import__("builtins"), name)
        if module == "_codecs" and name == "encode":  # bytes in protocol-2 pickles
            import codecs

            return codecs.encode
        if module in self._NUMPY_MODULES and name in self._NUMPY:
            source = (
                np
                if module == "numpy"
                else __import__(module.replace("numpy.core", "numpy._core"), fromlist=[name])
            )
            return getattr(source, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            return getattr(np.dtypes, name)
        if module.split(".")[0] == "nnunet":
            return type(name, (V1Stub,), {"_module": module, "_name": name})
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not plain data")


def load_pickle(path: Path) -> Any:
    with open(path, "rb") as handle:
        return RestrictedUnpickler(handle).load()


def load_torch(path: Path) -> dict:
    """``torch.load(weights_only=True)`` with numpy's scalar and array types allowed (v1 loss curves)."""
    import torch

    multiarray = np._core.multiarray
    safe: list = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    safe += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    # torch matches allowed globals by name: also allow numpy 1's names for the same functions
    safe += [
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    ]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ModelImportError(f"{path} is not a checkpoint of plain data (refused to load): {exc}") from exc


def plain(value: Any) -> Any:
    """numpy values, OrderedDicts and tuples as JSON-able Python (dict keys as strings)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, V1Stub):
        return repr(value)
    return value


def v1_model_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) laid out as a v1 trainer's output."""
    return sorted(
        {
            info.parent.parent
            for info in root.rglob(f"{V1_CHECKPOINT}.pkl")
            if info.parent.name.startswith("fold_") or info.parent.name == "all"
        }
    )
