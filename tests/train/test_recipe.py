"""Recipe validation, overrides and diffs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ettin.errors import EttinError
from ettin.recipe import (
    apply_overrides,
    diff_recipes,
    format_count,
    load_recipe,
    parse_count,
    parse_override,
    recipe_from_dict,
    resolve_recipe,
    shipped_dir,
    shipped_recipes,
)

RECIPES = shipped_dir()


def minimal(**top) -> dict:
    raw = {
        "model": {"size": "tiny"},
        "data_dir": "data/here",
        "phases": [
            {"name": "pretrain", "tokens": 1000, "seq_len": 64, "batch_size": 4, "data": {"mixture": {"wiki": 1}}}
        ],
    }
    raw.update(top)
    return raw


def error_of(raw, path="recipes/x.yaml") -> str:
    with pytest.raises(EttinError) as info:
        recipe_from_dict(raw, path)
    return str(info.value)


def test_minimal_recipe_fills_defaults():
    r = recipe_from_dict(minimal())
    assert r.seed == 21 and r.optimizer.betas == (0.9, 0.98) and r.optimizer.eps == 1e-6
    assert r.phases[0].tag_prefix == "step"
    assert r.archs() == ("encoder", "decoder")


def test_unknown_schedule_names_file_field_and_choices():
    raw = minimal()
    raw["phases"].append(
        {
            "name": "extension",
            "tokens": 10,
            "seq_len": 64,
            "batch_size": 4,
            "lr": {"schedule": "cosine"},
            "data": {"mixture": {"wiki": 1}},
        }
    )
    msg = error_of(raw, "recipes/demo.yaml")
    assert msg.startswith("recipes/demo.yaml: field 'phases.1.lr.schedule': unknown schedule 'cosine'")
    assert "1-sqrt" in msg and "linear" in msg


def test_unknown_key_is_rejected_with_suggestion():
    msg = error_of(minimal(micro_batchsize=3))
    assert "field 'micro_batchsize': unknown key" in msg and "micro_batch_size" in msg


def test_wrong_type_is_rejected():
    assert "field 'seed': must be an integer, got str 'abc'" in error_of(minimal(seed="abc"))
    assert "field 'checkpoint.export_hf': must be true or false" in error_of(minimal(checkpoint={"export_hf": "yes"}))
    assert "field 'optimizer.betas': must be a list of 2 values" in error_of(minimal(optimizer={"betas": [0.9]}))


def test_out_of_range_values_are_rejected():
    raw = minimal()
    raw["phases"][0]["mask_rate"] = 1.5
    assert "field 'phases.0.mask_rate': 1.5 is above the maximum" in error_of(raw)
    assert "field 'optimizer.betas.1'" in error_of(minimal(optimizer={"betas": [0.9, 1.0]}))
    assert "field 'micro_batch_size'" in error_of(minimal(micro_batch_size=0))


def test_sequence_length_beyond_model_limit_is_rejected():
    raw = minimal(model={"size": "tiny", "max_position_embeddings": 32})
    msg = error_of(raw)
    assert "field 'phases.0.seq_len'" in msg and "beyond the model's limit of 32" in msg


def test_cross_field_checks():
    raw = minimal()
    raw["phases"][0]["lr"] = {"schedule": "1-sqrt"}
    assert "field 'phases.0.lr.end'" in error_of(raw)
    raw["phases"][0]["lr"] = {"warmup_tokens": 2000}
    assert "field 'phases.0.lr.warmup_tokens'" in error_of(raw)
    assert "field 'model.size': unknown size 'huge'" in error_of(minimal(model={"size": "huge"}))
    assert "field 'phases': no phases" in error_of({"model": {"size": "tiny"}})
    raw = minimal()
    raw["phases"].append(dict(raw["phases"][0]))
    assert "field 'phases.1.tag'" in error_of(raw)


def test_data_spec_is_checked_and_inherits_data_dir():
    r = recipe_from_dict(minimal())
    assert r.phases[0].data == {"dir": "data/here", "mixture": [{"source": "wiki", "weight": 1.0}]}
    raw = minimal()
    raw["phases"][0]["data"] = {"mixture": [{"source": "wiki", "weight": 1, "share": 2}]}
    assert "recipes/x.yaml: field 'phases.0.data.mixture[0]': unknown key(s) ['share']" in error_of(raw)
    raw = minimal(data_dir="")
    assert "field 'phases.0.data.dir': missing the prepared-data folder" in error_of(raw)


@pytest.mark.parametrize(
    "text,value",
    [
        (200000, 200000),
        ("1.7T", 1_700_000_000_000),
        ("250B", 250 * 10**9),
        ("8.5B", 8_500_000_000),
        ("1.7e12", 1_700_000_000_000),
        ("4_000", 4000),
        (3e9, 3_000_000_000),
        ("125k", 125_000),
    ],
)
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("bad", ["1.5", "lots", -3, True, 2.5])
def test_parse_count_rejects(bad):
    with pytest.raises(ValueError):
        parse_count(bad)


def test_format_count_round_trips():
    for n in (1_700_000_000_000, 8_500_000_000, 250_000, 77):
        assert parse_count(format_count(n)) == n


def test_override_parsing_reads_yaml_values():
    assert parse_override("phases.0.tokens=200000") == (["phases", "0", "tokens"], 200000)
    assert parse_override("precision=fp32") == (["precision"], "fp32")
    assert parse_override("optimizer.betas=[0.9, 0.95]") == (["optimizer", "betas"], [0.9, 0.95])
    with pytest.raises(EttinError, match="has no '='"):
        parse_override("seed")


def test_overrides_apply_and_are_validated():
    raw = apply_overrides(minimal(), ["phases.0.tokens=5000", "seed=7", "checkpoint.keep_last=2"])
    r = recipe_from_dict(raw)
    assert (r.phases[0].tokens, r.seed, r.checkpoint.keep_last) == (5000, 7, 2)
    with pytest.raises(EttinError, match="no item 3 in a list of 1"):
        apply_overrides(minimal(), ["phases.3.tokens=5"])
    raw = apply_overrides(minimal(), ["phases.0.lr.schedule=cosine"])
    assert "field 'phases.0.lr.schedule': unknown schedule 'cosine'" in error_of(raw)


def test_load_recipe_from_file_with_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    r = load_recipe(path, ["phases.0.tokens=1.5K"])
    assert r.phases[0].tokens == 1500
    path.write_text("model: [unclosed\n")
    with pytest.raises(EttinError, match="is not valid YAML at line"):
        load_recipe(path)
    with pytest.raises(EttinError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")


def test_effective_recipe_round_trips_through_yaml():
    r = recipe_from_dict(minimal())
    again = recipe_from_dict(yaml.safe_load(r.to_yaml()))
    assert again == r and diff_recipes(r, again) == []


def test_diff_names_changed_fields():
    a = recipe_from_dict(minimal())
    b = recipe_from_dict(apply_overrides(minimal(), ["phases.0.tokens=2000", "seed=3"]))
    lines = diff_recipes(a, b)
    assert "seed: 21 -> 3" in lines and "phases.0.tokens: 1000 -> 2000" in lines and len(lines) == 2


def test_shipped_recipes_are_package_data():
    names = set(shipped_recipes())
    assert {"demo", "ettin-17m", "ettin-1b", "cross-enc2dec-demo"} <= names
    assert RECIPES == Path(__file__).resolve().parents[2] / "src" / "ettin" / "recipes"


def test_recipe_by_name_or_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a folder with no recipes/ in it
    assert resolve_recipe("ettin-17m") == RECIPES / "ettin-17m.yaml"
    assert resolve_recipe("ettin-17m.yaml") == RECIPES / "ettin-17m.yaml"
    assert load_recipe("ettin-17m").name == "ettin-17m"
    # a file of the same name in the current folder wins over the shipped one
    (tmp_path / "ettin-17m.yaml").write_text(yaml.safe_dump(minimal(name="mine")))
    assert load_recipe("ettin-17m.yaml").name == "mine" and load_recipe("ettin-17m").name == "ettin-17m"
    with pytest.raises(EttinError, match="no such recipe file or shipped recipe.*ettin recipes"):
        load_recipe("ettin-99m")
    with pytest.raises(EttinError, match="moved into the package: give the name, e.g. `ettin train demo`"):
        load_recipe("recipes/demo.yaml")


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipes_validate(name):
    load_recipe(name)


def test_bad_batch_warmup_and_chunk_minimum_name_the_field():
    raw = minimal()
    raw["phases"][0].update(batch_size=4, batch_warmup_tokens=100, batch_warmup_min=8)
    assert (
        "field 'phases.0.batch_warmup_min': the warmup's first batch of 8 sequences exceeds the phase's batch of 4"
        in error_of(raw)
    )
    raw["phases"][0].pop("batch_warmup_min")
    assert "field 'phases.0.batch_warmup_min': a batch-size warmup needs the batch it starts from" in error_of(raw)
    raw = minimal()
    raw["phases"][0].update(seq_len=64, data={"dir": "d", "mixture": ["wiki"], "min_tokens": 100})
    assert "field 'phases.0.data.min_tokens': min_tokens 100 exceeds the 62 tokens a chunk holds at seq_len 64" in (
        error_of(raw)
    )
    raw["phases"][0]["data"] = {"dir": "d", "mixture": ["wiki"], "backfill": "sometimes"}
    assert "field 'phases.0.data.backfill': unknown back-fill mode 'sometimes'" in error_of(raw)
    assert "\n" not in error_of(raw)  # one line


def test_cross_recipe_refuses_a_model_of_another_size(tmp_path):
    from ettin.commands import init_model as write_fresh
    from ettin.train.cross import init_model

    folder, _ = write_fresh("tiny", "encoder", tmp_path / "tiny-encoder", vocab_size=1024)
    recipe = load_recipe("cross-enc2dec-17m", [f"init.path={folder}"])
    with pytest.raises(EttinError) as err:
        init_model(recipe, "decoder", str(folder), None)
    msg = str(err.value)
    assert "field 'model.size'" in msg and "the --init model is a tiny (hidden 64, 4 layers), not the 17m" in msg
    assert "\n" not in msg
    # the same weights start a recipe of their own size
    model, _ = init_model(load_recipe("cross-enc2dec-17m", ["model.size=tiny"]), "decoder", str(folder), None)
    assert model.config.arch == "decoder"


def test_cli_lists_and_shows_the_shipped_recipes():
    from support import run_in_process

    code, out, err = run_in_process(["recipes"])
    assert code == 0, err
    lines = {
        line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in shipped_recipes()
    }
    assert set(lines) == set(shipped_recipes())
    assert "size 1b" in lines["ettin-1b"] and "extension 83.333B, decay 16.667B" in lines["ettin-1b"]
    assert (
        "size 17m" in lines["ettin-17m"] and "2T tokens: pretrain 1.7T, extension 250B, decay 50B" in lines["ettin-17m"]
    )
    code, out, _ = run_in_process(["recipes", "show", "cross-enc2dec-150m"])
    assert code == 0 and out == (RECIPES / "cross-enc2dec-150m.yaml").read_text(encoding="utf-8")
    code, _, err = run_in_process(["recipes", "show", "ettin-2b"])
    assert code == 2 and err.startswith("error: field 'NAME': no shipped recipe named 'ettin-2b'")


def test_released_local_theta_is_one_setting_away():
    r = load_recipe("ettin-17m")
    assert r.phases[2].rope.for_arch("encoder") == r.phases[2].rope.for_arch("decoder") == (160_000.0, 160_000.0)
    released = load_recipe("ettin-17m", ["phases.1.rope.local_theta=10000", "phases.2.rope.decoder_local_theta=10000"])
    assert released.phases[1].rope.for_arch("encoder") == (160_000.0, 10_000.0)
    assert released.phases[2].rope.for_arch("encoder") == (160_000.0, 160_000.0)
    assert released.phases[2].rope.for_arch("decoder") == (160_000.0, 10_000.0)
