"""The errors a user meets: each says what was wrong and what to do. The command line
prints them as one line (exit status 2), never a traceback; :data:`USER_ERRORS` names them."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and what is allowed."""


class DataError(RuntimeError):
    """A data file is missing, corrupt or cannot be fetched; the message says what to do."""


class RunError(RuntimeError):
    """A run directory is missing, incomplete or inconsistent."""


class CodingError(ValueError):
    """A compressed file cannot be decoded (damaged, truncated, another model, ...)."""


USER_ERRORS = (ConfigError, DataError, RunError, CodingError)
