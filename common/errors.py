"""Exceptions that decide where a series goes.

A :class:`PermanentError` sends the series to quarantine at once with its
message as the reason a person reads; a :class:`RetryableError` is retried with
backoff and quarantined only when retries are exhausted. Messages name the bad
input and never carry patient identifiers.
"""

from __future__ import annotations


class PedifaceError(Exception):
    """Base of every error pediface raises on purpose.

    ``code`` is a short stable token for machines (``"input.multi_stack"``);
    the message is for people.
    """

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class PermanentError(PedifaceError):
    """Retrying would give the same result: quarantine."""

    code = "permanent"


class InputError(PermanentError):
    """The received series cannot be turned into a volume (unsupported, inconsistent, corrupt)."""

    code = "input"


class MaskingError(PermanentError):
    """No trustworthy face mask: the masker failed or its result is implausible.

    ``details`` holds the masker's measurements (numbers and labels, never identifiers), e.g.
    the face volume it found, for the evidence that a field of view holds no face.
    """

    code = "mask"

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.details: dict[str, object] = dict(details or {})


class DeidentificationError(PermanentError):
    """The headers cannot be de-identified safely under the configured profile."""

    code = "deid"


class RetryableError(PedifaceError):
    """A transient fault outside the series (destination down, broker unreachable)."""

    code = "retryable"


class DeliveryError(RetryableError):
    """The destination did not accept the defaced series."""

    code = "delivery"
