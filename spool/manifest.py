"""What the spool records about a job: its manifest (``job.json``), its states, and the ids and keys
that name jobs and series on disk.

No patient identifiers: series are named by opaque keys, jobs by ids made of a time stamp, a key
prefix and random digits.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from common.files import utcnow

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

_JOB_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}-[0-9a-f]{6}$")


def is_job_id(value: str) -> bool:
    """A job id as :func:`new_job_id` makes them (safe as a folder name)."""
    return bool(_JOB_ID.match(value))


def is_valid_uid(value: object) -> bool:
    """A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID.match(value))


def series_key(calling_ae: str, study_uid: str, series_uid: str) -> str:
    """Opaque, path-safe key of a series as sent by one peer."""
    digest = hashlib.sha256(f"{calling_ae}\\{study_uid}\\{series_uid}".encode()).hexdigest()
    return digest[:24]


def study_key(calling_ae: str, study_uid: str) -> str:
    """Opaque key of a study as sent by one peer."""
    return hashlib.sha256(f"{calling_ae}\\{study_uid}".encode()).hexdigest()[:24]


class JobState(StrEnum):
    """Where a job is; ``worker.steps`` says what each worker step does."""

    sealed = "sealed"  # complete, not yet handed to the broker
    dispatched = "dispatched"  # a task is queued
    processing = "processing"  # a worker holds the job and starts an attempt
    masked = "masked"  # a face mask per stack (in the worker's memory)
    written = "written"  # the masks blanked in the original pixel data (in memory)
    checked = "checked"  # no face detectable on the defaced head's renders (the face check)
    deidentified = "deidentified"  # every destination's copy complete in out/
    sent = "sent"
    quarantined = "quarantined"
    dropped = "dropped"  # deliberately not processed (a routing rule); kept in done/


IN_FLIGHT = frozenset(
    {
        JobState.dispatched,
        JobState.processing,
        JobState.masked,
        JobState.written,
        JobState.checked,
        JobState.deidentified,
    }
)
"""Handed to a worker and not finished: a job the broker may have lost if it stays so too long."""


class StateChange(BaseModel):
    state: JobState
    at: datetime
    note: str = ""


class Delivery(BaseModel):
    """Where the delivery of a job to one destination stands."""

    state: Literal["pending", "sent", "failed"] = "pending"
    n_sent: int = 0
    output_series_uid: str | None = None
    failures: int = 0  # failed attempts, counted for the send-failure metric
    first_failure: datetime | None = None  # start of the current run of failures (the retry horizon)
    last_error: str | None = None
    sent_at: datetime | None = None


class JobManifest(BaseModel):
    """What the spool knows about one job. Holds no patient identifiers."""

    job_id: str
    series_key: str
    calling_ae: str
    n_instances: int
    created_at: datetime = Field(default_factory=utcnow)
    state: JobState = JobState.sealed
    attempts: int = 0
    reason: str | None = None
    reason_code: str | None = None
    n_sent: int = 0
    first_delivery_failure: datetime | None = None
    n_filtered: int = 0  # deliberately not forwarded (localizers, raw data, presentation states)
    filtered: dict[str, int] = Field(default_factory=dict)  # by kind
    output_series_uid: str | None = None
    follows: str | None = None  # the delivered job this one completes with late instances
    destinations: list[str] = Field(default_factory=list)  # chosen when sealed; empty: every destination
    deliveries: dict[str, Delivery] = Field(default_factory=dict)  # by destination name
    timings: dict[str, float] = Field(default_factory=dict)  # seconds per pipeline stage, last attempt
    # stack geometries sent de-identified but not defaced (deface.no_face_in_fov), with the evidence
    no_face_in_fov: list[dict[str, object]] = Field(default_factory=list)
    # what the face check saw on each defaced stack geometry (best view and score, threshold)
    face_check: list[dict[str, object]] = Field(default_factory=list)
    history: list[StateChange] = Field(default_factory=list)

    def to(self, state: JobState, note: str = "") -> JobManifest:
        self.state = state
        self.history.append(StateChange(state=state, at=utcnow(), note=note))
        return self


def new_job_id(key: str) -> str:
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{key[:12]}-{secrets.token_hex(3)}"
