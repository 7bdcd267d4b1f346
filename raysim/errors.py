"""The one error type for bad user input: `FILE: field: reason`, exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a config, a data file or a command-line value.

    Rendered as one line, `FILE: dotted.field: reason` (file and field optional),
    and turned into exit status 2 by the CLI.
    """

    def __init__(self, reason: str, file: str | None = None, field: str | None = None):
        self.reason = reason
        self.file = file
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.field) if p]
        return ": ".join([*parts, self.reason])


class DataError(UserError):
    """A data file that is missing, not HDF5, or not in the PDEBench layout."""
