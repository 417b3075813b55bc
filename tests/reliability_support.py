"""Helpers shared by the reliability tests (bad input, crashes, numerical guards)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_in_process(args: list[str]) -> tuple[int, str, str]:
    """`ettin ARGS` through `ettin.cli.main` in this interpreter: (exit code, stdout, stderr)."""
    from ettin.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["ettin", *args]
    code: object = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = argv
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


def crash_trials():
    """scripts/crash_trials.py as a module, loaded once (its dataclasses need it in sys.modules)."""
    if "crash_trials" not in sys.modules:
        spec = importlib.util.spec_from_file_location("crash_trials", ROOT / "scripts" / "crash_trials.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["crash_trials"]
