"""Keyed, deterministic replacements: UIDs, patient pseudonyms and the per-patient date offset.

Everything here is an HMAC-SHA256 under the site's secret key, so that

* the same input gives the same output on every worker and on every retry (references between
  instances of a study stay consistent, and the archive sees the same objects, not duplicates);
* without the key the output cannot be linked back to the input, not even by trying every
  plausible medical record number, which a plain hash would allow.

The key must therefore be secret and long: at least :data:`MIN_KEY_BYTES` bytes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

MIN_KEY_BYTES = 16

#: Longest date shift, in days, of the Retain Longitudinal Temporal Information with Modified
#: Dates option; offsets are drawn from -MAX_DATE_SHIFT_DAYS to -1.
MAX_DATE_SHIFT_DAYS = 365

# Domain separation: the same string used as a patient ID and as something else never gives
# related outputs. remap_uid hashes the bare UID, as its contract states.
_PATIENT_DOMAIN = b"pediface/patient\x00"
_DATE_SHIFT_DOMAIN = b"pediface/date-shift\x00"
_LOOKUP_HINT_DOMAIN = b"pediface/lookup-hint\x00"

#: Characters of a lookup hint (base32, 5 bits each): 40 bits, enough to tell the patients of one
#: site apart, too short to serve as a second pseudonym.
LOOKUP_HINT_CHARS = 8


def check_key(key: bytes) -> None:
    """Raise unless `key` is usable as the secret de-identification key.

    Parameters
    ----------
    key : bytes
        The secret key.

    Raises
    ------
    TypeError
        If `key` is not bytes.
    ValueError
        If `key` is shorter than :data:`MIN_KEY_BYTES` bytes (its value is never shown).
    """
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"the de-identification key must be bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the de-identification key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")


def _digest(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def remap_uid(uid: str, key: bytes) -> str:
    """Keyed pseudonymous replacement of a UID.

    The result is ``"2.25."`` followed by the decimal value of the first 128 bits of
    HMAC-SHA256(`key`, `uid`): a UUID-derived UID (PS3.5 B.2) of at most 44 characters.

    Parameters
    ----------
    uid : str
        The UID to replace; trailing spaces and NUL padding are ignored.
    key : bytes
        The secret de-identification key.

    Returns
    -------
    str
        The replacement UID; the same for the same `uid` and `key`.

    Raises
    ------
    ValueError
        If `uid` is empty or not ASCII, or `key` is too short.
    """
    check_key(key)
    cleaned = uid.rstrip(" \x00").strip()
    if not cleaned:
        raise ValueError("cannot remap an empty UID")
    if not cleaned.isascii():
        raise ValueError("cannot remap a UID that is not ASCII")
    number = int.from_bytes(_digest(key, cleaned.encode("ascii"))[:16], "big")
    return f"2.25.{number}"


def pseudonymise(value: str, key: bytes, prefix: str = "PF") -> str:
    """Keyed pseudonym of a patient identifier, for PatientID and PatientName.

    Parameters
    ----------
    value : str
        The identifier (usually the original PatientID); surrounding spaces are ignored.
    key : bytes
        The secret de-identification key.
    prefix : str
        Written before the pseudonym, e.g. a project code.

    Returns
    -------
    str
        ``f"{prefix}-"`` followed by 12 base32 characters (60 bits) of HMAC-SHA256 of `value`;
        the same for the same `value`, `key` and `prefix`.

    Raises
    ------
    ValueError
        If `value` is empty or `key` is too short.
    """
    check_key(key)
    cleaned = value.strip()
    if not cleaned:
        raise ValueError("cannot pseudonymise an empty identifier")
    return f"{prefix}-{_pseudonym_code(cleaned, bytes(key))}"


@functools.lru_cache(maxsize=4096)
def _pseudonym_code(cleaned: str, key: bytes) -> str:
    # Every instance of a series names the same patient, often twice (nested references too).
    code = base64.b32encode(_digest(key, _PATIENT_DOMAIN + cleaned.encode("utf-8"))).decode("ascii")
    return code[:12]


def date_shift_days(patient: str, key: bytes) -> int:
    """Per-patient date offset for the Modified Dates option.

    Parameters
    ----------
    patient : str
        What identifies the patient (the original PatientID, or the StudyInstanceUID without one).
    key : bytes
        The secret de-identification key.

    Returns
    -------
    int
        An offset in days, from ``-MAX_DATE_SHIFT_DAYS`` to ``-1``; the same for every instance
        of the patient, so intervals between the patient's dates are kept.
    """
    check_key(key)
    number = int.from_bytes(_digest(key, _DATE_SHIFT_DOMAIN + patient.strip().encode("utf-8"))[:8], "big")
    return -(number % MAX_DATE_SHIFT_DAYS + 1)


def lookup_hint(patient_id: str, key: bytes) -> str:
    """A short keyed hash of a PatientID, safe to show in a quarantine reason.

    When the lookup table is required and a patient is missing from it, the reason names this
    hint instead of the PatientID. The honest broker, who holds the key and the site's patient
    list, finds the patient by computing the hint of each candidate ID; without the key it
    cannot be linked to the ID, and it differs from the patient's pseudonym.

    Parameters
    ----------
    patient_id : str
        The original PatientID; surrounding spaces are ignored.
    key : bytes
        The secret de-identification key.

    Returns
    -------
    str
        ``"H-"`` followed by :data:`LOOKUP_HINT_CHARS` base32 characters.
    """
    check_key(key)
    digest = _digest(key, _LOOKUP_HINT_DOMAIN + patient_id.strip().encode("utf-8"))
    return "H-" + base64.b32encode(digest).decode("ascii")[:LOOKUP_HINT_CHARS]
