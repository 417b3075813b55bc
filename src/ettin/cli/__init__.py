"""The one `ettin` command. Thin: it parses, calls the library, prints.

Each area keeps its commands in its own module here and adds them with `register(app)`.
"""

from __future__ import annotations

import errno
import importlib
import sys

from ettin.omp import choose_wait_policy  # noqa: E402  (before torch loads; see ettin.omp)

choose_wait_policy()

import typer

from ettin.errors import EttinError

app = typer.Typer(
    name="ettin",
    help="Paired encoder and decoder language models, trained the Ettin way.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    from ettin.cli import data, demo, evaluate, harness, models, tokenizer, train

    for module in (demo, models, tokenizer, data, train, evaluate, harness):
        module.register(app)
    try:
        bench = importlib.import_module("ettin.cli.bench")
    except ModuleNotFoundError as exc:  # the benchmark commands are still being written
        if exc.name != "ettin.cli.bench":
            raise
    else:
        bench.register(app)


_register_all()


_REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
_WRONG_KIND = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR}


def _usage_error_types() -> tuple[type, ...]:
    """Click's exception classes, both the standalone package's and the copy typer>=0.29 vendors."""
    import click

    types = [click.exceptions.ClickException, click.exceptions.Abort]
    try:
        from typer._click.exceptions import ClickException
        from typer.exceptions import Abort

        types += [ClickException, Abort]
    except ImportError:
        pass
    return tuple(types)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except EttinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except OSError as exc:
        # The machine refused (disk full, quota, read-only folder, no permission, I/O error): not a bug,
        # and every write is atomic, so what was there before is intact. Anything else is a bug.
        if exc.errno in _REFUSALS:
            fix = (
                "nothing half-written was left in place; free space or fix the permissions, then run the command again"
            )
        elif exc.errno in _WRONG_KIND:
            fix = "a file stands where a folder is needed, or the reverse; choose another path"
        else:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc} ({fix})", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # usage errors come through here in non-standalone mode
        if not isinstance(exc, _usage_error_types()):
            raise
        if not hasattr(exc, "show"):  # Abort
            print("aborted", file=sys.stderr)
            sys.exit(1)
        ctx = getattr(exc, "ctx", None)
        if ctx is not None and type(exc).__name__ != "NoArgsIsHelpError":
            print(f"error: {exc.format_message().rstrip('.')} (see `{ctx.command_path} --help`)", file=sys.stderr)
        else:
            exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
