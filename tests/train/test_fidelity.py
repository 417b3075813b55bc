"""Every number of every shipped recipe against the fidelity table of docs/recipes.md.

The tables follow a marker `<!-- fidelity: NAME ... -->` naming the recipes they cover (`{size}`
stands for the six Ettin sizes, one column each; otherwise one `value` column for all of them). A row
is `| `field` | value ... | source |`; `-` means "not set". The test fails when a recipe's value and
its row disagree, when a recipe has a number (or schedule, shape, precision, size) that no row
covers, or when a shipped recipe is in no table: a recipe cannot drift from its sources silently.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from ettin.recipe import load_recipe, parse_count, shipped_recipes
from ettin.train.schedule import planned_checkpoints

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
SIZES = ["17m", "32m", "68m", "150m", "400m", "1b"]
# Not fidelity numbers: memory and bookkeeping (micro_batch_size changes no trajectory; keep_last,
# guards, eval and distributed settings change no training step); paths and names are not numbers.
NOT_COVERED = re.compile(
    r"^(micro_batch_size|checkpoint\.keep_last|checkpoint\.export_hf|guards\..*|eval\..*|distributed\..*|"
    r"prepare\..*|phases\.\d+\.data\.(dir|backfill))$"
)
STRINGS = re.compile(r"(^precision$|^model\.size$|\.lr\.schedule$|\.batch_warmup_shape$)")


def tables() -> dict[str, dict[str, str]]:
    """recipe name -> {field: cell text}."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    out: dict[str, dict[str, str]] = {}
    for i, line in enumerate(lines):
        m = re.match(r"<!-- fidelity: (.+?) -->", line.strip())
        if not m:
            continue
        patterns = m.group(1).split()
        head = [c.strip() for c in lines[i + 1].strip().strip("|").split("|")]
        assert head[0] == "field" and head[-1] == "source", f"line {i + 2}: a fidelity table needs field ... source"
        columns = head[1:-1]
        for row in lines[i + 3 :]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            field, values, source = cells[0].strip("`"), cells[1:-1], cells[-1]
            assert len(values) == len(columns) and source, f"row {field!r}: one value per column and a source"
            for pattern in patterns:
                for col, value in zip(columns, values):
                    name = pattern.replace("{size}", col) if "{size}" in pattern else pattern
                    if "{size}" in pattern or col == "value":
                        out.setdefault(name, {})[field] = value
    return out


def flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict) and "source" in obj[0]:
        yield prefix, obj  # a mixture
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}.{i}")
    else:
        yield prefix, obj


def same(field: str, cell: str, value) -> bool:
    if cell == "-":
        return value is None
    if value is None:
        return False
    if field.endswith("data.mixture"):
        return cell == ", ".join(f"{e['source']} {e['weight']:g}" for e in value)
    if isinstance(value, (list, tuple)):
        return [float(x) for x in cell.strip("[]").split(",")] == [float(x) for x in value]
    if isinstance(value, bool) or isinstance(value, str):
        return cell == str(value)
    if field.endswith("tokens") and isinstance(value, int):
        return parse_count(cell) == value
    return math.isclose(float(cell), float(value), rel_tol=1e-12)


def covered(field: str, value) -> bool:
    """The leaves the table must hold: numbers, mixtures and the few strings that shape training."""
    if NOT_COVERED.match(field) or value is None:
        return False
    if field.endswith("data.mixture"):
        return True
    if isinstance(value, str):
        return bool(STRINGS.search(field))
    return isinstance(value, (int, float, list, tuple)) and not isinstance(value, bool)


TABLES = tables()


def test_every_shipped_recipe_has_a_table():
    assert set(shipped_recipes()) <= set(TABLES), sorted(set(shipped_recipes()) - set(TABLES))
    assert set(TABLES) <= set(shipped_recipes()), sorted(set(TABLES) - set(shipped_recipes()))


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_recipe_numbers_match_the_table(name):
    rows = TABLES[name]
    leaves = dict(flatten(load_recipe(name).to_dict()))
    wrong = [f"{f}: table {rows[f]!r}, recipe {leaves.get(f)!r}" for f in rows if not same(f, rows[f], leaves.get(f))]
    idle = {f for f in leaves if f.endswith(".batch_warmup_shape") and not leaves[f[: -len("shape")] + "tokens"]}
    missing = [f for f, v in leaves.items() if covered(f, v) and f not in rows and f not in idle]
    assert not wrong, f"{name} differs from docs/recipes.md: " + "; ".join(wrong)
    assert not missing, f"{name} has numbers without a row in docs/recipes.md: {missing}"


def test_the_table_catches_a_drift():
    """The check itself can fail: a changed learning rate no longer matches its row."""
    r = load_recipe("ettin-17m", ["optimizer.lr=2e-3"])
    leaves = dict(flatten(r.to_dict()))
    assert not same("optimizer.lr", TABLES["ettin-17m"]["optimizer.lr"], leaves["optimizer.lr"])


@pytest.mark.parametrize(
    "name,tags",
    [("ettin-17m", 236), ("ettin-150m", 236), ("ettin-1b", 212), ("cross-enc2dec-17m", 5), ("cross-enc2dec-1b", 5)],
)
def test_checkpoint_count_of_a_full_run(name, tags):
    """8.5B tokens into each phase (the count restarting), plus each phase's end: 200 + 30 + 6 for the
    released sizes; the 1b's shorter extension and decay give 200 + 10 + 2."""
    plan = planned_checkpoints(load_recipe(name))
    assert len(plan) == tags
    assert len({(phase, step) for phase, step, _ in plan}) == tags
