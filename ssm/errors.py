"""User-facing error types.

Every error a user can cause (bad file, wrong units, mismatched topology, ...) is raised
as :class:`SSMError` with a one-line message that names the file and says how to fix it.
The CLI prints that line and exits non-zero; library users can catch it.
"""

from __future__ import annotations


class SSMError(ValueError):
    """A problem with the user's input, reported as one actionable line."""


class InputFileError(SSMError):
    """A file could not be read or does not hold what it should."""

    def __init__(self, path, problem: str, fix: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)
