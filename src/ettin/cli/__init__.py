"""The one `ettin` command. Thin: it parses, calls the library, prints.

Each area keeps its commands in its own module here and adds them with `register(app)`.
"""

from __future__ import annotations

import sys

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
    from ettin.cli import models

    models.register(app)
    for name in ("tokenizer", "data", "train", "evaluate", "bench"):
        try:
            module = __import__(f"ettin.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:  # an area not built yet
            if exc.name != f"ettin.cli.{name}":
                raise
            continue
        module.register(app)


_register_all()


def main() -> None:
    try:
        app(standalone_mode=False)
    except EttinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
