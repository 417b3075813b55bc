"""The one `ettin` command. Thin: it parses, calls the library, prints.

Each area keeps its commands in its own module here and adds them with `register(app)`.
"""

from __future__ import annotations

import errno
import sys

import typer

from ettin.cli import bench, data, demo, evaluate, harness, infer, models, recipes, study, tokenizer, train
from ettin.errors import WRITE_FIX, EttinError, one_line

app = typer.Typer(
    name="ettin",
    help="Paired encoder and decoder language models, trained the Ettin way.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    omp_wait: str = typer.Option(
        "auto",
        "--omp-wait",
        help="how idle OpenMP threads wait: auto (PASSIVE when the machine is busy at start, else OpenMP's "
        "default; OMP_WAIT_POLICY wins when set), passive or active",
        metavar="auto|passive|active",
    ),
) -> None:
    """Runs before every command and before anything loads torch, so OpenMP sees the choice."""
    from ettin import omp

    if omp_wait.lower() not in omp.CHOICES:
        raise typer.BadParameter(f"one of {', '.join(omp.CHOICES)}, not {omp_wait!r}", param_hint="'--omp-wait'")
    choice = omp.choose_wait_policy(omp_wait)
    if choice.policy != "default" and sys.stderr.isatty():
        print(f"OpenMP wait policy: {choice}", file=sys.stderr)


for _module in (demo, study, recipes, models, tokenizer, data, train, evaluate, harness, bench, infer):
    _module.register(app)


_REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
_WRONG_KIND = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR}


def _usage_error_types() -> tuple[type, ...]:
    """The exception classes of a usage error, found through typer's public names (typer vendors click)."""
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    return (click_exception, typer.Abort)


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
    except (OSError, RuntimeError) as exc:
        from ettin.io import write_failure

        failure = write_failure(exc)  # a write that failed without an errno (numpy, torch's zip writer)
        if failure is not None:
            print(f"error: {failure}", file=sys.stderr)
            sys.exit(failure.exit_code)
        if not isinstance(exc, OSError):
            raise
        # The machine refused (disk full, quota, read-only folder, no permission, I/O error): not a bug,
        # and every write is atomic, so what was there before is intact. Anything else is a bug.
        if exc.errno in _REFUSALS:
            fix = WRITE_FIX
        elif exc.errno in _WRONG_KIND:
            fix = "a file stands where a folder is needed, or the reverse; choose another path"
        else:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(one_line(f"error: {where}{exc.strerror or exc} ({fix})"), file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # usage errors come through here in non-standalone mode
        if not isinstance(exc, _usage_error_types()):
            raise
        if not hasattr(exc, "show"):  # Abort
            print("aborted", file=sys.stderr)
            sys.exit(1)
        ctx = getattr(exc, "ctx", None)
        if ctx is not None and type(exc).__name__ != "NoArgsIsHelpError":
            print(
                one_line(f"error: {exc.format_message().rstrip('.')} (see `{ctx.command_path} --help`)"),
                file=sys.stderr,
            )
        else:
            exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
