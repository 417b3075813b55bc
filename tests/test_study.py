"""`ettin study` at the smallest scale: two sizes on one stream, then the figure per task family."""

import json

import pytest

from ettin.errors import EttinError
from ettin.study import LADDERS, gap_trend, get_ladder, run_study

# the demo test's tiny pipeline, with fewer tokens (two rungs run here)
TINY = [
    "prepare.tokenizer.vocab_size=512",
    "prepare.sources=[shakespeare, shakespeare-heldout]",
    "prepare.tokenizer.corpus=[shakespeare]",
    "eval.data.mixture=[{source: shakespeare-heldout, weight: 1.0}]",
    "eval.every_tokens=2K",
    "eval.sequences=4",
    "phases.0.tokens=3K",
    "phases.1.tokens=1K",
    "phases.2.tokens=1K",
    "phases.0.data.mixture=[{source: shakespeare, weight: 1.0}]",
    "phases.1.data.mixture=[{source: shakespeare, weight: 1.0}]",
    "phases.2.data.mixture=[{source: shakespeare, weight: 1.0}]",
    "checkpoint.every_tokens=4K",
    "phases.0.batch_warmup_tokens=0",
    "phases.0.lr.warmup_tokens=500",
]
TASKS = ["sst2", "shakespeare_next_word"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return run_study(
        out, sizes=["tiny", "mini"], overrides=TINY, tasks=TASKS, limit=10, progress=False, log=lambda s: None
    )


def test_ladders_have_three_sizes_and_shipped_recipes():
    from ettin.demo import recipe_path
    from ettin.recipe import load_recipe

    assert [r.label for r in LADDERS["cpu"]] == ["tiny", "mini", "demo"]
    gpu = [load_recipe(recipe_path(r.recipe)) for r in LADDERS["gpu"]]
    assert [r.model.size for r in gpu] == ["17m", "32m", "68m"]
    # one stream: the rungs differ in size and micro-batch only
    assert len({(r.seed, r.tokenizer, r.data_dir, tuple(p.tokens for p in r.phases)) for r in gpu}) == 1
    assert all(2e9 <= sum(p.tokens for p in r.phases) <= 5e9 for r in gpu)


def test_ladder_errors_are_one_line():
    with pytest.raises(EttinError, match="unknown ladder"):
        get_ladder("tpu")
    with pytest.raises(EttinError, match="at least two"):
        get_ladder("cpu", ["tiny"])
    with pytest.raises(EttinError, match="no size 1b"):
        get_ladder("gpu", ["17m", "1b"])


def test_study_trains_each_size_on_one_stream(study):
    assert list(study.rungs) == ["tiny", "mini"]
    params = [r["parameters"]["encoder"] for r in study.summary["rungs"]]
    assert params[0] < params[1]
    # one tokenizer and one prepared data folder for both rungs
    for label in ("tiny", "mini"):
        recipe = (study.out / label / "pair" / "recipe.yaml").read_text()
        assert str(study.out / "tokenizer") in recipe and str(study.out / "data") in recipe
    assert not (study.out / "tiny" / "tokenizer").exists()


def test_study_writes_score_and_gap_per_family(study):
    summary = json.loads((study.out / "study.json").read_text())
    assert set(summary["families"]) == {"classification", "generation"}
    for t in TASKS:
        points = summary["tasks"][t]["points"]
        assert [p["rung"] for p in points] == ["tiny", "mini"]
        assert all(p["gap"]["low"] <= p["gap"]["diff"] <= p["gap"]["high"] for p in points)
        assert gap_trend(summary, t) is not None
    text = (study.out / "study.md").read_text()
    assert "| generation | shakespeare_next_word |" in text and "study.png" in text
    assert (study.out / "study.png").stat().st_size > 0


def test_study_command_refuses_a_bad_ladder_in_one_line(tmp_path):
    from support import run_in_process

    code, out, err = run_in_process(["study", "--out", tmp_path / "s", "--ladder", "cpu", "--sizes", "tiny"])
    assert code == 2 and "at least two sizes" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_study_summary_table_prints_every_task(study):
    import io

    from rich.console import Console

    from ettin.cli.study import _summary

    buf = io.StringIO()
    _summary(Console(file=buf, width=160), study)
    text = buf.getvalue()
    assert all(t in text for t in TASKS) and "tiny" in text and "mini" in text
