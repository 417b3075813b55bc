"""Helpers shared by tests in several folders: the CLI run in-process and its one-line errors.

(Imported as `support`: the root conftest puts tests/ on sys.path.)
"""

from __future__ import annotations

import contextlib
import io
import sys


def run_in_process(args: list) -> tuple[int, str, str]:
    """`ettin ARGS` through `ettin.cli.main` in this interpreter: (exit code, stdout, stderr).

    Arguments may be paths or numbers; they are passed as strings."""
    from ettin.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["ettin", *map(str, args)]
    code: object = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = argv
    code = 0 if code is None else code if isinstance(code, int) else 1  # SystemExit(None) is success
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A user error: exit 2, exactly one `error: ...` line holding every needle, no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
