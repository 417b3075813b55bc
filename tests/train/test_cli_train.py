"""`ettin train`, `ettin checkpoints`, `ettin plot` in process."""

from __future__ import annotations

import json
import sys

import pytest

from ettin.cli import main
from ettin.train import checkpoint as ck


def run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["ettin", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_checkpoints_lists_tags_with_tokens(pair_run, monkeypatch, capsys):
    _, result = pair_run
    code, out, _ = run(monkeypatch, capsys, "checkpoints", result.out, "--json")
    assert code == 0
    listing = json.loads(out)
    assert set(listing) == {str(result.out / "encoder"), str(result.out / "decoder")}
    tags = listing[str(result.out / "encoder")]
    assert [t["tag"] for t in tags] == [t.tag for t in ck.list_tags(result.out / "encoder")]
    assert tags[-1]["tokens"] == result.tokens
    code, out, _ = run(monkeypatch, capsys, "checkpoints", result.out / "decoder")
    assert code == 0 and tags[0]["tag"] in out and f"{tags[0]['tokens']:,}" in out


def test_plot_writes_a_png(pair_run, monkeypatch, capsys, tmp_path):
    _, result = pair_run
    out_png = tmp_path / "loss.png"
    code, out, _ = run(monkeypatch, capsys, "plot", result.out, "--out", out_png)
    assert code == 0 and str(out_png) in out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_override_exits_2_with_the_field_named(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tmp_path)
    code, _, err = run(
        monkeypatch, capsys, "train", recipe, "--out", tmp_path / "run", "--set", "phases.1.lr.schedule=cosine"
    )
    assert code == 2
    assert err.startswith(f"error: {recipe}: field 'phases.1.lr.schedule': unknown schedule 'cosine'")
    assert not (tmp_path / "run").exists()


def test_train_cli_with_overrides_saves_the_effective_recipe(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    code, stdout, _ = run(
        monkeypatch,
        capsys,
        "train",
        recipe,
        "--out",
        out,
        "--arch",
        "decoder",
        "--no-progress",
        "--set",
        "phases.0.tokens=150",
        "--set",
        "phases.1.tokens=60",
        "--set",
        "phases.2.tokens=60",
    )
    assert code == 0, stdout
    assert "finished at step" in stdout and "tokens/s" in stdout
    saved = (out / "recipe.yaml").read_text()
    assert "arch: decoder" in saved and "tokens: 150" in saved
    assert not (out / "encoder").exists() and ck.list_tags(out / "decoder")
    code, _, err = run(monkeypatch, capsys, "train", "--resume", "--out", out, "--set", "seed=9")
    assert code == 2 and "seed: 5 -> 9" in err
