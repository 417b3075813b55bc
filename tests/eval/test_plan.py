"""What a comparison evaluates, decided from folders alone: no model is loaded here."""

import shutil
from pathlib import Path

import pytest

from ettin.cli.evaluate import compare_command
from ettin.errors import EttinError
from ettin.eval import plan as P
from ettin.recipe import load_recipe, save_recipe, shipped_dir

RECIPES = shipped_dir()


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    """Planning must not build a network: loading one fails the test."""
    from ettin import hf
    from ettin.eval import handle

    def refuse(*a, **k):
        raise AssertionError("a model was loaded while planning")

    monkeypatch.setattr(hf, "load_dir", refuse)
    monkeypatch.setattr(hf, "load", refuse)
    monkeypatch.setattr(handle, "load_eval_model", refuse)


@pytest.fixture
def pair(tiny_run, tmp_path):
    """A private copy of the tiny run (steps 1 and 2 of each arch), so siblings can be added beside it."""
    return Path(shutil.copytree(tiny_run, tmp_path / "runs" / "pair"))


def cross_run(root: Path, make_tiny, tokenizer_dir, init_path: str, revision: str | None = None) -> Path:
    """An encoder-to-decoder continuation beside the pair, its recipe saved by the real writer."""
    from ettin.train.checkpoint import write_hf_export

    cross = root / "cross-enc2dec"
    info = {"step": 1, "tokens": 500, "phase": 0, "phase_name": "cross", "phase_step": 1}
    write_hf_export(cross / "decoder", "cross1", make_tiny("decoder", 7), info, tokenizer=tokenizer_dir)
    r = load_recipe(RECIPES / "cross-enc2dec-demo.yaml")
    r.init.path, r.init.revision = init_path, revision
    save_recipe(r, cross / "recipe.yaml")
    return cross


def test_plan_of_a_pair_run(pair):
    plan = P.plan_run(P.CompareRequest(pair, "out", tasks=["sst2", "lambada", "rte"]))
    assert [(m.label, m.arch) for m in plan.members] == [("encoder", "encoder"), ("decoder", "decoder")]
    assert plan.member("encoder").model == pair / "encoder" / "hf" / "step2"
    assert plan.member("decoder").checkpoint == P.Checkpoint("step2", 2000, 2)
    assert plan.pair() == ("encoder", "decoder") and plan.baseline_labels() == {}
    points = plan.dynamics["encoder"]
    assert [(p.tag, p.tokens, p.final) for p in points] == [("step1", 1000, False), ("step2", 2000, True)]
    assert points[0].model == pair / "encoder" / "hf" / "step1"
    assert plan.dynamics_tasks == ["sst2", "lambada"] and plan.dynamics_note is None
    assert plan.run_name == "pair" and plan.pretraining_sources == [] and plan.overlap() == {}


def test_a_revision_is_evaluated_everywhere_and_ends_the_dynamics(pair):
    plan = P.plan_run(P.CompareRequest(pair, "out", tasks=["sst2"], revision="step1"))
    assert {m.checkpoint.tag for m in plan.members} == {"step1"}
    assert plan.dynamics == {} and "fewer than two exported checkpoints" in plan.dynamics_note
    off = P.plan_run(P.CompareRequest(pair, "out", tasks=["sst2"], dynamics=False))
    assert off.dynamics == {} and off.dynamics_note is None


def test_pick_tags_spreads_and_keeps_both_ends():
    tags = list(range(10))
    assert P.pick_tags(tags, 4) == [0, 3, 6, 9]
    assert P.pick_tags(tags, 2) == [0, 9] and P.pick_tags(tags, 1) == [9]
    assert P.pick_tags(tags[:3], 4) == [0, 1, 2]


def test_baselines_are_the_pair_initialisations(pair):
    plan = P.plan_run(P.CompareRequest(pair, "out", tasks=["sst2"], baselines=True))
    assert plan.baseline_labels() == {"encoder": "encoder-init", "decoder": "decoder-init"}


def test_the_recipe_gives_the_pretraining_sources(pair):
    save_recipe(load_recipe(RECIPES / "demo.yaml"), pair / "recipe.yaml")
    assert P.recipe_sources(pair) == ["shakespeare", "wiki"]
    plan = P.plan_run(P.CompareRequest(pair, "out", tasks=["wiki_topic", "lambada"]))
    assert plan.overlap() == {"wiki_topic": ["wiki"]}
    (pair / "recipe.yaml").write_text("phases: [{data: {mixture: [wiki]}}]\n")  # not a recipe of this version
    assert P.recipe_sources(pair) == [] and P.run_recipe(pair) is None


def test_a_continuation_beside_the_run_is_found_by_its_recipe(pair, make_tiny, small_tokenizer_dir):
    root = pair.parent
    cross = cross_run(root, make_tiny, small_tokenizer_dir, str(pair / "encoder"), "step1")
    elsewhere = root / "other"
    elsewhere.mkdir()
    r = load_recipe(RECIPES / "cross-enc2dec-demo.yaml")
    r.init.path = "runs/elsewhere/encoder"
    save_recipe(r, elsewhere / "recipe.yaml")
    assert P.find_cross_runs(pair) == [cross]
    plan = P.plan_run(P.CompareRequest(pair, "out", tasks=["lambada"]))
    m = plan.member("encoder-to-decoder")
    assert m.arch == "decoder" and m.cross_of == "decoder" and m.model == cross / "decoder" / "hf" / "cross1"
    assert m.checkpoint == P.Checkpoint("cross1", 500, 1, init=f"{pair / 'encoder'}@step1")
    assert plan.pair() == ("encoder", "decoder")  # the native decoder, not the continuation
    alone = P.plan_run(P.CompareRequest(pair, "out", tasks=["lambada"], find_cross=False))
    assert [m.label for m in alone.members] == ["encoder", "decoder"]
    given = P.plan_run(P.CompareRequest(pair, "out", tasks=["lambada"], cross=[cross / "decoder"], find_cross=False))
    assert given.member("encoder-to-decoder").cross_of == "decoder"


def test_what_is_not_a_pair_is_refused(pair, tmp_path):
    with pytest.raises(EttinError, match="single model"):
        P.plan_run(P.CompareRequest(pair / "encoder", "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EttinError, match="holds no models"):
        P.plan_run(P.CompareRequest(tmp_path / "empty", "out"))
    with pytest.raises(EttinError, match="no revision 'step7'.*step1, step2"):
        P.plan_run(P.CompareRequest(pair, "out", revision="step7"))
    with pytest.raises(EttinError, match="unknown task 'nope'"):
        P.plan_run(P.CompareRequest(pair, "out", tasks=["nope"]))
    shutil.rmtree(pair / "decoder")
    with pytest.raises(EttinError, match=r"needs an encoder and a decoder to compare; found encoder \(encoder\)"):
        P.plan_run(P.CompareRequest(pair, "out"))
    with pytest.raises(EttinError, match="not a cross-objective model"):
        P.plan_run(P.CompareRequest(pair, "out", cross=[tmp_path / "empty"]))


def test_the_cli_renders_the_reproduction_line(pair):
    plan = P.plan_run(P.CompareRequest(pair, "evals/x"))
    assert compare_command(plan) == f"ettin compare {pair} --out evals/x --suite quick --seed 0"
    request = P.CompareRequest(
        pair,
        "evals/y",
        "full",
        3,
        tasks="sst2,lambada",
        revision="step2",
        max_checkpoints=2,
        limit=5,
        baselines=True,
        find_cross=False,
    )
    assert compare_command(P.plan_run(request)) == (
        f"ettin compare {pair} --out evals/y --suite full --seed 3 --tasks sst2,lambada --revision step2 "
        "--limit 5 --baselines --checkpoints 2 --no-find-cross"
    )
    request.dynamics = False
    assert compare_command(P.plan_run(request)).endswith("--baselines --no-dynamics --no-find-cross")
