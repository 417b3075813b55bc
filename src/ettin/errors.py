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
        # one line, whatever the user's input held (a path or a value with a newline is shown escaped)
        text = text.replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(text)
        self.path = path
        self.field = field
        self.fix = fix


WRITE_FIX = "nothing half-written was left in place; free space or fix the permissions, then run the command again"


class WriteFailed(EttinError):
    """A write the machine refused in a way that carries no errno: numpy's partial write ("N requested
    and M written"), torch's zip writer, safetensors' writer. Raised by ettin.io's atomic writers, so
    that the previous state is intact, and mapped like a full disk."""

    def __init__(self, message: str, *, path: object | None = None):
        super().__init__(message, path=path, fix=WRITE_FIX)
