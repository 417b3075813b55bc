"""The main job end to end, at the smallest scale: every step runs and writes what it says."""

import json

import pytest

from ettin.demo import recipe_path, run_demo

TINY = [
    "model.size=tiny",
    "prepare.tokenizer.vocab_size=512",
    "prepare.sources=[shakespeare]",
    "prepare.tokenizer.corpus=[shakespeare]",
    "phases.0.tokens=6K",
    "phases.1.tokens=3K",
    "phases.2.tokens=2K",
    "phases.0.data.mixture=[{source: shakespeare, weight: 1.0}]",
    "phases.1.data.mixture=[{source: shakespeare, weight: 1.0}]",
    "phases.2.data.mixture=[{source: shakespeare, weight: 1.0}]",
    "checkpoint.every_tokens=4K",
    "phases.0.batch_warmup_tokens=0",
    "phases.0.lr.warmup_tokens=1K",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from ettin.cli.evaluate import compare_command

    out = tmp_path_factory.mktemp("demo")
    return run_demo(
        out,
        overrides=TINY,
        tasks=["sst2", "arc_easy"],
        limit=12,
        progress=False,
        log=lambda s: None,
        render_command=compare_command,
    )


def test_demo_recipe_is_found():
    assert recipe_path().name == "demo.yaml"


def test_demo_trains_both_through_three_phases(demo):
    phases = {(s.arch, s.phase) for s in demo.train_stats}
    assert phases == {(a, p) for a in ("encoder", "decoder") for p in ("pretrain", "extension", "decay")}


def test_demo_exports_load_in_transformers_with_ettin_numerics(demo):
    assert demo.hf_check["encoder"]["class"] == "ModernBertForMaskedLM"
    assert demo.hf_check["decoder"]["class"] == "ModernBertDecoderForCausalLM"
    assert all(c["max_abs_diff"] <= 1e-4 for c in demo.hf_check.values())
    assert demo.hf_check["decoder"]["generate_matches_ettin"]


def test_demo_writes_the_report_for_the_pair(demo):
    results = json.loads((demo.out / "results.json").read_text())
    assert set(results["models"]) >= {"encoder", "decoder"}
    assert results["tasks"] == ["sst2", "arc_easy"] and not results["failed"]
    report = (demo.out / "report.md").read_text()
    assert "What this comparison can and cannot show" in report
    line = (
        f"ettin compare {demo.out / 'pair'} --out {demo.out} --suite quick --seed 21 --tasks sst2,arc_easy --limit 12"
    )
    assert report.rstrip().endswith(f"`{line}`")
    assert (demo.out / "tasks.png").stat().st_size > 0
    for what, path in demo.written:
        assert path.exists(), what


def test_demo_is_idempotent(demo):
    again = run_demo(demo.out, overrides=TINY, tasks=["sst2"], limit=12, progress=False, log=lambda s: None)
    assert again.train_stats == [] or all(s.steps == 0 for s in again.train_stats)


def test_demo_summary_prints_every_task_and_path(demo):
    import io

    from rich.console import Console

    from ettin.cli.demo import _summary

    buf = io.StringIO()
    _summary(Console(file=buf, width=160), demo)
    text = buf.getvalue()
    assert "sst2" in text and "arc_easy" in text and "total" in text
    assert str(demo.out / "report.md") in text
