"""Hugging Face folders: round trips, legacy configs, and one clear error for each kind of bad input."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ettin
from ettin import commands, hf
from ettin.config import ModelConfig, config_for_size, special_ids_for
from ettin.errors import EttinError
from ettin.model import EttinModel

VOCAB = 1024
ETTIN_BIN = Path(sys.executable).with_name("ettin")


def make_model(arch: str = "encoder", seed: int = 0, vocab_size: int = VOCAB, **overrides) -> EttinModel:
    torch.manual_seed(seed)
    model = EttinModel(config_for_size("tiny", arch, vocab_size, **overrides)).eval()
    with torch.no_grad():
        model.decoder.bias.normal_()
    return model


def assert_same_weights(a: EttinModel, b: EttinModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def keys_of(path: Path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp" in p.name)


# ------------------------------------------------------------------------------------- round trips


def test_encoder_round_trip(tmp_path):
    model = make_model("encoder")
    out = hf.save_pretrained(model, tmp_path / "enc")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "modernbert" and cfg["architectures"] == ["ModernBertForMaskedLM"]
    assert cfg["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert cfg["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 160_000.0}
    assert cfg["mask_token_id"] == special_ids_for(VOCAB)["mask_token_id"]
    keys = keys_of(out)
    assert "decoder.weight" not in keys and "model.layers.1.attn.Wqkv.weight" in keys and "head.dense.weight" in keys
    back = ettin.load(out)
    assert back.config == model.config
    assert back.decoder.weight is back.model.embeddings.tok_embeddings.weight
    assert_same_weights(model, back)


def test_decoder_round_trip(tmp_path):
    model = make_model("decoder", seed=1)
    out = hf.save_pretrained(model, tmp_path / "dec")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "modernbert-decoder"
    assert cfg["architectures"] == ["ModernBertDecoderForCausalLM"]
    assert (cfg["local_attention"], cfg["sliding_window"]) == (128, 64)
    gen = json.loads((out / "generation_config.json").read_text())
    ids = special_ids_for(VOCAB)
    assert gen == {
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
    }
    keys = keys_of(out)
    assert {
        "model.layers.0.attn.q_proj.weight",
        "model.layers.0.attn.k_proj.weight",
        "model.layers.0.attn.v_proj.weight",
        "lm_head.dense.weight",
        "lm_head.norm.weight",
    } <= keys
    assert not any("Wqkv" in k or k.startswith("head.") for k in keys)
    # the split is by rows: Q, then K, then V
    h = model.config.hidden_size
    wqkv = model.state_dict()["model.layers.2.attn.Wqkv.weight"]
    stored = load_file(str(out / "model.safetensors"))
    assert torch.equal(stored["model.layers.2.attn.k_proj.weight"], wqkv[h : 2 * h])
    back = ettin.load(out)
    assert back.config == model.config
    assert_same_weights(model, back)


def test_convert_between_archs(tmp_path):
    enc = make_model("encoder", seed=2)
    dec = commands.convert(enc, "decoder")
    assert dec.config.arch == "decoder" and dec.config == enc.config.replace(arch="decoder")
    assert_same_weights(enc, dec)
    assert commands.convert(dec, "decoder") is dec
    path = hf.save_pretrained(dec, tmp_path / "dec")
    again = commands.convert(path, "encoder")
    assert again.config == enc.config
    assert_same_weights(enc, again)
    # ... and the causal mask really is on: future tokens no longer change earlier logits
    ids = torch.randint(0, 1000, (1, 20))
    ids2 = ids.clone()
    ids2[0, 10:] = (ids2[0, 10:] + 1) % 1000
    with torch.no_grad():
        assert torch.allclose(dec(ids).logits[0, :10], dec(ids2).logits[0, :10], atol=1e-6)
        assert not torch.allclose(enc(ids).logits[0, :10], enc(ids2).logits[0, :10], atol=1e-6)


def test_export_reads_as_other_arch_and_copies_tokenizer(tmp_path, small_tokenizer_dir):
    src = hf.save_pretrained(make_model("encoder", seed=3), tmp_path / "enc", small_tokenizer_dir)
    assert (src / "tokenizer.json").is_file() and (src / "tokenizer_config.json").is_file()
    out, model = commands.export(src, tmp_path / "dec", arch="decoder")
    assert model.config.arch == "decoder"
    from ettin.tokenizer import tokenizer_fingerprint

    assert tokenizer_fingerprint(out) == tokenizer_fingerprint(src)  # same ids; only the template follows the arch
    assert json.loads((out / "config.json").read_text())["model_type"] == "modernbert-decoder"
    assert_same_weights(ettin.load(src), ettin.load(out, arch="encoder"))


def test_config_written_by_transformers_reads_back_the_same(tmp_path):
    from transformers import AutoConfig

    for arch in ("encoder", "decoder"):
        config = config_for_size(
            "tiny",
            arch,
            VOCAB,
            global_rope_theta=10_000.0,
            local_rope_theta=20_000.0,
            local_attention=96,
            max_position_embeddings=1024,
        )
        path = hf.save_pretrained(make_model(arch).__class__(config), tmp_path / arch)
        AutoConfig.from_pretrained(path).save_pretrained(tmp_path / f"{arch}-hf")
        assert hf.read_config(tmp_path / f"{arch}-hf") == config


def test_legacy_config_keys(tmp_path):
    from transformers import AutoConfig

    legacy = {  # as transformers 4.x and the hub's Ettin configs write it
        "architectures": ["ModernBertDecoderForCausalLM"],
        "model_type": "modernbert-decoder",
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 7,
        "num_attention_heads": 1,
        "global_attn_every_n_layers": 3,
        "global_rope_theta": 160000.0,
        "local_attention": 128,
        "max_position_embeddings": 7999,
        "torch_dtype": "float32",
        "norm_bias": False,
        "tie_word_embeddings": True,
        "reference_compile": False,
        "pad_token_id": 1022,
        "bos_token_id": 1020,
        "eos_token_id": 1021,
        "cls_token_id": 1020,
        "sep_token_id": 1021,
    }
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    config = hf.read_config(tmp_path)
    theirs = AutoConfig.from_pretrained(tmp_path)
    assert config.arch == "decoder"
    assert (
        config.layer_types
        == list(theirs.layer_types)
        == [
            "full_attention",
            "sliding_attention",
            "sliding_attention",
            "full_attention",
            "sliding_attention",
            "sliding_attention",
            "full_attention",
        ]
    )
    # a missing local theta takes transformers' default, so both libraries build the same model
    assert config.global_rope_theta == theirs.rope_parameters["full_attention"]["rope_theta"] == 160_000.0
    assert config.local_rope_theta == theirs.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    assert (config.mask_token_id, config.unk_token_id) == (1023, 1019)  # not in ModernBERT configs
    assert config.max_position_embeddings == 7999 and config.local_attention == 128

    legacy |= {"local_rope_theta": 10_000.0, "global_attn_every_n_layers": 2}
    legacy.pop("local_attention")
    legacy["sliding_window"] = 32
    assert hf.config_from_hf(legacy).layer_types[:3] == ["full_attention", "sliding_attention", "full_attention"]
    assert hf.config_from_hf(legacy).local_attention == 64


def test_weights_with_tied_projection_or_in_shards(tmp_path):
    model = make_model("encoder", seed=4)
    path = hf.save_pretrained(model, tmp_path / "m")
    sd = load_file(str(path / "model.safetensors"))
    # a file that also stores the tied projection (older writers) loads the same
    with_tied = dict(sd, **{"decoder.weight": sd["model.embeddings.tok_embeddings.weight"].clone()})
    save_file(with_tied, str(path / "model.safetensors"), metadata={"format": "pt"})
    assert_same_weights(model, ettin.load(path))
    # two shards and an index, as transformers writes large models
    (path / "model.safetensors").unlink()
    names = sorted(sd)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: sd[k] for k in part}, str(path / shard), metadata={"format": "pt"})
        weight_map |= {k: shard for k in part}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_same_weights(model, ettin.load(path))


def test_dtype(tmp_path):
    model = make_model("decoder")
    path = hf.save_pretrained(model.to(torch.bfloat16), tmp_path / "bf16")
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_file(str(path / "model.safetensors"))["decoder.bias"].dtype == torch.bfloat16
    assert next(ettin.load(path).parameters()).dtype == torch.float32
    assert next(ettin.load(path, dtype="auto").parameters()).dtype == torch.bfloat16
    assert next(ettin.load(path, dtype=torch.float16).parameters()).dtype == torch.float16


def test_special_ids_fall_back_to_the_tokenizer(tmp_path, small_tokenizer_dir):
    path = hf.save_pretrained(make_model("encoder"), tmp_path / "m", small_tokenizer_dir)
    cfg = json.loads((path / "config.json").read_text())
    del cfg["mask_token_id"], cfg["unk_token_id"]
    (path / "config.json").write_text(json.dumps(cfg))
    config = hf.read_config(path)
    assert (config.mask_token_id, config.unk_token_id) == (1023, 1019)


def test_revision_of_a_training_run(tmp_path):
    from ettin.train.checkpoint import write_hf_export

    run = tmp_path / "run" / "encoder"
    models = {}
    for i, tag in enumerate(("step10", "step20")):
        models[tag] = make_model("encoder", seed=10 + i)
        info = {
            "step": 10 * (i + 1),
            "tokens": 1000 * (i + 1),
            "phase": 0,
            "phase_name": "pretraining",
            "phase_step": 10 * (i + 1),
        }
        write_hf_export(run, tag, models[tag], info)
    assert_same_weights(models["step10"], ettin.load(run, "step10"))
    assert_same_weights(models["step20"], ettin.load(run))  # latest
    with pytest.raises(EttinError, match="no revision 'step99'"):
        ettin.load(run, "step99")
    with pytest.raises(EttinError, match="encoder"):  # the run's root: point at the model's folder
        ettin.load(tmp_path / "run", "step10")


# -------------------------------------------------------------------------------------- bad input


@pytest.fixture
def saved(tmp_path) -> Path:
    return hf.save_pretrained(make_model("encoder"), tmp_path / "model")


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


class _Boom:
    """Unpickling this creates a folder: proof that a pickle was (not) opened."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _pickle_only(path: Path) -> None:
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(path.parent / "UNPICKLED")))


def _truncate(path: Path) -> None:
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _backbone_only(path: Path) -> None:
    sd = load_file(str(path / "model.safetensors"))
    save_file(
        {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")},
        str(path / "model.safetensors"),
        metadata={"format": "pt"},
    )


def _classifier(path: Path) -> None:
    sd = load_file(str(path / "model.safetensors"))
    sd.pop("decoder.bias")
    sd["classifier.weight"] = torch.zeros(3, 64)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})


def _big_tokenizer(path: Path, tok_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).write_bytes((tok_dir / name).read_bytes())
    _edit_config(path, vocab_size=1024)
    sd = load_file(str(path / "model.safetensors"))
    save_file(sd, str(path / "model.safetensors"))


def _missing_shard(path: Path) -> None:
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    (path / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "model.embeddings.norm.weight": "model-00001-of-00002.safetensors",
                    "head.norm.weight": "model-00002-of-00002.safetensors",
                }
            }
        )
    )


BAD_DIRS = {
    "not modernbert": (lambda p, t: _edit_config(p, model_type="bert"), "is a 'bert' model, not ModernBERT"),
    "no model_type": (lambda p, t: _edit_config(p, model_type=None), "no 'model_type'"),
    "missing config": (lambda p, t: (p / "config.json").unlink(), "config.json is missing"),
    "config lacks a key": (lambda p, t: _edit_config(p, hidden_size=None), "'hidden_size'"),
    "config not json": (lambda p, t: (p / "config.json").write_text("{oops"), "not valid JSON"),
    "missing weights": (lambda p, t: (p / "model.safetensors").unlink(), "has no weights"),
    "truncated weights": (lambda p, t: _truncate(p), "truncated or corrupt"),
    "garbage weights": (lambda p, t: (p / "model.safetensors").write_bytes(b"\x10" * 100), "truncated or corrupt"),
    "pickle weights": (lambda p, t: _pickle_only(p), "pickle weights"),
    "missing shard": (lambda p, t: _missing_shard(p), "which is missing"),
    "backbone only": (lambda p, t: _backbone_only(p), "only a backbone"),
    "classifier model": (lambda p, t: _classifier(p), "do not match the config"),
    "shape mismatch": (lambda p, t: _edit_config(p, intermediate_size=128), "the config implies"),
    "rope scaling": (
        lambda p, t: _edit_config(p, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
        "RoPE type 'yarn'",
    ),
    "tokenizer too big": (lambda p, t: _big_tokenizer(p, t), "vocab_size"),
}


@pytest.mark.parametrize("case", list(BAD_DIRS))
def test_bad_model_folder_gives_one_clear_error(tmp_path, small_tokenizer_dir, case):
    make_bad, expected = BAD_DIRS[case]
    vocab = 512 if case == "tokenizer too big" else VOCAB
    path = hf.save_pretrained(make_model("encoder", vocab_size=vocab), tmp_path / "model")
    if case == "tokenizer too big":
        _big_tokenizer(path, small_tokenizer_dir)
        _edit_config(path, vocab_size=512)
    else:
        make_bad(path, small_tokenizer_dir)
    with pytest.raises(EttinError) as err:
        ettin.load(path)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
    assert not (tmp_path / "UNPICKLED").exists()
    # export fails the same way and writes nothing
    with pytest.raises(EttinError, match="."):
        commands.export(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_pickle_message_explains_the_refusal_and_the_fix(tmp_path):
    path = hf.save_pretrained(make_model("encoder"), tmp_path / "model")
    _pickle_only(path)
    with pytest.raises(EttinError) as err:
        ettin.load(path)
    assert "arbitrary code" in str(err.value) and "save_pretrained(out_dir, safe_serialization=True)" in str(err.value)
    assert not (tmp_path / "UNPICKLED").exists()


def test_bad_paths_and_names(tmp_path, monkeypatch):
    with pytest.raises(EttinError, match="no such model folder"):
        ettin.load(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(EttinError, match="is a file"):
        ettin.load(tmp_path / "file")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EttinError, match="HF_HUB_OFFLINE"):
        ettin.load("some-org/some-model")
    (tmp_path / "runs").mkdir()
    with pytest.raises(EttinError, match="no such model folder"):  # a local typo, not a hub id
        ettin.load("runs/dmeo")
    path = hf.save_pretrained(make_model("encoder"), tmp_path / "model")
    with pytest.raises(EttinError, match="--revision step5 does not apply"):
        ettin.load(path, "step5")
    with pytest.raises(EttinError, match="unknown arch"):
        ettin.load(path, arch="seq2seq")
    with pytest.raises(EttinError, match="unknown dtype"):
        ettin.load(path, dtype="int8")
    with pytest.raises(EttinError, match="unknown size 'huge'"):
        commands.init_model("huge", "encoder", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_writing_refuses_to_clobber_and_to_mismatch(tmp_path, small_tokenizer_dir):
    model = make_model("encoder", vocab_size=512)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EttinError, match="not empty"):
        hf.save_pretrained(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    hf.save_pretrained(model, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    with pytest.raises(EttinError, match="1024 tokens but the model's vocab_size is 512|vocab_size"):
        hf.save_pretrained(model, tmp_path / "with-tok", small_tokenizer_dir)
    assert not (tmp_path / "with-tok").exists() and leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    hf.save_pretrained(model, empty)  # an empty folder is as good as none
    assert (empty / "model.safetensors").is_file()


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([str(ETTIN_BIN), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.mark.skipif(not ETTIN_BIN.exists(), reason="console script not installed")
def test_console_script_reports_bad_input_in_one_line(tmp_path):
    pickled = hf.save_pretrained(make_model("encoder"), tmp_path / "pickled")
    _pickle_only(pickled)
    truncated = hf.save_pretrained(make_model("encoder"), tmp_path / "truncated")
    _truncate(truncated)
    bert = hf.save_pretrained(make_model("encoder"), tmp_path / "bert")
    _edit_config(bert, model_type="bert")
    cases = [
        (["export", str(pickled), "out"], "arbitrary code"),
        (["export", str(truncated), "out"], "truncated"),
        (["convert", str(bert), "out", "--arch", "decoder"], "'bert'"),
        (["init", "--size", "huge", "--arch", "encoder", "--out", "out"], "unknown size 'huge'"),
    ]
    for args, expected in cases:
        res = _run_cli(*args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr
        assert not (tmp_path / "out").exists()
    assert not (tmp_path / "UNPICKLED").exists()


def test_model_config_fields_survive_the_round_trip():
    config = ModelConfig(
        arch="decoder",
        vocab_size=2048,
        hidden_size=96,
        intermediate_size=100,
        num_hidden_layers=5,
        num_attention_heads=3,
        global_attn_every_n_layers=2,
        local_attention=32,
        global_rope_theta=1234.0,
        local_rope_theta=567.0,
        max_position_embeddings=333,
        norm_eps=1e-6,
        initializer_range=0.03,
        initializer_cutoff_factor=3.0,
        attention_dropout=0.1,
        layer_types=["full_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        **special_ids_for(2048),
    )
    d = hf.config_to_hf(config)
    assert d["layer_types"] == config.layer_types  # what transformers 5.x builds from, whatever the pattern
    assert hf.config_from_hf(json.loads(json.dumps(d))) == config


def test_package_exports_are_lazy():
    import ettin.model

    assert ettin.EttinModel is ettin.model.EttinModel and ettin.ModelConfig is ModelConfig
    code = "import sys, ettin; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_exports_carry_the_template_of_their_arch(tmp_path, small_tokenizer_dir):
    """Encoders add [CLS] A [SEP]; decoders only [CLS], so lm-eval's `--model hf` sees no [SEP] after a context."""
    import torch
    from transformers import AutoTokenizer

    from ettin.config import config_for_size
    from ettin.hf import save_pretrained
    from ettin.model import EttinModel
    from ettin.tokenizer import load_tokenizer, tokenizer_fingerprint

    ref = load_tokenizer(small_tokenizer_dir)
    ids = {}
    for arch in ("encoder", "decoder"):
        torch.manual_seed(0)
        model = EttinModel(config_for_size("tiny", arch, vocab_size=len(ref)))
        save_pretrained(model, tmp_path / arch, tokenizer=small_tokenizer_dir)
        tok = AutoTokenizer.from_pretrained(tmp_path / arch)
        ids[arch] = tok("to be or not")["input_ids"]
        assert tokenizer_fingerprint(tmp_path / arch) == tokenizer_fingerprint(small_tokenizer_dir)
    body = ref("to be or not", add_special_tokens=False)["input_ids"]
    assert ids["encoder"] == [ref.cls_token_id, *body, ref.sep_token_id]
    assert ids["decoder"] == [ref.cls_token_id, *body]


# ------------------------------------------------------------------------- the one state-dict table

DOCS = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
TABLE_START, TABLE_END = "<!-- conversion-table: start -->", "<!-- conversion-table: end -->"


def test_the_docs_table_is_rendered_from_the_mapping():
    text = DOCS.read_text(encoding="utf-8")
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1
    doc_table = text.split(TABLE_START)[1].split(TABLE_END)[0].strip() + "\n"
    assert doc_table == hf.conversion_table_markdown(), (
        "docs/architecture.md's parameter table differs from ettin.hf.STATE_DICT_MAP; paste "
        "`python -c 'from ettin import hf; print(hf.conversion_table_markdown())'` between its markers"
    )


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_every_parameter_of_both_libraries_is_in_the_table(arch):
    """Each ettin name and each name of transformers' class matches exactly one rule: nothing of
    either model converts by the table's pass-through for names it does not know."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    from ettin.hf.adapter import _FROM_HF, _TO_HF

    model = make_model(arch)
    for name in model.state_dict():
        assert sum(bool(p.fullmatch(name)) for p, _ in _TO_HF) == 1, name
    hf_config = AutoConfig.for_model(**hf.config_to_hf(model.config))
    auto = AutoModelForMaskedLM if arch == "encoder" else AutoModelForCausalLM
    theirs = auto.from_config(hf_config).state_dict()
    for name in theirs:
        assert sum(bool(p.fullmatch(name)) for p, _, _ in _FROM_HF[arch]) + (name == "decoder.weight") == 1, name
    ours = hf.state_dict_to_hf(model.state_dict(), arch, model.config)
    assert set(ours) == set(theirs) - {"decoder.weight"}
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    back = hf.state_dict_from_hf(ours, hf.MODEL_TYPES[arch])
    assert set(back) == set(model.state_dict()) - {"decoder.weight"}
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items() if k != "decoder.weight")


def test_a_split_tensor_with_a_part_missing_names_the_part():
    model = make_model("decoder")
    sd = hf.state_dict_to_hf(model.state_dict(), "decoder", model.config)
    del sd["model.layers.1.attn.k_proj.weight"]
    with pytest.raises(KeyError, match="model.layers.1.attn.k_proj.weight"):
        hf.state_dict_from_hf(sd, "modernbert-decoder")


# ------------------------------------------------------------------------------------ hub errors


def _hub_error(status: int, error_code: str | None = None) -> Exception:
    """The exception huggingface_hub itself raises for this answer of the hub."""
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import hf_raise_for_status

    http = sys.modules[HfHubHTTPError.__mro__[1].__module__]  # the HTTP library huggingface_hub uses
    request = http.Request("GET", "https://huggingface.co/api/models/some-org/some-model/revision/main")
    response = http.Response(status, headers={"X-Error-Code": error_code} if error_code else {}, request=request)
    try:
        hf_raise_for_status(response)
    except Exception as exc:
        return exc
    raise AssertionError(f"huggingface_hub accepted HTTP {status}")


def _fail_with(monkeypatch, tmp_path, exc: Exception) -> None:
    import huggingface_hub

    def snapshot_download(**kwargs):
        raise exc

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (404, "RepoNotFound", "does not exist or is private"),
        (403, "GatedRepo", "is gated"),
        (404, "RevisionNotFound", "has no revision 'v9'"),
        (403, None, "the hub refused it"),
    ],
)
def test_hub_errors_of_the_users_own_are_user_fixable(tmp_path, monkeypatch, status, code, message):
    _fail_with(monkeypatch, tmp_path, _hub_error(status, code))
    with pytest.raises(EttinError, match=message) as err:
        ettin.load("some-org/some-model", "v9")
    assert not isinstance(err.value, hf.HubUnavailableError) and err.value.exit_code == 2


@pytest.mark.parametrize("status", [500, 503, 429])
def test_hub_failures_are_not_called_the_users(tmp_path, monkeypatch, status):
    _fail_with(monkeypatch, tmp_path, _hub_error(status))
    with pytest.raises(hf.HubUnavailableError, match=f"{status}.*not with the command; try again later") as err:
        ettin.load("some-org/some-model")
    assert err.value.exit_code == 1


def test_no_network_is_not_called_the_users(tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    _fail_with(monkeypatch, tmp_path, LocalEntryNotFoundError("cannot reach the hub and nothing is cached"))
    with pytest.raises(hf.HubUnavailableError, match="cannot reach the hub"):
        ettin.load("some-org/some-model")


def test_a_bug_under_the_hub_call_keeps_its_traceback(tmp_path, monkeypatch):
    _fail_with(monkeypatch, tmp_path, TypeError("a bug"))
    with pytest.raises(TypeError, match="a bug"):
        ettin.load("some-org/some-model")


# ------------------------------------------------------------------------------ one rule in one place


def test_loaded_and_converted_models_have_their_head_tied(tmp_path):
    path = hf.save_pretrained(make_model("encoder"), tmp_path / "enc")
    for model in (hf.load_dir(path), hf.load_dir(path, arch="decoder"), commands.convert(make_model(), "decoder")):
        assert model.head_is_tied and model.decoder.weight is model.model.embeddings.tok_embeddings.weight
    model = make_model()
    model.decoder.weight = torch.nn.Parameter(model.decoder.weight.detach().clone())
    assert not model.head_is_tied
    with pytest.raises(ValueError, match="not tied"):
        hf.save_pretrained(model, tmp_path / "untied")
    model.tie_head()
    assert model.head_is_tied


def test_sequence_length_limit():
    config = config_for_size("tiny", vocab_size=VOCAB, max_position_embeddings=64)
    config.check_seq_len(64)
    with pytest.raises(EttinError, match="field 'phases.1.seq_len': sequence length 65 is beyond .* 64 positions"):
        config.check_seq_len(65, field="phases.1.seq_len")


def test_a_hub_style_tokenizer_is_checked_only_on_the_ids_it_defines(tmp_path, small_tokenizer_dir):
    """A tokenizer without bos/eos (as many hub tokenizers are) fits a model whose other ids agree."""
    from ettin.tokenizer import check_tokenizer_dir, check_tokenizer_fits, load_tokenizer, special_token_ids

    tok = load_tokenizer(small_tokenizer_dir)
    config = config_for_size("tiny", vocab_size=len(tok), **{k: v for k, v in special_token_ids(tok).items()})
    check_tokenizer_dir(small_tokenizer_dir, config)
    with pytest.raises(EttinError, match="mask_token_id: tokenizer"):
        check_tokenizer_dir(small_tokenizer_dir, config.replace(mask_token_id=(config.mask_token_id + 1) % len(tok)))
    tok.bos_token = None
    check_tokenizer_fits(tok, config, defined_only=True)
    with pytest.raises(EttinError, match="bos_token_id: tokenizer None"):
        check_tokenizer_fits(tok, config)


@pytest.mark.parametrize(
    "entry",
    [{"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}, {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}],
    ids=["unknown-dtype", "shape-contradicts-offsets"],
)
def test_a_damaged_header_that_passes_the_size_check_is_reported_as_corrupt(tmp_path, entry):
    import struct

    from ettin.hf.files import read_safetensors

    header = json.dumps({"a": entry}).encode()
    f = tmp_path / "model.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(EttinError, match="is corrupt: .*copy or export the model again"):
        read_safetensors(f)
