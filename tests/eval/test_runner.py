"""End to end on tiny random models: one task of each kind, small limits."""

import json

import pytest

from ettin.errors import EttinError
from ettin.eval import runner
from ettin.eval import tasks as T
from ettin.recipe import shipped_dir

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = shipped_dir()
FOUR_KINDS = ["sst2", "wiki_retrieval", "arc_easy", "lambada"]


@pytest.fixture(scope="module")
def quick_results(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "enc"
    return out, runner.evaluate_model(tiny_run / "encoder", FOUR_KINDS, "quick", out, seed=0, limit=6)


def test_evaluate_model_writes_a_json_per_task(quick_results):
    out, res = quick_results
    assert res["failed"] == [] and list(res["tasks"]) == FOUR_KINDS
    assert res["info"]["arch"] == "encoder" and res["info"]["revision"] is None
    for name in FOUR_KINDS:
        r = json.loads((out / f"{name}.json").read_text())
        assert r["status"] == "ok" and r["task"] == name and r["n"] == 6
        assert r["metric"] == T.TASKS[name].metric and 0.0 <= r["value"] <= 1.0
        assert r["ci"]["low"] <= r["value"] <= r["ci"]["high"]
        assert r["ci"]["method"] == ("bootstrap-percentile-1000" if name == "wiki_retrieval" else "wilson")
        assert r["seconds"] >= 0 and r["method"] and len(r["per_item"]) == 6
    saved = json.loads((out / "results.json").read_text())
    assert saved["tasks"]["sst2"]["value"] == res["tasks"]["sst2"]["value"]


def test_results_are_deterministic_for_a_seed(quick_results, tiny_run):
    _, first = quick_results
    again = runner.evaluate_model(tiny_run / "encoder", FOUR_KINDS, "quick", None, seed=0, limit=6)
    for name in FOUR_KINDS:
        assert again["tasks"][name]["per_item"] == first["tasks"][name]["per_item"]
        assert again["tasks"][name]["item_ids"] == first["tasks"][name]["item_ids"]
    other = runner.evaluate_model(tiny_run / "encoder", ["arc_easy"], "quick", None, seed=1, limit=6)
    assert other["tasks"]["arc_easy"]["item_ids"] != first["tasks"]["arc_easy"]["item_ids"]


def test_full_suite_fine_tunes(tiny_run):
    """The full suite's methods (LR grid on a dev slice, contrastive tuning shared by both retrieval
    tasks) on a handful of items."""
    res = runner.evaluate_model(tiny_run / "decoder", ["rte", "wiki_retrieval", "sciq_retrieval"], "full", limit=4)
    assert res["failed"] == []
    rte = res["tasks"]["rte"]
    assert rte["method"].startswith("fine-tuning: last pooling") and len(rte["details"]["dev_acc"]) == 3
    assert rte["details"]["n_train"] + rte["details"]["n_dev"] == 20
    for name in ("wiki_retrieval", "sciq_retrieval"):
        r = res["tasks"][name]
        assert r["method"].startswith("contrastive fine-tuning") and "zero_shot" in r["details"]
        assert r["details"]["contrastive"]["pairs"] == 20 and r["details"]["contrastive"]["scale"] == 20.0
    assert res["tasks"]["sciq_retrieval"]["details"]["corpus"] == 20


def test_a_failing_task_keeps_the_others(tiny_run, tmp_path, monkeypatch):
    def broken():
        raise RuntimeError("data went missing")

    monkeypatch.setitem(T.TASKS, "arc_easy", T.dataclasses.replace(T.TASKS["arc_easy"], loader=broken))
    T._cached_load.cache_clear()
    try:
        res = runner.evaluate_model(tiny_run / "decoder", ["arc_easy", "lambada"], "quick", tmp_path, limit=3)
    finally:
        T._cached_load.cache_clear()
    assert res["failed"] == ["arc_easy"]
    assert res["tasks"]["arc_easy"]["status"] == "error" and "data went missing" in res["tasks"]["arc_easy"]["error"]
    assert res["tasks"]["lambada"]["status"] == "ok"
    assert json.loads((tmp_path / "results.json").read_text())["failed"] == ["arc_easy"]
    assert json.loads((tmp_path / "lambada.json").read_text())["status"] == "ok"


def test_bad_input_is_refused_before_any_work(tiny_run, tmp_path):
    with pytest.raises(EttinError, match="unknown task 'nope'"):
        runner.evaluate_model(tiny_run / "encoder", ["nope"], out_dir=tmp_path)
    with pytest.raises(EttinError, match="no revision 'step9'.*step1, step2"):
        runner.evaluate_model(tiny_run / "encoder", ["sst2"], revision="step9")
    with pytest.raises(EttinError, match="config.json is missing"):
        runner.evaluate_model(tmp_path, ["sst2"])
    with pytest.raises(EttinError, match="cannot use CLS pooling"):
        runner.evaluate_model(tiny_run / "decoder", ["sst2"], pooling="cls")
    with pytest.raises(EttinError, match="unknown suite"):
        runner.evaluate_model(tiny_run / "decoder", suite="huge")
    assert not any(tmp_path.iterdir())


def test_compare_run_writes_report_plots_and_dynamics(tiny_run, tmp_path):
    res = runner.compare_run(tiny_run, tmp_path / "cmp", "quick", tasks=["sst2", "lambada"], limit=4, max_checkpoints=2)
    out = tmp_path / "cmp"
    assert {p.name for p in out.iterdir()} >= {"report.md", "results.json", "tasks.png", "dynamics.png", "models"}
    assert res["pair"]["encoder"] == "encoder" and res["pair"]["decoder"] == "decoder"
    assert set(res["pair"]["tasks"]) == {"sst2", "lambada"}
    assert res["models"]["encoder"]["tag"] == "step2" and res["models"]["encoder"]["tokens"] == 2000
    assert [p["tag"] for p in res["dynamics"]["encoder"]] == ["step1", "step2"]
    assert (
        res["dynamics"]["decoder"][1]["tasks"]["sst2"]["value"]
        == res["models"]["decoder"]["results"]["tasks"]["sst2"]["value"]
    )
    report = (out / "report.md").read_text()
    assert "What this comparison can and cannot show" in report and "| sst2 |" in report
    assert (out / "tasks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "models" / "decoder" / "lambada.json").read_text())["status"] == "ok"
    # the same run at an earlier revision: that tag everywhere, dynamics stop there
    early = runner.compare_run(tiny_run, tmp_path / "early", tasks=["sst2"], limit=4, revision="step1")
    assert early["models"]["decoder"]["tag"] == "step1" and early["dynamics"] == {}


def test_compare_with_baselines_and_overlap(tiny_run, tmp_path):
    from ettin.recipe import load_recipe, save_recipe

    save_recipe(load_recipe(RECIPES / "demo.yaml"), tiny_run / "recipe.yaml")  # trains on wiki and shakespeare
    try:
        res = runner.compare_run(
            tiny_run,
            tmp_path / "b",
            tasks=["wiki_topic", "lambada"],
            limit=3,
            baselines=True,
            max_checkpoints=2,
            threads=1,
        )
    finally:
        (tiny_run / "recipe.yaml").unlink()
    assert list(res["models"]) == ["encoder", "decoder", "encoder-init", "decoder-init"]
    assert res["models"]["encoder-init"]["baseline_of"] == "encoder" and res["models"]["encoder-init"]["tokens"] == 0
    assert set(res["models"]["decoder"]["vs_init"]) == {"wiki_topic", "lambada"}
    assert [p["tag"] for p in res["dynamics"]["encoder"]] == ["init", "step1", "step2"]
    assert res["pretraining_overlap"] == {"wiki_topic": ["wiki"]}
    assert res["models"]["encoder"]["results"]["threads"] == 1
    report = (tmp_path / "b" / "report.md").read_text()
    assert "against its random initialisation" in report and "Data overlap" in report and "encoder-init" in report


def test_compare_includes_a_cross_objective_model(tiny_run, tmp_path, make_tiny, small_tokenizer_dir):
    from ettin.train.checkpoint import write_hf_export

    cross = tmp_path / "cross-enc2dec"
    info = {"step": 1, "tokens": 500, "phase": 0, "phase_name": "cross", "phase_step": 1}
    write_hf_export(cross / "decoder", "cross1", make_tiny("decoder", 7), info, tokenizer=small_tokenizer_dir)
    from ettin.recipe import load_recipe, save_recipe

    r = load_recipe(RECIPES / "cross-enc2dec-demo.yaml")
    r.init.path = str(tiny_run / "encoder")
    save_recipe(r, cross / "recipe.yaml")
    res = runner.compare_run(tiny_run, tmp_path / "c", tasks=["lambada"], limit=3, dynamics=False, cross=[cross])
    rec = res["models"]["encoder-to-decoder"]
    assert rec["arch"] == "decoder" and rec["cross_of"] == "decoder" and rec["tag"] == "cross1"
    assert set(rec["vs_native"]) == {"lambada"}
    report = (tmp_path / "c" / "report.md").read_text()
    assert "encoder-to-decoder (cross-objective) against the native decoder" in report
    assert "continued from" in report


def test_compare_run_refuses_what_is_not_a_pair(tiny_run, tmp_path):
    """Planning refuses it (tests/eval/test_plan.py has the cases): nothing is written."""
    with pytest.raises(EttinError, match="single model"):
        runner.compare_run(tiny_run / "encoder", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_report_token_counts():
    from ettin.eval.report import _fmt_tokens

    assert [_fmt_tokens(n) for n in (None, 0, 950, 202007, 1.7e12)] == ["unknown", "0", "950", "202k", "1.7T"]
