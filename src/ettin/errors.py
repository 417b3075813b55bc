"""User-facing errors.

An `EttinError` is a mistake the user can fix (a bad path, a wrong field, a tampered file). The CLI
prints its message as one line and exits non-zero, without a traceback. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

# Every character str.splitlines() breaks a line at (and terminals may): \n \r, vertical tab, form feed,
# the file/group/record separators, NEL, and the Unicode line and paragraph separators.
_LINE_BREAKS = {c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_LINE_BREAKS_TABLE = str.maketrans(_LINE_BREAKS)


def one_line(text: str) -> str:
    """`text` as one line, whatever the user's input held: a path or a value with a line break in it is
    shown with that break escaped (\\n, \\x1e, \\u2028, ...)."""
    return text.translate(_LINE_BREAKS_TABLE)


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
        super().__init__(one_line(text))
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
