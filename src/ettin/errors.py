"""User-facing errors.

An `EttinError` is a mistake the user can fix (a bad path, a wrong field, a tampered file). The CLI
prints its message as one line and exits non-zero, without a traceback. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class EttinError(Exception):
    """A problem with the user's input, stated so that the message alone tells the fix."""

    exit_code = 2

    def __init__(self, message: str, *, path: object | None = None, field: str | None = None, fix: str | None = None):
        parts = []
        if path is not None:
            parts.append(str(path))
        if field is not None:
            parts.append(f"field '{field}'")
        where = ": ".join(parts)
        text = f"{where}: {message}" if where else message
        if fix:
            text = f"{text} ({fix})"
        super().__init__(text)
        self.path = path
        self.field = field
        self.fix = fix
