"""The sections of the settings: one typed model per part of pediface.

Every field has a description (it becomes the comment in ``config/pediface.yaml``) and a unit in
its name where it has one (``quiet_period_s``).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

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
        description="Addresses it connects from: IP addresses, CIDR networks or host names "
        "(resolved at start).",
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
    network_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Idle network timeout of an association, also inside a PDU: a peer that stalls mid-PDU "
        "is aborted after it.",
    )
    max_inflated_bytes: int = Field(
        512 << 20,
        ge=1 << 20,
        description="Largest size a Deflated (compressed data set) instance may inflate to; larger ones are "
        "refused (0xA900) and kept in quarantine, before they are inflated in full.",
    )
    max_image_pixels: int = Field(
        1 << 29,
        ge=1,
        description="Most pixel values (Rows x Columns x Samples x Frames) one instance may declare; larger "
        "ones are refused (0xA900) before a worker would allocate them.",
    )


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
    reconcile_interval_s: float = Field(
        60.0,
        ge=0,
        description="Redis: how often the gateway compares the jobs the spool has handed out with what the "
        "broker holds (queued or taken by a worker); a job missing twice in a row (a Redis restarted "
        "without its data) is dispatched again. 0: off.",
    )


class WorkerSettings(_Section):
    """The Celery worker that runs the pipeline."""

    concurrency: int = Field(1, ge=1, description="Series processed at once per worker process group.")
    nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How much CPU priority the worker processes give up (Unix nice increment): a saturated "
        "worker must not slow the gateway on the same machine (C-ECHO and C-STORE answers). 0 keeps it.",
    )
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
        description="Rules tried in order; the first that matches decides. Each: name, "
        "action (process|drop), and any of modality, body_part, series_description, protocol_name, "
        "sop_class.",
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


class CpuPrecision(StrEnum):
    auto = "auto"  # bfloat16 where the CPU has it natively, else float32
    float32 = "float32"


class DefaceSettings(_Section):
    """How the face mask is computed and applied."""

    masker: MaskerKind = Field(
        MaskerKind.nnunet,
        description="Face masker: 'nnunet' (face and ears, models/nnunet-face) or "
        "'template' (pydeface's template registered to the head; face only).",
    )
    model_dir: Path | None = Field(
        None,
        description="Model folder. Empty: the one shipped in models/ for the chosen masker. "
        "A model installed with `pediface model import` (e.g. the paper's nnU-Net v1 weights) is "
        "<data_dir>/models/NAME.",
    )
    margin_mm: float = Field(4.0, ge=0, le=20, description="Safety margin the mask is dilated by.")
    remove_ears: bool = Field(True, description="Blank the ears as well when the masker labels them.")
    send_mask_seg: bool = Field(
        False,
        description="Also deliver the face mask as a DICOM Segmentation referencing the defaced series "
        "(for QC at the archive; the archive must accept Segmentation Storage).",
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for the masker. Empty: all cores.")
    cpu_precision: CpuPrecision = Field(
        CpuPrecision.auto,
        description="Arithmetic of the nnU-Net network on CPU (its ONNX export): 'auto' uses bfloat16 where "
        "the CPU computes it natively (AMX or AVX-512 BF16; face Dice >= 0.998 against float32 on the "
        "shared heads, docs/benchmarks.md), else float32; 'float32' always.",
    )
    no_face_in_fov: Literal["quarantine", "deidentify"] = Field(
        "quarantine",
        description="A series whose field of view holds no face (an fMRI or DWI slab, a phantom: the masker "
        "finds less than a face and the field of view does not reach the front of the head where faces "
        "are): 'quarantine' waits for a person; 'deidentify' sends it de-identified but not defaced, and "
        "the job record says 'no face in field of view' with the evidence.",
    )
    face_check: Literal["on", "off"] = Field(
        "on",
        description="After the mask is blanked and before anything is sent, render the defaced head's skin "
        "surface (front, 45 degrees left and right) and run a CNN face detector (dlib's MMOD, "
        "models/face-detector-mmod) on the renders: 'on' quarantines a series on which a face is still "
        "detectable ('face still detectable after defacing: view left45, score 0.93'), with the QC picture "
        "and the renders, and sends nothing; with no_face_in_fov: deidentify, a detector finding no face "
        "before defacing is part of the evidence. 'off' skips it.",
    )
    face_check_threshold: float = Field(
        0.15,
        gt=0,
        le=2,
        description="Lowest detector score counted as a face. Chosen on the shared real heads "
        "(docs/defacing.md, 'Face check'): before defacing every front and 45-degree view with the whole "
        "face in the field of view scores 0.59 or more; after the shipped nnU-Net masker no view gives any "
        "detection. 0.15 sits between, nearer the defaced side (fail closed). Lower it to be stricter.",
    )

    @field_validator("face_check", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: object) -> object:
        # YAML 1.1 reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


DeidProfileName = Literal["basic", "research"]


class DeidSettings(_Section):
    """De-identification of the headers (DICOM PS3.15 Annex E)."""

    profile: DeidProfileName = Field(
        "basic",
        description="'basic': the Basic Profile with the options below. 'research': for research archives "
        "that convert to NIfTI/BIDS: adds Retain Safe Private, Clean Descriptors, Retain Longitudinal "
        "Temporal Information with Modified Dates and Retain Patient Characteristics, and keeps the vendors' "
        "private acquisition physics beyond Table E.3.10-1 (docs/research-profile.md).",
    )
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
        description="Name of the destination in routing rules, logs, metrics and job records "
        "(letters, digits, _ and -).",
        pattern=_DESTINATION_NAME.pattern,
    )
    deid_options: list[str] | None = Field(
        None,
        description="De-identification options for this destination, replacing deid.options (e.g. a "
        "longitudinal archive with 'Retain Longitudinal Temporal Information with Modified Dates'). "
        "Empty: deid.options.",
    )
    deid_profile: DeidProfileName | None = Field(
        None,
        description="De-identification profile for this destination, replacing deid.profile. "
        "Empty: deid.profile.",
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
        description="Serve the web console (series list, QC pictures, quarantine) beside /metrics. "
        "It refuses to start on a metrics.host other than 127.0.0.1/::1 unless username and "
        "password_hash are set.",
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
        description="Honest-broker permission: also show the calling AE title of each series. "
        "The console never shows patient names, patient IDs or original UIDs.",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> ConsoleSettings:
        if (self.username is None) != (self.password_hash is None):
            raise ValueError("console.username and console.password_hash must be set together")
        return self
