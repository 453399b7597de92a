"""One typed settings object, read from a YAML file and the environment.

Sources, highest priority first: keyword arguments (tests, the CLI's flags),
environment variables (``PEDIFACE_`` prefix, ``__`` between nested names, e.g.
``PEDIFACE_DICOM__PORT=11112``), the YAML file named by ``--config`` or
``PEDIFACE_CONFIG``, then the defaults below. ``config/pediface.yaml`` lists every
option with its default and is checked against this module by the tests.

Nothing reads settings at import time: each entry point builds them once and
passes them down.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config.sections import (
    AuditSettings,
    BrokerSettings,
    ConsoleSettings,
    DefaceSettings,
    DeidSettings,
    DestinationSettings,
    DicomSettings,
    MetricsSettings,
    RoutingSettings,
    SeriesSettings,
    SpoolSettings,
    WorkerSettings,
)

CONFIG_ENV = "PEDIFACE_CONFIG"


class YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``_config_file`` or ``PEDIFACE_CONFIG``."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        raise NotImplementedError  # __call__ below returns the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ValueError(f"configuration file {self.path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ValueError(f"configuration file {self.path} is not valid YAML: {exc}") from exc
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError(f"configuration file {self.path} must hold a mapping at the top level")
        return data


class Settings(BaseSettings):
    """Every setting of pediface. See ``config/pediface.yaml`` for the documented defaults."""

    model_config = SettingsConfigDict(
        env_prefix="PEDIFACE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(
        Path("pediface-data"),
        description="Root of the spool, quarantine, embedded broker and default archive.",
    )
    log_format: Literal["console", "json"] = Field(
        "console", description="'json' for one machine-readable line per event."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    series: SeriesSettings = Field(default_factory=SeriesSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    deface: DefaceSettings = Field(default_factory=DefaceSettings)
    deid: DeidSettings = Field(default_factory=DeidSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    destination: DestinationSettings = Field(default_factory=DestinationSettings)
    destinations: list[DestinationSettings] = Field(
        default_factory=list,
        description="More research archives, each with the keys of destination (name, deid_options, "
        "deid_profile, kind, folder, ae_title, host, port, calling_ae_title, timeout_s). Every processed "
        "series goes to destination and to these unless routing rules name fewer. An unreachable one does "
        "not hold up the others.",
    )
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    # Set by load(); not a setting.
    _config_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get(CONFIG_ENV) or None
        return (
            init_settings,
            env_settings,
            file_secret_settings,
            YamlSource(settings_cls, Path(path) if path else None),
        )

    @model_validator(mode="after")
    def _absolute_data_dir(self) -> Settings:
        # Worker processes may start in another directory: resolve once, here.
        self.data_dir = self.data_dir.expanduser().resolve()
        return self

    @model_validator(mode="after")
    def _destination_names(self) -> Settings:
        names = [d.name for d in self.all_destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(duplicates)}")
        rules = [(f"routing rule '{r.name}'", r.destinations) for r in self.routing.rules]
        for where, wanted in [*rules, ("routing.default_destinations", self.routing.default_destinations)]:
            unknown = sorted(set(wanted) - set(names))
            if unknown:
                raise ValueError(
                    f"{where} names unknown destination(s) {', '.join(unknown)}; known: {', '.join(names)}"
                )
        return self

    @property
    def all_destinations(self) -> list[DestinationSettings]:
        """``destination`` first, then ``destinations``."""
        return [self.destination, *self.destinations]

    def destination_named(self, name: str) -> DestinationSettings:
        for destination in self.all_destinations:
            if destination.name == name:
                return destination
        raise KeyError(f"no destination named {name!r}")

    def folder_of(self, destination: DestinationSettings) -> Path:
        """Where a folder destination writes."""
        if destination.folder is not None:
            return destination.folder
        if destination is self.destination:
            return self.data_dir / "archive"
        return self.data_dir / f"archive-{destination.name}"

    @property
    def archive_folder(self) -> Path:
        return self.folder_of(self.destination)

    @property
    def audit_file(self) -> Path:
        return self.audit.file or self.data_dir / "audit.jsonl"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker.url

    def deid_key(self) -> bytes:
        """The de-identification key, creating the default key file on first use."""
        if self.deid.secret is not None:
            value = self.deid.secret.get_secret_value()
            if len(value) < 16:
                raise ValueError("deid.secret must be at least 16 characters")
            return value.encode("utf-8")
        path = self.deid.secret_file or self.data_dir / "secrets" / "deid.key"
        if not path.exists():
            if self.deid.secret_file is not None:
                raise ValueError(f"deid.secret_file {path} does not exist")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # O_EXCL: two processes starting together must not write two different keys.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(32))
                    handle.flush()
                    os.fsync(handle.fileno())
        key = path.read_text(encoding="utf-8").strip()
        if len(key) < 16:
            raise ValueError(f"the key in {path} is shorter than 16 characters")
        return key.encode("utf-8")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``config_file`` (or ``$PEDIFACE_CONFIG``), the environment and overrides.

    The chosen file is exported as ``PEDIFACE_CONFIG`` so that worker processes
    started from this one read the same file.
    """
    if config_file is not None:
        os.environ[CONFIG_ENV] = str(Path(config_file).resolve())
    return Settings(**overrides)
