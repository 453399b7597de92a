"""Who may see the console: password hashes (scrypt or PBKDF2), the loopback rule, same-origin POSTs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Mapping

from config.sections import ConsoleSettings

_PBKDF2_ITERATIONS = 600_000
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class ConsoleConfigError(ValueError):
    """The console's settings would expose it unsafely."""


def hash_password(password: str, method: str = "scrypt") -> str:
    """A salted hash of ``password`` for ``console.password_hash``.

    ``scrypt$N$r$p$salt$hash`` (default) or ``pbkdf2_sha256$iterations$salt$hash``,
    salt and hash in base64.
    """
    if not password:
        raise ValueError("the password must not be empty")
    salt = secrets.token_bytes(16)
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    if method == "scrypt":
        n, r, p = _SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"]
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
        return f"scrypt${n}${r}${p}${b64(salt)}${b64(digest)}"
    if method == "pbkdf2_sha256":
        digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, _PBKDF2_ITERATIONS)
        return f"pbkdf2_sha256${_PBKDF2_ITERATIONS}${b64(salt)}${b64(digest)}"
    raise ValueError(f"unknown password hash method {method!r} (scrypt, pbkdf2_sha256)")


def check_hash_format(encoded: str) -> None:
    """Raise :class:`ConsoleConfigError` unless ``encoded`` is a hash :func:`verify_password` reads."""
    parts = encoded.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if n < 2**10 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
                raise ValueError("scrypt parameters out of range")
            salt, digest = _b64(parts[4]), _b64(parts[5])
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            if not 100_000 <= int(parts[1]) <= 10_000_000:
                raise ValueError("pbkdf2 iterations out of range (100000 to 10000000)")
            salt, digest = _b64(parts[2]), _b64(parts[3])
        else:
            raise ValueError("expected scrypt$N$r$p$salt$hash or pbkdf2_sha256$iterations$salt$hash")
        if len(salt) < 8 or len(digest) < 16:
            raise ValueError("salt or hash too short")
    except (ValueError, binascii.Error) as exc:
        raise ConsoleConfigError(
            f"console.password_hash is not a password hash ({exc}); make one with "
            "`python -m gateway.console hash-password`"
        ) from exc


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def verify_password(password: str, encoded: str) -> bool:
    """Does ``password`` match the hash? ``False`` for a malformed hash, never an exception."""
    try:
        check_hash_format(encoded)
    except ConsoleConfigError:
        return False
    parts = encoded.split("$")
    secret = password.encode("utf-8")
    if parts[0] == "scrypt":
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = base64.b64decode(parts[4]), base64.b64decode(parts[5])
        actual = hashlib.scrypt(
            secret, salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=256 * n * r * p + (1 << 20)
        )
    else:
        salt, expected = base64.b64decode(parts[2]), base64.b64decode(parts[3])
        actual = hashlib.pbkdf2_hmac("sha256", secret, salt, int(parts[1]), dklen=len(expected))
    return hmac.compare_digest(actual, expected)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or the name localhost; anything else (0.0.0.0, ::, names) is exposed."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, console: ConsoleSettings) -> None:
    """Refuse a console reachable from other machines without a login."""
    if console.password_hash is not None:
        check_hash_format(console.password_hash.get_secret_value())
    if not is_loopback(host) and (console.username is None or console.password_hash is None):
        raise ConsoleConfigError(
            f"the web console would listen on {host} (metrics.host) without a login: set console.username "
            "and console.password_hash (python -m gateway.console hash-password), or console.enabled: false"
        )


def same_origin(headers: Mapping[str, str]) -> bool:
    """Browsers send Origin (and Sec-Fetch-Site) on form POSTs: they must name this very server."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("Origin")
    if origin is None:
        return True
    host = headers.get("Host") or ""
    return origin in (f"http://{host}", f"https://{host}")
