"""No file a user hands ettin can run code: pickles are refused unopened or by a weights-only loader,
YAML is read safely, custom code shipped with a tokenizer is never imported, and the source holds no
unsafe loader.

Every payload here, when unpickled or imported for real, creates a marker file; each test first proves
that on a control (so the test can fail), then checks that ettin's path leaves no marker.
"""

from __future__ import annotations

import ast
import builtins
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import ettin
from ettin import commands
from ettin.errors import EttinError
from ettin.train import checkpoint as ck
from ettin.train.state import RankRng, TrainState

SRC = Path(ettin.__file__).resolve().parent


class Payload:
    """Unpickling this creates `marker` (an `open(marker, "w")` call): the stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _control(load, marker: Path) -> None:
    """The payload really runs when loaded unsafely; then the marker is removed again."""
    result = load()
    if hasattr(result, "close"):
        result.close()
    assert marker.exists(), "the control payload did not run; the test would prove nothing"
    marker.unlink()


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    path, _ = commands.init_model("tiny", "encoder", tmp_path / "model", vocab_size=256, seed=0)
    return path


def test_pickle_weights_are_refused_without_being_opened(model_dir, tmp_path):
    marker = tmp_path / "PWNED"
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    _control(lambda: pickle.loads((model_dir / "pytorch_model.bin").read_bytes()), marker)

    with pytest.raises(EttinError, match=r"pickle weights \(pytorch_model.bin\).*does not open them"):
        ettin.load(model_dir)
    assert not marker.exists()


def test_checkpoint_optimizer_pickle_is_refused_by_the_weights_only_loader(tmp_path):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run" / "encoder"
    ck.write_checkpoint(
        run,
        "step1",
        model_state={"w": torch.ones(2)},
        optimizer_state={"state": {}, "param_groups": []},
        state=TrainState(
            arch="encoder",
            objective="mlm",
            tag="step1",
            step=1,
            tokens=8,
            phase=0,
            phase_name="pretrain",
            phase_step=1,
            phase_tokens=8,
            loss=1.0,
            data={},
            order_chain="",
            world_size=1,
            strategy="none",
            tokenizer_fingerprint="f" * 16,
            recipe_sha256="0" * 64,
            time=0.0,
            skips=0,
            rng={0: RankRng.capture()},
        ),
    )
    bad = run / "checkpoints" / "step1" / "optimizer.pt"
    torch.save({"state": Payload(marker), "param_groups": []}, bad)
    _control(lambda: torch.load(bad, weights_only=False)["state"], marker)

    with pytest.raises(EttinError, match=r"optimizer.pt: holds Python objects .*refused without running them"):
        ck.load_checkpoint(bad.parent)
    assert not marker.exists()


def test_prepared_shard_of_python_objects_is_refused(tmp_path, small_tokenizer_dir):
    from ettin.data.prepare import prepare
    from ettin.data.shards import MANIFEST, PreparedSource

    marker = tmp_path / "PWNED"
    (tmp_path / "doc.txt").write_text("A small document about nothing in particular. " * 40, encoding="utf-8")
    (result,) = prepare([f"doc=text:{tmp_path / 'doc.txt'}"], small_tokenizer_dir, tmp_path / "data")
    manifest = json.loads((result.folder / MANIFEST).read_text())
    entry = manifest["shards"][0]["tokens"]
    shard = result.folder / entry["file"]
    np.save(shard, np.array([Payload(marker), 1], dtype=object), allow_pickle=True)
    entry["bytes"] = shard.stat().st_size  # so the size check passes and the loader itself must refuse
    (result.folder / MANIFEST).write_text(json.dumps(manifest))
    _control(lambda: np.load(shard, allow_pickle=True), marker)

    with pytest.raises(EttinError, match=r"tokens-00000.npy: is not a plain numeric array"):
        PreparedSource.open(result.folder)
    assert not marker.exists()


def test_recipe_with_python_tags_is_refused(tmp_path):
    from ettin.recipe import load_recipe

    marker = tmp_path / "PWNED"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: !!python/object/apply:builtins.open ['{marker}', 'w']\n", encoding="utf-8")
    _control(lambda: yaml.unsafe_load(recipe.read_text()), marker)

    with pytest.raises(EttinError, match=r"evil.yaml: is not valid YAML"):
        load_recipe(recipe)
    assert not marker.exists()


def test_tokenizer_with_custom_code_is_refused_without_a_prompt(tmp_path, small_tokenizer_dir, monkeypatch):
    import shutil

    from ettin.tokenizer import load_tokenizer

    marker = tmp_path / "PWNED"
    tok = tmp_path / "tok"
    shutil.copytree(small_tokenizer_dir, tok)
    (tok / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n",
        encoding="utf-8",
    )
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config |= {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": [None, "evil.EvilTokenizer"]}}
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    _control(lambda: exec(compile((tok / "evil.py").read_text(), "evil.py", "exec"), {}), marker)

    def no_prompt(*_):
        raise AssertionError("asked whether to run custom code")

    monkeypatch.setattr(builtins, "input", no_prompt)
    with pytest.raises(EttinError, match=r"tok: cannot be loaded as a tokenizer: .*custom code"):
        load_tokenizer(tok)
    assert not marker.exists()


# ------------------------------------------------------------------------------------- source scan

UNSAFE_MODULE_LOADERS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cPickle", "load"),
    ("cPickle", "loads"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("marshal", "load"),
    ("marshal", "loads"),
    ("shelve", "open"),
    ("yaml", "load"),
    ("yaml", "load_all"),
    ("yaml", "unsafe_load"),
    ("yaml", "unsafe_load_all"),
    ("yaml", "full_load"),
    ("yaml", "full_load_all"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
}


def _is_const(node: ast.AST, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, why) for every call that could run code from a file."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
            found.append((node.lineno, f"{func.id}()"))
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if (owner, func.attr) in UNSAFE_MODULE_LOADERS:
                found.append((node.lineno, f"{owner}.{func.attr}()"))
            if owner == "torch" and func.attr == "load" and not _is_const(kw.get("weights_only"), True):
                found.append((node.lineno, "torch.load without weights_only=True"))
            if func.attr == "from_pretrained" and not _is_const(kw.get("trust_remote_code"), False):
                found.append((node.lineno, "from_pretrained without trust_remote_code=False"))
        if "trust_remote_code" in kw and not _is_const(kw["trust_remote_code"], False):
            found.append((node.lineno, "trust_remote_code not False"))
        if "allow_pickle" in kw and not _is_const(kw["allow_pickle"], False):
            found.append((node.lineno, "allow_pickle not False"))
    return found


def test_the_scan_finds_each_unsafe_pattern():
    bad = (
        "pickle.load(f)\nyaml.load(s)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "AutoTokenizer.from_pretrained(p)\nnp.load(p, allow_pickle=True)\nf(trust_remote_code=True)\neval(s)\n"
    )
    assert [line for line, _ in unsafe_calls(ast.parse(bad))] == [1, 2, 3, 4, 5, 6, 7, 8]
    good = (
        "yaml.safe_load(s)\ntorch.load(p, weights_only=True)\nA.from_pretrained(p, trust_remote_code=False)\nm.eval()\n"
    )
    assert unsafe_calls(ast.parse(good)) == []


def test_source_has_no_unsafe_loader():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    problems = [
        f"{f.relative_to(SRC.parent)}:{line}: {why}"
        for f in files
        for line, why in unsafe_calls(ast.parse(f.read_text(encoding="utf-8"), str(f)))
    ]
    assert problems == []
