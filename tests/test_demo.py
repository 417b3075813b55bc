"""The main job end to end, at the smallest scale: every step runs and writes what it says."""

import json

import pytest

from ettin.demo import recipe_path, run_demo

TINY = [
    "model.size=tiny",
    "prepare.tokenizer.vocab_size=512",
    "prepare.sources=[shakespeare, shakespeare-heldout]",
    "eval.data.mixture=[{source: shakespeare-heldout, weight: 1.0}]",
    "eval.every_tokens=4K",
    "eval.sequences=4",
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
TINY_CROSS = [
    "phases.0.tokens=2K",
    "phases.0.lr.warmup_tokens=200",
    "phases.0.lr.decay_tokens=500",
    "phases.0.batch_warmup_tokens=0",
    "phases.0.data.mixture=[{source: shakespeare, weight: 1.0}]",
    "eval.data.mixture=[{source: shakespeare-heldout, weight: 1.0}]",
    "eval.every_tokens=1K",
    "eval.sequences=4",
    "checkpoint.every_tokens=2K",
]
TASKS = ["sst2", "shakespeare_next_word"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from ettin.cli.evaluate import compare_command

    out = tmp_path_factory.mktemp("demo")
    return run_demo(
        out,
        overrides=TINY,
        cross_overrides=TINY_CROSS,
        tasks=TASKS,
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
    assert set(results["models"]) == {"encoder", "decoder", "encoder-to-decoder", "decoder-to-encoder"}
    assert results["tasks"] == TASKS and not results["failed"]
    report = (demo.out / "report.md").read_text()
    assert "What this comparison can and cannot show" in report
    line = (
        f"ettin compare {demo.out / 'pair'} --out {demo.out} --suite demo --seed 21 "
        f"--tasks {','.join(TASKS)} --limit 12 --no-dynamics"
    )
    assert report.rstrip().endswith(f"`{line}`")
    assert (demo.out / "tasks.png").stat().st_size > 0
    for what, path in demo.written:
        assert path.exists(), what


def test_demo_continues_each_model_in_the_other_objective(demo):
    results = json.loads((demo.out / "results.json").read_text())
    for label, native in (("encoder-to-decoder", "decoder"), ("decoder-to-encoder", "encoder")):
        rec = results["models"][label]
        assert rec["cross_of"] == native and set(rec["vs_native"]) == set(TASKS)
        assert rec["init"].endswith(f"pair/{label.split('-')[0]}")
    assert {s.phase for s in demo.cross_stats} == {"cross"}


def test_demo_report_states_findings_and_plots_heldout_loss(demo):
    results = json.loads((demo.out / "results.json").read_text())
    losses = results["heldout_loss"]
    assert set(losses) == {"encoder", "decoder", "encoder-to-decoder", "decoder-to-encoder"}
    assert len(losses["encoder"]) >= 3  # every 4K tokens and at each phase end
    objectives = {label: {p["objective"] for p in pts} for label, pts in losses.items()}
    assert objectives == {
        "encoder": {"MLM"},
        "decoder": {"CLM"},
        "encoder-to-decoder": {"CLM"},
        "decoder-to-encoder": {"MNTP"},
    }
    # a continuation's line starts where the pair's training ended
    assert losses["encoder-to-decoder"][0]["tokens"] > losses["decoder"][-1]["tokens"] - 1
    report = (demo.out / "report.md").read_text()
    assert "## Findings (paired intervals only)" in report and "## Held-out loss over training" in report
    assert "| classification | encoder ahead | sst2 |" in report
    assert "| generation | decoder ahead | shakespeare_next_word |" in report
    assert (demo.out / "heldout_loss.png").stat().st_size > 0


def test_demo_is_idempotent(demo):
    again = run_demo(
        demo.out,
        overrides=TINY,
        cross_overrides=TINY_CROSS,
        tasks=["sst2"],
        limit=12,
        progress=False,
        log=lambda s: None,
    )
    assert again.train_stats == [] or all(s.steps == 0 for s in again.train_stats)
    assert again.cross_stats == [] or all(s.steps == 0 for s in again.cross_stats)


def test_demo_summary_prints_every_task_and_path(demo):
    import io

    from rich.console import Console

    from ettin.cli.demo import _summary

    buf = io.StringIO()
    _summary(Console(file=buf, width=160), demo)
    text = buf.getvalue()
    assert "sst2" in text and "shakespeare_next_word" in text and "total" in text
    assert "findings" in text and "cross-objective" in text
    assert str(demo.out / "report.md") in text
