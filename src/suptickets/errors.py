"""The project's own errors: what a user can fix (a setting, a data file, an input that is missing or
does not fit). A stage reports these as one line and exits 2; any other exception is a bug and keeps
its traceback (exit 1).

Each also derives from the built-in error it used to be (ValueError, RuntimeError,
FileNotFoundError), so code that catches those keeps working.
"""

from __future__ import annotations


class SupticketsError(Exception):
    """Base of every error a user can fix; the message names the key or file and what is allowed."""


class ConfigError(SupticketsError, ValueError):
    """The configuration cannot run; the message has one line per problem."""


class DataError(SupticketsError, ValueError):
    """A data file is missing or not what it should be; the message names the file."""


class ValidationFailed(SupticketsError, ValueError):
    """A table or tensor set failed validation; `failure_cases` holds pandera's table if any."""

    def __init__(self, message: str, failure_cases=None):
        super().__init__(message)
        self.failure_cases = failure_cases


class TrainingDiverged(SupticketsError, RuntimeError):
    """The loss became NaN or infinite; nothing of the run is written."""


class MissingInput(SupticketsError, FileNotFoundError):
    """An input file a stage reads does not exist (an earlier stage has not run); the message names it."""


class BadInputFile(SupticketsError, ValueError):
    """An input file a stage reads exists but is unreadable or does not fit the configuration."""


class BadModelFile(BadInputFile):
    """A model, optimizer or checkpoint file does not fit the configured architecture or the budget."""


class SparseFileError(BadModelFile):
    """A sparse model file that cannot be loaded; the message names the file and the key."""


class VerificationFailed(SupticketsError, ValueError):
    """An exported sparse model does not compute the masked model's predictions (within the tolerance)."""
