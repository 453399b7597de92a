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
import re
import secrets
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

CONFIG_ENV = "PEDIFACE_CONFIG"
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: 16 chars, no backslash


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value.strip()


AETitle = Annotated[str, AfterValidator(_check_ae_title)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PeerSettings(_Section):
    """One sender allowed to associate: its calling AE title and where it may connect from."""

    ae_title: AETitle = Field(description="Calling AE title of the PACS, router or scanner.")
    hosts: list[str] = Field(
        description="Addresses it connects from: IP addresses, CIDR networks or host names (resolved at start).",
        min_length=1,
    )
    max_associations: int = Field(4, ge=1, description="Associations it may hold open at once.")


class TlsSettings(_Section):
    """DICOM TLS (PS3.15 Annex B) for the SCP."""

    certificate: Path = Field(description="PEM certificate (chain) the SCP presents.")
    private_key: Path = Field(
        description="PEM private key of that certificate. Keep it readable by pediface only."
    )
    client_ca: Path | None = Field(
        None, description="PEM CA bundle. Set: peers must present a certificate signed by it (mutual TLS)."
    )


class DicomSettings(_Section):
    """The Storage SCP that PACS and scanners send to."""

    ae_title: AETitle = Field("PEDIFACE", description="Called AE title the SCP answers to.")
    host: str = Field(
        "127.0.0.1",
        description="Address to listen on. 0.0.0.0 / :: to accept other machines (then restrict peers).",
    )
    port: int = Field(11112, ge=1, le=65535, description="TCP port of the SCP.")
    require_called_ae_title: bool = Field(
        True, description="Reject associations whose called AE title is not ae_title."
    )
    max_pdu_bytes: int = Field(65536, ge=0, description="Largest PDU the SCP accepts (0 = unlimited).")
    max_associations: int = Field(10, ge=1, description="Concurrent associations accepted in all.")
    tls: TlsSettings | None = Field(
        None, description="DICOM TLS: certificate, private_key, client_ca. Empty: plain TCP."
    )
    peers: list[PeerSettings] = Field(
        default_factory=list,
        description="Senders allowed to associate (ae_title, hosts, max_associations). Empty: any calling AE "
        "title from any address, which is only safe on 127.0.0.1 or a closed network.",
    )
    network_timeout_s: float = Field(60.0, gt=0, description="Idle network timeout of an association.")


class SeriesSettings(_Section):
    """When a received series is considered complete."""

    quiet_period_s: float = Field(
        30.0,
        gt=0,
        description="A series is complete once no instance of it arrived for this long "
        "(Orthanc's StableAge, mercure's series_complete_trigger).",
    )
    study_quiet_period_s: float = Field(
        0.0,
        ge=0,
        description="Also wait until no instance of the series' study arrived for this long, for senders "
        "that interleave the series of a study (all its series are then sealed together). 0: off.",
    )
    poll_interval_s: float = Field(1.0, gt=0, description="How often the gateway checks for complete series.")


class SpoolSettings(_Section):
    """How long the spool keeps what it no longer needs."""

    retain_delivered_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="After a series is delivered (or dropped), its received instances, output files and QC "
        "picture are deleted after this long; job.json stays. Late instances arriving later make a job "
        "of their own. 0: delete at once.",
    )


class MetricsSettings(_Section):
    """The gateway's HTTP endpoints: /healthz, /readyz and Prometheus /metrics."""

    host: str = Field("127.0.0.1", description="Address of the HTTP endpoints (0.0.0.0 in containers).")
    port: int = Field(9102, ge=0, le=65535, description="Port of the HTTP endpoints; 0 turns them off.")


class BrokerSettings(_Section):
    """Where the gateway puts work and the workers take it from."""

    url: str | None = Field(
        None,
        description="Celery broker URL, e.g. redis://127.0.0.1:6379/0. Empty: the embedded "
        "broker, a folder under data_dir (one machine, no server needed).",
    )
    visibility_timeout_s: int = Field(
        4 * 3600,
        ge=60,
        description="Redis: a task not acknowledged within this time is given to another worker. "
        "Must exceed the longest series processing time.",
    )


class WorkerSettings(_Section):
    """The Celery worker that runs the pipeline."""

    concurrency: int = Field(1, ge=1, description="Series processed at once per worker process group.")
    queue: str = Field("pediface", description="Celery queue the gateway sends to and workers consume.")
    delivery_horizon_s: float = Field(
        86400.0,
        gt=0,
        description="Keep retrying a failed delivery for this long after the first failure; then the "
        "series goes to quarantine (dead letter) for a person to retry.",
    )
    retry_backoff_s: float = Field(10.0, gt=0, description="First delay between delivery attempts; doubles.")
    retry_backoff_max_s: float = Field(600.0, gt=0, description="Longest delay between delivery attempts.")


class RoutingRule(_Section):
    """One rule: every criterion given must match (regexes are searched, case as written)."""

    name: str = Field(description="Name shown in logs and job records.")
    action: Literal["process", "drop"] = Field(description="'process' defaces and delivers; 'drop' does not.")
    modality: list[str] = Field(default_factory=list, description="Modality values, e.g. [MR]. Empty: any.")
    body_part: str | None = Field(None, description="Regex on Body Part Examined.")
    series_description: str | None = Field(None, description="Regex on Series Description.")
    protocol_name: str | None = Field(None, description="Regex on Protocol Name.")
    sop_class: list[str] = Field(default_factory=list, description="SOP Class UIDs. Empty: any.")
    destinations: list[str] = Field(
        default_factory=list,
        description="action=process: names of the destinations that receive the series. Empty: "
        "routing.default_destinations.",
    )

    @field_validator("body_part", "series_description", "protocol_name")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
        return value


class RoutingSettings(_Section):
    """Which complete series are processed and which are dropped, decided when a series is sealed."""

    rules: list[RoutingRule] = Field(
        default_factory=list,
        description="Rules tried in order; the first that matches decides. Each: name, action (process|drop), "
        "and any of modality, body_part, series_description, protocol_name, sop_class.",
    )
    default_action: Literal["process", "drop"] = Field(
        "process", description="What happens to a series no rule matches."
    )
    default_destinations: list[str] = Field(
        default_factory=list,
        description="Destinations (by name) of a processed series whose rule names none. Empty: every "
        "destination.",
    )


class MaskerKind(StrEnum):
    nnunet = "nnunet"  # the project's nnU-Net face-and-ear model, trained on synthetic heads (its model card)
    template = "template"  # pydeface's template registered to the head (adult template, no ears)


class DefaceSettings(_Section):
    """How the face mask is computed and applied."""

    masker: MaskerKind = Field(
        MaskerKind.nnunet,
        description="Face masker: 'nnunet' (face and ears, models/nnunet-face) or 'template' (pydeface's template "
        "registered to the head; face only).",
    )
    model_dir: Path | None = Field(
        None, description="Model folder. Empty: the one shipped in models/ for the chosen masker."
    )
    margin_mm: float = Field(4.0, ge=0, le=20, description="Safety margin the mask is dilated by.")
    remove_ears: bool = Field(True, description="Blank the ears as well when the masker labels them.")
    send_mask_seg: bool = Field(
        False,
        description="Also deliver the face mask as a DICOM Segmentation referencing the defaced series "
        "(for QC at the archive; the archive must accept Segmentation Storage).",
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for the masker. Empty: all cores.")


class DeidSettings(_Section):
    """De-identification of the headers (DICOM PS3.15 Annex E)."""

    options: list[str] = Field(
        default_factory=list,
        description="Profile options on top of the Basic Profile, by their names in PS3.15 "
        "(e.g. 'Retain Device Identity'). Empty: Basic Profile only.",
    )
    patient_id_prefix: str = Field("PF", description="Prefix of the keyed patient pseudonyms.")
    secret: SecretStr | None = Field(
        None,
        description="Key for UID remapping and pseudonyms. Keep it secret and backed up: the same key "
        "gives the same pseudonyms. Empty: read from secret_file.",
    )
    secret_file: Path | None = Field(
        None,
        description="File holding the key. Empty: <data_dir>/secrets/deid.key, created (mode 0600) on "
        "first use.",
    )
    patient_id_lookup: Path | None = Field(
        None,
        description="CSV file with a header line and the columns original_patient_id,research_id: a "
        "patient listed there gets its research_id as PatientID and PatientName instead of the keyed "
        "pseudonym. Read when a worker starts. Empty: keyed pseudonyms only.",
    )
    require_lookup: bool = Field(
        False,
        description="Quarantine a series whose PatientID is not in patient_id_lookup instead of giving it "
        "the keyed pseudonym; the reason names a short keyed hash of the PatientID, never the ID. Needs "
        "patient_id_lookup.",
    )

    @model_validator(mode="after")
    def _lookup_for_require(self) -> DeidSettings:
        if self.require_lookup and self.patient_id_lookup is None:
            raise ValueError("deid.require_lookup needs deid.patient_id_lookup (the CSV file)")
        return self


class AuditSettings(_Section):
    """The audit trail (JSON lines, pseudonymous identifiers only)."""

    file: Path | None = Field(None, description="Audit log file. Empty: <data_dir>/audit.jsonl.")
    honest_broker_file: Path | None = Field(
        None,
        description="If set, workers append original -> pseudonymous PatientID and Study/Series UIDs here "
        "(mode 0600) for the site's honest broker. It holds PHI: restrict access. Empty: no mapping is kept.",
    )


class DestinationKind(StrEnum):
    folder = "folder"
    dicom = "dicom"


_DESTINATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class DestinationSettings(_Section):
    """The research archive that receives defaced, de-identified series."""

    name: str = Field(
        "archive",
        description="Name of the destination in routing rules, logs, metrics and job records (letters, digits, "
        "_ and -).",
        pattern=_DESTINATION_NAME.pattern,
    )
    deid_options: list[str] | None = Field(
        None,
        description="De-identification options for this destination, replacing deid.options (e.g. a "
        "longitudinal archive with 'Retain Longitudinal Temporal Information with Modified Dates'). "
        "Empty: deid.options.",
    )
    kind: DestinationKind = Field(
        DestinationKind.folder, description="'folder' writes files; 'dicom' sends them with C-STORE."
    )
    folder: Path | None = Field(
        None,
        description="kind=folder: target folder. Empty: <data_dir>/archive, or <data_dir>/archive-<name> for "
        "the entries of destinations.",
    )
    ae_title: AETitle = Field("ARCHIVE", description="kind=dicom: called AE title of the archive.")
    host: str = Field("127.0.0.1", description="kind=dicom: host of the archive.")
    port: int = Field(104, ge=1, le=65535, description="kind=dicom: port of the archive.")
    calling_ae_title: AETitle = Field("PEDIFACE", description="kind=dicom: our AE title towards the archive.")
    timeout_s: float = Field(60.0, gt=0, description="kind=dicom: association and DIMSE timeout.")


class ConsoleSettings(_Section):
    """The web console at / on the HTTP endpoints (metrics.host, metrics.port)."""

    enabled: bool = Field(
        True,
        description="Serve the web console (series list, QC pictures, quarantine) beside /metrics. It refuses "
        "to start on a metrics.host other than 127.0.0.1/::1 unless username and password_hash are set.",
    )
    username: str | None = Field(
        None, description="Login name for HTTP Basic authentication. Set with password_hash: login required."
    )
    password_hash: SecretStr | None = Field(
        None,
        description="scrypt or pbkdf2_sha256 hash of the password, made with `python -m gateway.console "
        "hash-password`; never the password itself.",
    )
    allow_retry: bool = Field(
        False, description="Permission to retry quarantined series from the console (a Retry button)."
    )
    honest_broker: bool = Field(
        False,
        description="Honest-broker permission: also show the calling AE title of each series. The console never "
        "shows patient names, patient IDs or original UIDs.",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> ConsoleSettings:
        if (self.username is None) != (self.password_hash is None):
            raise ValueError("console.username and console.password_hash must be set together")
        return self


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
        description="More research archives, each with the keys of destination (name, deid_options, kind, "
        "folder, ae_title, host, port, calling_ae_title, timeout_s). Every processed series goes to "
        "destination and to these unless routing rules name fewer. An unreachable one does not hold up "
        "the others.",
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


def documented_yaml() -> str:
    """Every option with its description and default, as a commented YAML file.

    ``config/pediface.yaml`` is this text; a test keeps the two identical.
    """
    lines = [
        "# pediface settings: every option with its default.",
        "# Copy this file, change what you need, and pass it with --config or PEDIFACE_CONFIG.",
        "# Any option can also be set in the environment: PEDIFACE_<SECTION>__<OPTION>,",
        "# e.g. PEDIFACE_BROKER__URL=redis://127.0.0.1:6379/0. Generated by `pediface config --defaults`.",
        "",
    ]

    def scalar(value: Any) -> str:
        if isinstance(value, SecretStr):
            return "null"
        dumped = yaml.safe_dump(value, default_flow_style=True).strip()
        return dumped.removesuffix("\n...").removesuffix(" ...").strip()

    def emit(model: type[BaseModel], instance: BaseModel, indent: str) -> None:
        for name, info in model.model_fields.items():
            value = getattr(instance, name)
            if isinstance(value, BaseModel):
                doc = (type(value).__doc__ or "").strip().splitlines()[0]
                lines.append(f"{indent}# {doc}")
                lines.append(f"{indent}{name}:")
                emit(type(value), value, indent + "  ")
                lines.append("")
                continue
            if info.description:
                lines.append(f"{indent}# {info.description}")
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, Path):
                value = str(value)
            lines.append(f"{indent}{name}: {scalar(value)}")

    defaults = Settings.model_construct()
    for name, info in Settings.model_fields.items():
        value = info.get_default(call_default_factory=True)
        setattr(defaults, name, value)
    emit(Settings, defaults, "")
    return "\n".join(lines).rstrip() + "\n"
