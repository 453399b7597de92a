"""What every ``pediface`` command shares: the --config option, the settings, the worker extra's check."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from common.logs import configure as configure_logging
from config.settings import Settings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML settings file (default: $PEDIFACE_CONFIG, else built-in defaults)."
    ),
]

WORKER_MODULES = ("numpy", "SimpleITK", "PIL", "torch", "nnunetv2")
"""What ``pip install 'pediface[worker]'`` adds to the gateway's base install, by import name."""


def load(config: Path | None) -> Settings:
    """The settings (--config file, then PEDIFACE_* variables); invalid ones end the command with status 2."""
    try:
        settings = load_settings(config)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError: show it, no traceback
        typer.echo(f"pediface: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level, settings.log_format)
    return settings


def need_worker_extra(command: str) -> None:
    """End ``command`` with one line naming the extra to install when the pipeline's libraries are missing.

    The base install is the gateway's (no numpy, torch or SimpleITK, for a slim image); a command that
    masks faces would otherwise die on a ModuleNotFoundError traceback.
    """
    missing = [name for name in WORKER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        typer.echo(
            f"pediface {command}: needs the worker extra (missing: {', '.join(missing)}); "
            "install it with: pip install 'pediface[worker]'",
            err=True,
        )
        raise typer.Exit(2)
