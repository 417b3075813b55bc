"""`ettin recipes`: the recipes that ship inside the package, listed or printed for copying."""

from __future__ import annotations

import typer


def summary(name: str) -> dict:
    """One shipped recipe in a line's worth of facts: size, arch, phases, tokens."""
    from ettin.recipe import approx_count, load_recipe, shipped_recipes

    r = load_recipe(shipped_recipes()[name])
    size = r.model.size or ("of --init" if r.init.path else "explicit")
    return {
        "name": name,
        "size": size,
        "arch": r.arch,
        "phases": [p.name for p in r.phases],
        "tokens": approx_count(r.total_tokens),
        "phase_tokens": [approx_count(p.tokens) for p in r.phases],
    }


def register(app: typer.Typer) -> None:
    recipes = typer.Typer(
        help="The shipped recipes: `ettin recipes` lists them, `ettin recipes show NAME` prints one.",
        invoke_without_command=True,
    )
    app.add_typer(recipes, name="recipes")

    @recipes.callback()
    def list_cmd(ctx: typer.Context) -> None:
        """List the shipped recipes (use a name anywhere a recipe file is taken: `ettin train ettin-17m --out RUN`)."""
        if ctx.invoked_subcommand is not None:
            return
        from ettin.recipe import shipped_recipes

        rows = [summary(name) for name in shipped_recipes()]
        width = {k: max((len(str(r[k])) for r in rows), default=1) for k in ("name", "size", "arch", "tokens")}
        for r in rows:
            phases = ", ".join(f"{p} {t}" for p, t in zip(r["phases"], r["phase_tokens"]))
            typer.echo(
                f"{r['name']:<{width['name']}}  size {r['size']:<{width['size']}}  {r['arch']:<{width['arch']}}  "
                f"{r['tokens']:>{width['tokens']}} tokens: {phases}"
            )
        typer.echo("(ettin recipes show NAME prints one; copy it to edit, then ettin train FILE --out RUN)")

    @recipes.command("show")
    def show_cmd(name: str = typer.Argument(..., help="a shipped recipe's name, e.g. ettin-17m")) -> None:
        """Print a shipped recipe as it ships, comments included (redirect it to a file to edit it)."""
        from ettin.errors import EttinError
        from ettin.recipe import shipped_recipes

        shipped = shipped_recipes()
        key = name.removesuffix(".yaml")
        if key not in shipped:
            raise EttinError(f"no shipped recipe named '{name}'", field="NAME", fix=f"use one of: {', '.join(shipped)}")
        typer.echo(shipped[key].read_text(encoding="utf-8"), nl=False)
