"""The model commands end to end, in process: sizes, init, export, convert."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import ettin
from ettin.cli import main
from ettin.config import SIZES, config_for_size, count_parameters, special_ids_for


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["ettin", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sizes_table_and_json(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "sizes")
    assert code == 0
    for name in SIZES:
        assert name in out
    assert "16,797,440" in out and "1,031,314,112" in out
    code, out, _ = run(monkeypatch, capsys, "sizes", "--json", "--vocab-size", "1024")
    data = json.loads(out)
    assert data["vocab_size"] == 1024
    rows = {r["size"]: r for r in data["sizes"]}
    assert set(rows) == set(SIZES)
    cfg = config_for_size("demo", vocab_size=1024)
    assert rows["demo"]["backbone_params"] == count_parameters(cfg)
    assert rows["demo"]["with_head_params"] == count_parameters(cfg, with_head=True)
    assert rows["1b"]["layers"] == 28 and rows["1b"]["heads"] == 28 and rows["1b"]["ettin"] is True


def test_init_is_seeded_and_records_special_ids(monkeypatch, capsys, tmp_path):
    code, out, _ = run(
        monkeypatch,
        capsys,
        "init",
        "--size",
        "tiny",
        "--arch",
        "decoder",
        "--vocab-size",
        "512",
        "--seed",
        "3",
        "--out",
        tmp_path / "a",
    )
    assert code == 0
    assert str(tmp_path / "a") in out and "model.safetensors" in out and "config.json" in out
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["model_type"] == "modernbert-decoder" and cfg["vocab_size"] == 512
    assert {k: cfg[k] for k in special_ids_for(512)} == special_ids_for(512)
    run(
        monkeypatch,
        capsys,
        "init",
        "--size",
        "tiny",
        "--arch",
        "decoder",
        "--vocab-size",
        "512",
        "--seed",
        "3",
        "--out",
        tmp_path / "b",
    )
    run(
        monkeypatch,
        capsys,
        "init",
        "--size",
        "tiny",
        "--arch",
        "decoder",
        "--vocab-size",
        "512",
        "--seed",
        "4",
        "--out",
        tmp_path / "c",
    )
    a, b, c = (ettin.load(tmp_path / n) for n in "abc")
    assert same_weights(a, b) and not same_weights(a, c)
    # the spec's init: truncated normal at +-2 std, std 0.02 (0.02 / sqrt(2 n) for output projections)
    emb = a.model.embeddings.tok_embeddings.weight
    assert emb.abs().max() <= 0.04 + 1e-6 and 0.015 < emb.std() < 0.02
    assert a.model.layers[0].attn.Wo.weight.abs().max() <= 2 * 0.02 / 8**0.5 + 1e-6
    assert torch.equal(a.decoder.bias, torch.zeros_like(a.decoder.bias))


def test_init_with_tokenizer(monkeypatch, capsys, tmp_path, small_tokenizer_dir):
    code, _, _ = run(
        monkeypatch,
        capsys,
        "init",
        "--size",
        "tiny",
        "--arch",
        "encoder",
        "--tokenizer",
        small_tokenizer_dir,
        "--out",
        tmp_path / "m",
    )
    assert code == 0
    assert (tmp_path / "m" / "tokenizer.json").read_bytes() == (small_tokenizer_dir / "tokenizer.json").read_bytes()
    model = ettin.load(tmp_path / "m")
    assert model.config.vocab_size == 1024 and model.config.mask_token_id == 1023
    code, _, err = run(
        monkeypatch,
        capsys,
        "init",
        "--size",
        "tiny",
        "--arch",
        "encoder",
        "--tokenizer",
        small_tokenizer_dir,
        "--vocab-size",
        "512",
        "--out",
        tmp_path / "small",
    )
    assert code == 2 and "vocab_size" in err and not (tmp_path / "small").exists()


def test_export_and_convert(monkeypatch, capsys, tmp_path):
    run(
        monkeypatch,
        capsys,
        "init",
        "--size",
        "tiny",
        "--arch",
        "encoder",
        "--vocab-size",
        "512",
        "--seed",
        "1",
        "--out",
        tmp_path / "enc",
    )
    code, out, _ = run(monkeypatch, capsys, "export", tmp_path / "enc", tmp_path / "copy")
    assert code == 0 and str(tmp_path / "copy") in out
    assert same_weights(ettin.load(tmp_path / "enc"), ettin.load(tmp_path / "copy"))

    code, out, _ = run(monkeypatch, capsys, "convert", tmp_path / "enc", tmp_path / "dec", "--arch", "decoder")
    assert code == 0 and "modernbert-decoder" in out
    dec = ettin.load(tmp_path / "dec")
    assert dec.config.arch == "decoder"
    assert same_weights(ettin.load(tmp_path / "enc", arch="decoder"), dec)

    code, _, err = run(monkeypatch, capsys, "convert", tmp_path / "dec", tmp_path / "again", "--arch", "decoder")
    assert code == 2 and "already a decoder" in err and not (tmp_path / "again").exists()

    code, _, err = run(monkeypatch, capsys, "export", tmp_path / "enc", tmp_path / "dec")
    assert code == 2 and "not empty" in err and "--overwrite" in err
    assert ettin.load(tmp_path / "dec").config.arch == "decoder"  # untouched
    code, _, _ = run(monkeypatch, capsys, "export", tmp_path / "enc", tmp_path / "dec", "--overwrite")
    assert code == 0 and ettin.load(tmp_path / "dec").config.arch == "encoder"


def test_usage_and_input_errors_are_one_line(monkeypatch, capsys, tmp_path):
    for args, expected in [
        (("init", "--size", "huge", "--arch", "encoder", "--out", tmp_path / "x"), "unknown size 'huge'"),
        (("init", "--size", "tiny", "--arch", "seq2seq", "--out", tmp_path / "x"), "unknown arch"),
        (("export", tmp_path / "missing", tmp_path / "x"), "no such model folder"),
        (("convert", tmp_path / "missing", tmp_path / "x"), "--arch"),
    ]:
        code, _, err = run(monkeypatch, capsys, *args)
        assert code == 2, args
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("status", "error_code", "exit_code"), [(404, "RepoNotFound", 2), (503, None, 1)])
def test_hub_errors_are_one_line_and_say_whose_they_are(tmp_path, monkeypatch, capsys, status, error_code, exit_code):
    """A missing repository is the user's (exit 2, fix the name); a hub outage is not (exit 1, try again)."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import hf_raise_for_status

    http = sys.modules[HfHubHTTPError.__mro__[1].__module__]
    request = http.Request("GET", "https://huggingface.co/api/models/some-org/some-model/revision/main")
    response = http.Response(status, headers={"X-Error-Code": error_code} if error_code else {}, request=request)

    def snapshot_download(**kwargs):
        hf_raise_for_status(response)
        raise AssertionError("huggingface_hub accepted the answer")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(monkeypatch, capsys, "export", "some-org/some-model", tmp_path / "out")
    assert code == exit_code
    assert err.startswith("error: some-org/some-model: ") and err.count("\n") == 1 and "Traceback" not in err
    assert ("try again later" in err) == (exit_code == 1)
    assert not (tmp_path / "out").exists()
