"""What every part of pediface shares: errors, logging, durable files, the audit trail, the version.

Standard library, pydantic and structlog only; imports nothing of the project but :mod:`config`.
"""
