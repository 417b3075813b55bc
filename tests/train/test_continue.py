"""Continued pretraining from a released checkpoint tag: `--init REPO --revision TAG` with the shipped
the shipped continue-decay recipe, on a local folder of revisions (one model folder per tag) and on the hub
path with `huggingface_hub.snapshot_download` replaced by one that serves those folders."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from ettin import hf
from ettin.config import config_for_size
from ettin.model import EttinModel
from ettin.recipe import load_recipe, shipped_recipes
from ettin.train.metrics import read_metrics
from ettin.train.schedule import lr_at
from support import assert_one_line_error, run_in_process

RECIPE = shipped_recipes()["continue-decay"]
TAGS = ["step0", "step300", "ext0", "ext40"]
ENC_ID = "jhu-clsp/ettin-encoder-150m"


@pytest.fixture(scope="module")
def released(tmp_path_factory, small_tokenizer_dir) -> dict[str, Path]:
    """arch -> a folder of revisions: a tiny model per released-style tag (each with its own seed)."""
    root = tmp_path_factory.mktemp("released")
    for arch in ("encoder", "decoder"):
        for seed, tag in enumerate(TAGS):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = EttinModel(config_for_size("tiny", arch, 1024))
            hf.save_pretrained(model, root / arch / tag, tokenizer=small_tokenizer_dir)
    return {arch: root / arch for arch in ("encoder", "decoder")}


def _tiny(train_data, tokenizer, *extra) -> list[str]:
    """The shipped recipe scaled to the tiny corpus: only sizes, the data and the precision change."""
    sets = {
        "tokenizer": tokenizer,
        "data_dir": train_data,
        "precision": "fp32",
        "micro_batch_size": 3,
        "phases.0.tokens": 150,
        "phases.0.seq_len": 48,
        "phases.0.batch_size": 3,
        "phases.0.lr.warmup_tokens": 48,
        "phases.0.data.mixture.0.source": "wiki",
        "checkpoint.every_tokens": 100_000,
        **dict(e.split("=", 1) for e in extra),
    }
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out + ["--no-progress", "--threads", "1"]


def _final_weights(run: Path, arch: str = "encoder") -> dict:
    tags = sorted((run / arch / "checkpoints").iterdir())
    return load_file(str(tags[-1] / "model.safetensors"))


def test_the_recipe_has_the_original_decay_settings():
    r = load_recipe(RECIPE)
    (p,) = r.phases
    assert (r.arch, r.init.same_arch, r.seed) == ("encoder", True, 21)
    assert (p.name, p.tokens, p.seq_len, p.batch_size, p.batch_warmup_tokens) == ("decay", 50 * 10**9, 7999, 4608, 0)
    assert (p.mask_rate, p.rope.global_theta, p.rope.local_theta) == (0.15, 160_000, 160_000)
    assert (r.optimizer.lr, r.optimizer.weight_decay, r.optimizer.betas) == (4e-4, 1e-5, (0.9, 0.98))
    # 150m: 0.5 x peak (8e-4) after the fresh optimizer's warmup, 1 - sqrt down to 0.02 x peak
    assert p.lr.schedule == "1-sqrt" and p.lr.warmup_tokens == 10**9
    assert lr_at(p, r.optimizer.lr, 10**9) == pytest.approx(4e-4)
    assert lr_at(p, r.optimizer.lr, p.tokens) == pytest.approx(0.02 * 8e-4)
    assert lr_at(p, r.optimizer.lr, 10**9 // 2) == pytest.approx(2e-4)


def test_continues_from_a_tag_of_a_local_folder_of_revisions(released, train_data, small_tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_in_process(
        ["train", RECIPE, "--out", out, "--init", released["encoder"], "--revision", "ext40"]
        + _tiny(train_data, small_tokenizer_dir)
    )
    assert code == 0, err + stdout
    said = " ".join((stdout + err).split())  # the console wraps long lines
    assert f"starting from {released['encoder']} at ext40" in said and "a fresh optimizer" in said
    rows = [r for r in read_metrics(out / "encoder") if r["kind"] == "train"]
    saved = load_recipe(out / "recipe.yaml")
    assert saved.init.path == str(released["encoder"]) and saved.init.revision == "ext40"
    # the decay's own schedule from this run's first token: warmup, then 1 - sqrt
    assert rows and all(r["lr"] == pytest.approx(lr_at(saved.phases[0], 4e-4, r["phase_tokens"])) for r in rows)
    assert rows[0]["lr"] < 4e-4 and all(0 < r["loss"] < 20 for r in rows)
    assert sorted(p.name for p in (out / "encoder" / "hf").iterdir())[-1].startswith("decay")


def _refs(tags: list[str]):
    """What `HfApi.list_repo_refs` returns: huggingface_hub's own GitRefs."""
    from huggingface_hub.hf_api import GitRefInfo, GitRefs

    def ref(kind, name):
        return GitRefInfo(name=name, ref=f"refs/{kind}/{name}", target_commit="0" * 40)

    return GitRefs(branches=[ref("heads", "main")], converts=[], tags=[ref("tags", t) for t in tags])


@pytest.fixture
def hub(released, monkeypatch, tmp_path):
    import huggingface_hub

    state = SimpleNamespace(downloads=[])

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        from huggingface_hub.errors import HfHubHTTPError
        from huggingface_hub.utils import hf_raise_for_status

        folder = released["encoder"] / (revision or "main")
        if repo_id != ENC_ID or not folder.is_dir():
            http = sys.modules[HfHubHTTPError.__mro__[1].__module__]
            request = http.Request("GET", f"https://huggingface.co/api/models/{repo_id}/revision/{revision}")
            hf_raise_for_status(http.Response(404, headers={"X-Error-Code": "RevisionNotFound"}, request=request))
        state.downloads.append((repo_id, revision))
        return str(folder)

    class HfApi:
        def list_repo_refs(self, repo_id, **kw):
            return _refs(TAGS)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", HfApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)  # no local jhu-clsp/ folder: the id is a hub id
    return state


def test_continues_from_a_hub_tag_with_the_tags_weights(hub, released, train_data, small_tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_in_process(
        ["train", RECIPE, "--out", out, "--init", ENC_ID, "--revision", "ext0"]
        + _tiny(train_data, small_tokenizer_dir, "phases.0.lr.start=0.0", "phases.0.lr.end=0.0")
    )
    assert code == 0, err + stdout
    assert hub.downloads == [(ENC_ID, "ext0")]
    # lr 0 (and so no decoupled weight decay): the weights trained are exactly the tag's
    source = load_file(str(released["encoder"] / "ext0" / "model.safetensors"))
    weights = _final_weights(out)
    assert torch.equal(weights["model.layers.0.attn.Wqkv.weight"], source["model.layers.0.attn.Wqkv.weight"])
    assert not torch.equal(
        weights["model.layers.0.attn.Wqkv.weight"],
        load_file(str(released["encoder"] / "ext40" / "model.safetensors"))["model.layers.0.attn.Wqkv.weight"],
    )


def test_a_tag_the_hub_repository_lacks_is_one_line_and_writes_nothing(hub, train_data, small_tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_in_process(
        ["train", RECIPE, "--out", out, "--init", ENC_ID, "--revision", "ext1000"]
        + _tiny(train_data, small_tokenizer_dir)
    )
    assert_one_line_error(code, err, f"'{ENC_ID}' has no revision 'ext1000'", "available: step0, step300, ext0, ext40")
    assert not out.exists() and hub.downloads == []


def test_a_tag_a_local_folder_lacks_is_one_line_and_writes_nothing(released, train_data, small_tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    base = ["train", RECIPE, "--out", out, "--init", released["encoder"]]
    code, _, err = run_in_process([*base, "--revision", "decay9", *_tiny(train_data, small_tokenizer_dir)])
    assert_one_line_error(code, err, "no revision 'decay9'", "available: step0, step300, ext0, ext40 (4 tags)")
    code, _, err = run_in_process([*base, *_tiny(train_data, small_tokenizer_dir)])
    assert_one_line_error(code, err, "holds several revisions and none is 'main'", "ext40")
    assert not out.exists()


def test_weights_of_the_other_arch_are_refused(released, train_data, small_tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_in_process(
        ["train", RECIPE, "--out", out, "--init", released["decoder"], "--revision", "ext40"]
        + _tiny(train_data, small_tokenizer_dir)
    )
    assert_one_line_error(code, err, "holds a decoder, and the recipe continues an encoder", "--arch decoder")
    assert not out.exists()
    code, _, err = run_in_process(
        ["train", RECIPE, "--out", out, "--arch", "pair", *_tiny(train_data, small_tokenizer_dir)]
    )
    assert_one_line_error(code, err, "init.same_arch", "a pair cannot continue from one model's weights")
