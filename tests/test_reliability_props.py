"""Property-based bad input (hypothesis): arbitrary values of the wrong type or range, in the recipe
schema, `--set` overrides, source specs and the state-file readers, give one clear error and change
nothing. The library properties check that only an EttinError ever comes out (never a KeyError,
TypeError, OverflowError, ... from deep inside); the CLI properties check the whole contract: exit 2,
exactly one `error:` line, no traceback, every file as it was.

The named cases stay in test_bad_input.py; this file looks for the cases nobody thought of. Example
counts are kept small (the file runs in well under 30 s); raise them locally with
HYPOTHESIS_PROFILE=thorough.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ettin.errors import EttinError
from support import run_in_process

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every run (a fixed seed); the thorough profile explores
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
FEW = settings(settings.get_profile(PROFILE), max_examples=settings.get_profile(PROFILE).max_examples)
CLI = settings(settings.get_profile(PROFILE), max_examples=max(8, settings.get_profile(PROFILE).max_examples // 3))

# ------------------------------------------------------------------------------------------ values

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**70)
    | st.integers(max_value=-1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([math.inf, -math.inf, math.nan, 1e400, 0, -0.0, 0.5, "1e400", ".inf", "-1", "1.7T", ""])
    | st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))),  # JSON has no inf/nan
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
YAML_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
)

# Every leaf of the recipe schema, as a path into the raw mapping (phases.0 is the tiny recipe's phase).
RECIPE_PATHS = [
    "seed",
    "arch",
    "precision",
    "micro_batch_size",
    "tokenizer",
    "model.size",
    "model.hidden_size",
    "model.num_attention_heads",
    "model.local_attention",
    "model.max_position_embeddings",
    "model.attention_dropout",
    "optimizer.lr",
    "optimizer.betas",
    "optimizer.eps",
    "guards.max_grad_norm",
    "guards.max_skips",
    "checkpoint.every_tokens",
    "checkpoint.keep_last",
    "eval.every_tokens",
    "eval.sequences",
    "distributed.fsdp_min_params",
    "phases",
    "phases.0",
    "phases.0.tokens",
    "phases.0.seq_len",
    "phases.0.batch_size",
    "phases.0.mask_rate",
    "phases.0.batch_warmup_tokens",
    "phases.0.lr.warmup_tokens",
    "phases.0.lr.end",
    "phases.0.rope.global_theta",
    "phases.0.data",
    "phases.0.data.mixture",
    "phases.0.data.mixture.wiki",
    "phases.0.data.min_tokens",
    "phases.0.data.backfill",
]
# The fields whose value must be a positive / non-negative integer or count: for the CLI property, a
# value drawn from these strategies is always wrong there.
WRONG_FOR_INT = (
    st.none()
    | st.booleans()
    | st.integers(max_value=-1)
    | st.integers(min_value=2**64, max_value=2**80)
    | st.sampled_from([math.inf, -math.inf, math.nan, 1e400, 0.5, "many", "", "1e400", [], {}])
    | st.text(alphabet="xyz!?", min_size=1, max_size=5)
)
INT_PATHS = ["micro_batch_size", "phases.0.tokens", "phases.0.batch_size", "checkpoint.every_tokens", "eval.sequences"]


def base_recipe(tokenizer: Path, data: Path) -> dict:
    return {
        "model": {"size": "tiny", "max_position_embeddings": 64},
        "tokenizer": str(tokenizer),
        "data_dir": str(data),
        "precision": "fp32",
        "micro_batch_size": 4,
        "checkpoint": {"every_tokens": 128},
        "phases": [{"tokens": 260, "seq_len": 32, "batch_size": 4, "data": {"mixture": {"wiki": 1}}}],
    }


def set_path(raw: dict, path: str, value) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def assert_refused(result: tuple[int, str, str]) -> None:
    code, out, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err + out, err
    assert code == 2, f"exit {code}: {err}{out}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_tokenizer_dir) -> Path:
    """A folder with a tokenizer and a prepared source (the files the CLI properties must leave alone)."""
    import itertools

    from ettin.data.prepare import prepare
    from ettin.data.sources import builtin_texts

    root = tmp_path_factory.mktemp("props")
    with open(root / "wiki.jsonl", "w", encoding="utf-8") as f:
        for text in itertools.islice(builtin_texts("wiki"), 8):
            f.write(json.dumps({"text": text}) + "\n")
    prepare([f"wiki=jsonl:{root / 'wiki.jsonl'}"], small_tokenizer_dir, root / "data", shard_tokens=1000)
    return root


# ----------------------------------------------------------------------------------- recipe schema


@FEW
@given(path=st.sampled_from(RECIPE_PATHS), value=YAML_VALUES)
def test_recipe_fields_take_any_value_or_refuse_it(work, small_tokenizer_dir, path, value):
    from ettin.recipe import recipe_from_dict

    raw = set_path(base_recipe(small_tokenizer_dir, work / "data"), path, value)
    try:
        recipe_from_dict(raw, "r.yaml")
    except EttinError as exc:
        assert "\n" not in str(exc)


@CLI
@given(path=st.sampled_from(INT_PATHS), value=WRONG_FOR_INT)
def test_train_refuses_a_wrong_number_and_writes_nothing(work, small_tokenizer_dir, path, value, tmp_path_factory):
    case = tmp_path_factory.mktemp("case")
    raw = set_path(base_recipe(small_tokenizer_dir, work / "data"), path, value)
    (case / "r.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    before, before_work = snapshot(case), snapshot(work)
    assert_refused(run_in_process(["train", case / "r.yaml", "--out", case / "run"]))
    assert snapshot(case) == before and snapshot(work) == before_work


# ------------------------------------------------------------------------------------- --set


@FEW
@given(key=st.sampled_from(RECIPE_PATHS) | st.text(max_size=10), value=st.text(max_size=24))
def test_set_overrides_take_any_text_or_refuse_it(work, small_tokenizer_dir, key, value, tmp_path_factory):
    from ettin.recipe import load_recipe

    case = tmp_path_factory.mktemp("set")
    (case / "r.yaml").write_text(yaml.safe_dump(base_recipe(small_tokenizer_dir, work / "data")), encoding="utf-8")
    try:
        load_recipe(case / "r.yaml", [f"{key}={value}"])
    except EttinError as exc:
        assert "\n" not in str(exc)


@CLI
@given(path=st.sampled_from(INT_PATHS), value=WRONG_FOR_INT)
def test_train_refuses_a_wrong_set_and_writes_nothing(work, small_tokenizer_dir, path, value, tmp_path_factory):
    case = tmp_path_factory.mktemp("case")
    (case / "r.yaml").write_text(yaml.safe_dump(base_recipe(small_tokenizer_dir, work / "data")), encoding="utf-8")
    before = snapshot(case)
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        text = {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    assert_refused(run_in_process(["train", case / "r.yaml", "--out", case / "run", "--set", f"{path}={text}"]))
    assert snapshot(case) == before


# ------------------------------------------------------------------------------------ source specs


def _is_buildable(text: str, cwd: Path) -> bool:
    """A spec that names a built-in corpus or an existing path would prepare it: not a bad input."""
    from ettin.data.sources import parse_source

    try:
        spec = parse_source(text)
    except EttinError:
        return False
    return spec.kind == "builtin" or (cwd / spec.path).exists() or "://" in spec.path


@FEW
@given(text=st.text(max_size=30) | st.from_regex(r"\A[a-z.=]{0,6}=?(text|jsonl|mds|hf|parquet|replay|x):[^\n]{0,12}\Z"))
def test_source_specs_parse_or_refuse(text):
    from ettin.data.sources import parse_source

    try:
        spec = parse_source(text)
    except EttinError as exc:
        assert "\n" not in str(exc)
        return
    assert spec.name not in (".", "..") and not spec.name.startswith(".")


@CLI
@given(text=st.from_regex(r"\A[A-Za-z0-9_.=]{0,6}=?(text|jsonl|mds|hf|parquet|replay|x|builtin):[^\x00\n]{0,12}\Z"))
def test_prepare_refuses_a_bad_source_and_writes_nothing(work, small_tokenizer_dir, text, tmp_path_factory):
    case = tmp_path_factory.mktemp("src")
    if _is_buildable(text, case):
        return
    (case / "d").mkdir()
    (case / "d" / "mine.txt").write_text("the user's own file", encoding="utf-8")
    before, cwd = snapshot(case), os.getcwd()
    os.chdir(case)
    try:
        result = run_in_process(["data", "prepare", "--source", text, "--tokenizer", small_tokenizer_dir, "--out", "d"])
    finally:
        os.chdir(cwd)
    assert_refused(result)
    assert snapshot(case) == before


# -------------------------------------------------------------------------------- state-file readers


def _train_state_dict() -> dict:
    return {
        "version": 1,
        "arch": "encoder",
        "objective": "mlm",
        "tag": "step3",
        "step": 3,
        "tokens": 374,
        "phase": 0,
        "phase_name": "pretrain",
        "phase_step": 3,
        "phase_tokens": 374,
        "loss": 6.5,
        "data": {"stream": {}, "tokens_seen": 374},
        "order_chain": "ab" * 16,
        "skips": 0,
        "world_size": 1,
        "strategy": "none",
        "tokenizer_fingerprint": "f" * 64,
        "recipe_sha256": "e" * 64,
        "rng": {"rank0": {"numpy": ["MT19937", 0, 0, 0.0], "python": [3, [0] * 625, None]}},
        "time": 1.0,
    }


@FEW
@given(key=st.sampled_from([*_train_state_dict(), "rng.rank0", "rng.rank0.numpy", "nokey"]), value=JSON)
def test_trainer_state_reader_refuses_any_wrong_field(key, value):
    from ettin.train.state import TrainState

    raw = _train_state_dict()
    if key.startswith("rng."):
        raw = set_path(raw, key, value)
    else:
        raw[key] = value
    try:
        TrainState.from_dict(raw, path="trainer_state.json")
    except EttinError as exc:
        assert "trainer_state.json" in str(exc) and "\n" not in str(exc)


@FEW
@given(document=JSON)
def test_trainer_state_reader_refuses_any_document(document):
    from ettin.train.state import TrainState

    with pytest.raises(EttinError):
        TrainState.from_dict(document, path="trainer_state.json")


MANIFEST_PATHS = [
    "name",
    "documents",
    "tokens",
    "dtype",
    "tokenizer",
    "tokenizer.vocab_size",
    "tokenizer.fingerprint",
    "tokenizer.special_ids",
    "tokenizer.special_ids.cls_token_id",
    "shards",
    "shards.0",
    "shards.0.documents",
    "shards.0.tokens",
    "shards.0.tokens.file",
    "shards.0.tokens.bytes",
    "shards.0.docs.file",
]


@CLI
@given(path=st.sampled_from(MANIFEST_PATHS), value=JSON)
def test_a_hand_edited_manifest_is_read_with_checks(work, path, value, tmp_path_factory):
    """`data inspect` and `PreparedSource.open` on a manifest with one field replaced: it opens (the
    value happened to be valid) or it is one error line; nothing is written either way."""
    import shutil

    from ettin.data.shards import PreparedSource

    case = tmp_path_factory.mktemp("manifest")
    shutil.copytree(work / "data", case / "data")
    manifest = json.loads((case / "data" / "wiki" / "manifest.json").read_text())
    (case / "data" / "wiki" / "manifest.json").write_text(json.dumps(set_path(manifest, path, value)))
    before = snapshot(case)
    try:
        PreparedSource.open(case / "data" / "wiki")
        opened = True
    except EttinError:
        opened = False
    code, out, err = run_in_process(["data", "inspect", case / "data" / "wiki"])
    assert "Traceback" not in err + out, err
    if not opened:
        assert_refused((code, out, err))
    assert snapshot(case) == before


@FEW
@given(
    key=st.sampled_from(
        [
            "hidden_size",
            "num_attention_heads",
            "vocab_size",
            "global_rope_theta",
            "pad_token_id",
            "norm_eps",
            "layer_types",
            "local_attention",
            "num_hidden_layers",
            "model_type",
        ]
    ),
    value=JSON,
)
def test_a_hand_edited_model_config_is_read_with_checks(key, value):
    from ettin.hf.adapter import config_from_hf

    d = {
        "model_type": "modernbert",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 1,
        "vocab_size": 1024,
        "global_rope_theta": 160000.0,
        "local_rope_theta": 160000.0,
    }
    d[key] = value
    try:
        config_from_hf(d, path="config.json")
    except EttinError as exc:
        assert "\n" not in str(exc)


# ------------------------------------------------------------------------------- optimizer state

TENSORS = st.builds(
    lambda shape, fill: __import__("torch").full(shape, fill),
    st.lists(st.integers(min_value=0, max_value=4), max_size=2).map(tuple),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)
OPTIMIZER_VALUES = SCALARS | TENSORS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=4), SCALARS)


@pytest.fixture(scope="module")
def stepped_optimizer():
    """(model state, optimizer state as the trainer saves it) of a tiny encoder after two real steps."""
    from ettin.train.distributed import full_model_state, full_optimizer_state

    model, optimizer = _tiny_with_optimizer()
    for _ in range(2):
        _one_step(model, optimizer)
    return full_model_state(model, "none"), full_optimizer_state(model, optimizer, "none")


def _tiny_with_optimizer():
    import torch

    from ettin.config import config_for_size
    from ettin.model import EttinModel
    from ettin.recipe import OptimizerSection
    from ettin.train.optim import build_optimizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = EttinModel(config_for_size("tiny", "encoder", 1024))
    return model, build_optimizer(model, OptimizerSection())


def _one_step(model, optimizer) -> None:
    """One training step as the trainer takes it (the learning rate set from the schedule first)."""
    import torch

    from ettin.train.optim import set_lr

    ids = torch.arange(16).reshape(2, 8)
    model(ids).logits.float().square().mean().backward()
    set_lr(optimizer, 1e-3)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _optimizer_paths(saved: dict) -> list[str]:
    names = list(saved["state"])
    paths = ["state", "param_groups", "param_groups.0", "param_groups.1", "param_groups.0.params"]
    paths += [f"param_groups.{i}.{k}" for i, g in enumerate(saved["param_groups"]) for k in g if k != "params"]
    for n in (names[0], names[1], names[-1]):
        paths += [f"state.{n}", *(f"state.{n}.{k}" for k in saved["state"][n])]
    return paths


def _edit_optimizer_state(saved: dict, path: str, value, drop: bool) -> dict:
    """A copy of the state with the entry at `path` replaced by `value`, or removed when `drop`.
    (Parameter names hold dots, so a state path is split at the parameter name it starts with.)"""
    out = copy.deepcopy(saved)
    head, _, rest = path.partition(".")
    if not rest:
        holder, key = out, head
    elif head == "param_groups":
        i, _, sub = rest.partition(".")
        holder, key = (out["param_groups"][int(i)], sub) if sub else (out["param_groups"], int(i))
    else:
        name = next(n for n in out["state"] if rest == n or rest.startswith(n + "."))
        sub = rest[len(name) + 1 :]
        holder, key = (out["state"][name], sub) if sub else (out["state"], name)
    if drop:
        holder.pop(key)
    else:
        holder[key] = value
    return out


@FEW
@given(data=st.data(), value=OPTIMIZER_VALUES, drop=st.booleans())
def test_an_edited_optimizer_state_is_refused_or_resumes(stepped_optimizer, data, value, drop):
    """One entry of a saved optimizer state replaced or removed: `check_optimizer_state` refuses it in
    one line, or it loads into the resumed optimizer and the next step runs."""
    from ettin.train.checkpoint import check_optimizer_state
    from ettin.train.distributed import load_full_state

    model_state, saved = stepped_optimizer
    path = data.draw(st.sampled_from(_optimizer_paths(saved)), label="path")
    edited = _edit_optimizer_state(saved, path, value, drop)
    model, optimizer = _tiny_with_optimizer()
    try:
        check_optimizer_state("optimizer.pt", edited, model, optimizer, stepped=True)
    except EttinError as exc:
        assert str(exc).startswith("optimizer.pt: field '") and len(str(exc).splitlines()) == 1, str(exc)
        return
    load_full_state(model, optimizer, model_state, edited, "none")
    _one_step(model, optimizer)


def test_the_saved_optimizer_state_itself_passes_and_resumes(stepped_optimizer):
    """The control: the unedited state is accepted (the property above can fail only through an edit)."""
    from ettin.train.checkpoint import check_optimizer_state
    from ettin.train.distributed import load_full_state

    model_state, saved = stepped_optimizer
    model, optimizer = _tiny_with_optimizer()
    check_optimizer_state("optimizer.pt", saved, model, optimizer, stepped=True)
    load_full_state(model, optimizer, model_state, saved, "none")
    _one_step(model, optimizer)
