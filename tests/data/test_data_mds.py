"""MDS sources: folders written by MosaicML's real MDSWriter (tests/data/fixtures/mds, see write_fixtures.py),
read, prepared without tokenizing, ordered as bert24 does, trained on; and their bad inputs."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ettin.data.mds import MDSFolder
from ettin.data.prepare import prepare
from ettin.data.shards import PreparedSource
from ettin.data.stream import PhaseBatches, TokenStream
from ettin.errors import EttinError
from support import assert_one_line_error, run_in_process

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mds"
META = json.loads((FIXTURES / "fixtures.json").read_text())
CLS, SEP = META["cls_id"], META["sep_id"]
ID_FIXTURES = ("u16-zstd", "u16-raw", "u32-zstd", "u32-raw")


def _writer_module():
    spec = importlib.util.spec_from_file_location("write_fixtures", FIXTURES / "write_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


WF = _writer_module()


def written(name: str) -> list[np.ndarray]:
    """The samples write_fixtures.py gave MDSWriter for fixture `name` (rebuilt from the seed)."""
    m = META[name]
    return WF.samples(m["seed"], m["samples"], m["vocab"], cls_id=CLS, sep_id=SEP, with_specials=m["specials"])


@pytest.fixture(scope="module")
def mds_data(tmp_path_factory, small_tokenizer_dir) -> Path:
    out = tmp_path_factory.mktemp("mds") / "data"
    sources = [f"{n.replace('-', '_')}=mds:{FIXTURES / n}" for n in ID_FIXTURES]
    prepare([*sources, f"text_only=mds:{FIXTURES / 'text-only'}"], small_tokenizer_dir, out, shard_tokens=300)
    return out


def reference_bert24_sample(raw: np.ndarray, seq_len: int) -> list[int]:
    ids = list(int(x) for x in raw)
    if not ids or ids[0] != CLS:
        ids = ([CLS] + ids)[:seq_len]
    if SEP not in ids:
        ids = ids[: seq_len - 1] + [SEP]
    return ids[:seq_len]


def reference_bert24_batches(n: int, seed: int, world: int, device_batch: int, steps: int) -> list[list[int]]:
    """Per step, the sample indices of bert24's DistributedSamplerPCG64DXSM (drop_last), rank by rank."""
    out, epoch = [], 0
    while len(out) < steps:
        perm = np.random.Generator(np.random.PCG64DXSM(seed + epoch)).permutation(n)
        perm = perm[: n // world * world]
        per_rank = [perm[r::world] for r in range(world)]
        for k in range(len(per_rank[0]) // device_batch):
            out.append([int(i) for r in range(world) for i in per_rank[r][k * device_batch : (k + 1) * device_batch]])
        epoch += 1
    return out[:steps]


# ------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("name", ID_FIXTURES)
def test_reader_returns_the_written_ids_with_their_width(name):
    folder = MDSFolder.open(FIXTURES / name)
    assert len(folder.shards) > 1 or name == "u32-raw"
    got = [v for _, (vals,) in folder.iter_shards(["input_ids"]) for v in vals]
    assert folder.num_samples == len(got) == META[name]["samples"]
    assert all(v.dtype == np.dtype(META[name]["dtype"]) for v in got)
    assert [v.tolist() for v in got] == [w.tolist() for w in written(name)]


def test_reader_reads_the_string_column():
    folder = MDSFolder.open(FIXTURES / "u16-zstd")
    ids = [v for _, (vals,) in folder.iter_shards(["id"]) for v in vals]
    assert ids == [f"u16-zstd-{i}" for i in range(META["u16-zstd"]["samples"])]


# ------------------------------------------------------------------------------------------ prepare


@pytest.mark.parametrize("name", ID_FIXTURES)
def test_prepare_copies_ids_without_tokenizing(mds_data, name):
    src = PreparedSource.open(mds_data / name.replace("-", "_"))
    flags = np.load(src.folder / "mds-flags.npy")
    assert src.num_documents == META[name]["samples"]
    assert src.manifest["mds"]["encoding"] == f"ndarray:{META[name]['dtype']}"
    for i, want in enumerate(written(name)):
        body = src.document_tokens(i).tolist()
        back = ([CLS] if flags[i] & 1 else []) + body + ([SEP] if flags[i] & 2 else [])
        assert back == want.tolist(), i
        assert CLS not in body[:1] and SEP not in body[-1:]


def test_bytes_column_is_read_as_int64_ids(tmp_path, small_tokenizer_dir):
    prepare([f"b=mds:{FIXTURES / 'bytes-i64'}"], small_tokenizer_dir, tmp_path / "d")
    src = PreparedSource.open(tmp_path / "d" / "b")
    assert src.manifest["mds"]["encoding"] == "bytes"
    assert [[CLS, *src.document_tokens(i).tolist(), SEP] for i in range(src.num_documents)] == [
        w.tolist() for w in written("bytes-i64")
    ]


def test_text_only_mds_is_tokenized_like_other_sources(mds_data, small_tokenizer_dir):
    from ettin.tokenizer import load_tokenizer

    tok = load_tokenizer(small_tokenizer_dir)
    src = PreparedSource.open(mds_data / "text_only")
    texts = WF.texts(META["text-only"]["samples"])
    assert src.num_documents == len(texts)
    for i, text in enumerate(texts):
        assert src.document_tokens(i).tolist() == tok(text, add_special_tokens=False)["input_ids"]


def test_default_order_wraps_mds_samples_in_cls_and_sep(mds_data):
    stream = TokenStream({"dir": str(mds_data), "mixture": {"u16_zstd": 1}, "min_tokens": 1}, seed=3, seq_len=64)
    bodies = {tuple(w[(w[:1] == CLS).sum() : len(w) - (w[-1:] == SEP).sum()].tolist()) for w in written("u16-zstd")}
    for s in stream.next_batch(batch_size_sequences=60):
        ids = s.input_ids.tolist()
        assert ids[0] == CLS and ids[-1] == SEP and tuple(ids[1:-1]) in bodies


# ------------------------------------------------------------------------------------------ bert24 order


@pytest.mark.parametrize("world,device_batch", [(3, 2), (4, 3), (1, 5)])
def test_bert24_order_is_the_pcg64dxsm_sampler_order(mds_data, world, device_batch):
    spec = {
        "dir": str(mds_data),
        "mixture": {"u16_zstd": 1},
        "order": {"sampler": "bert24", "shuffle_seed": 17, "world_size": world},
    }
    seq_len = 24  # shorter than some samples: bert24's truncation rules apply
    batches = PhaseBatches(TokenStream(spec, seed=1, seq_len=seq_len), batch_size=world * device_batch)
    samples = written("u16-zstd")
    ref = reference_bert24_batches(len(samples), 17, world, device_batch, steps=25)  # crosses epochs
    for step, want in enumerate(ref):
        got = batches.next_batch()
        assert [s.doc for s in got] == want, step
        assert [s.input_ids.tolist() for s in got] == [reference_bert24_sample(samples[i], seq_len) for i in want]


def test_bert24_order_resumes_exactly_and_is_not_the_default(mds_data):
    spec = {"dir": str(mds_data), "mixture": {"u32_zstd": 1}, "order": {"sampler": "bert24", "world_size": 2}}
    a = PhaseBatches(TokenStream(spec, seed=1, seq_len=64), batch_size=4)
    for _ in range(7):
        a.next_batch()
    state = a.state_dict()
    b = PhaseBatches(TokenStream(spec, seed=1, seq_len=64), batch_size=4)
    b.load_state_dict(state)
    assert [s.doc for s in a.next_batch()] == [s.doc for s in b.next_batch()]
    default = TokenStream({"dir": str(mds_data), "mixture": {"u32_zstd": 1}}, seed=1, seq_len=64)
    ref = reference_bert24_batches(META["u32-zstd"]["samples"], 9176, 2, 2, 1)[0]
    assert [s.doc for s in default.next_batch(batch_size_sequences=4)] != ref


def test_bert24_order_without_drop_last_pads_like_the_sampler(mds_data):
    n, world = META["u32-raw"]["samples"], 4  # 30 samples: padded to 32
    spec = {
        "dir": str(mds_data),
        "mixture": {"u32_raw": 1},
        "order": {"sampler": "bert24", "world_size": world, "shuffle_seed": 2, "drop_last": False},
    }
    stream = TokenStream(spec, seed=0, seq_len=64)
    perm = np.random.Generator(np.random.PCG64DXSM(2)).permutation(n).tolist()
    perm += perm[:2]
    got = [s.doc for s in stream.next_batch(batch_size_sequences=world * 8)]
    assert got == [i for r in range(world) for i in perm[r::world]]


def test_bert24_order_refuses_mixtures_and_uneven_batches(mds_data):
    with pytest.raises(EttinError, match="one source"):
        TokenStream(
            {"dir": str(mds_data), "mixture": {"u16_raw": 1, "u32_raw": 1}, "order": {"sampler": "bert24"}},
            seed=0,
            seq_len=32,
        )
    stream = TokenStream(
        {"dir": str(mds_data), "mixture": {"u16_raw": 1}, "order": {"sampler": "bert24", "world_size": 4}},
        seed=0,
        seq_len=32,
    )
    with pytest.raises(EttinError, match="does not split over world_size 4"):
        stream.next_batch(batch_size_sequences=6)


# ------------------------------------------------------------------------------------------ training


def test_training_on_mds_in_bert24_order_sees_exactly_the_written_samples(mds_data, small_tokenizer_dir, tmp_path):
    import torch
    import yaml

    from ettin.data.order import read_order
    from ettin.recipe import load_recipe
    from ettin.train.trainer import TrainOptions, train

    world, device_batch, seq_len, steps = 2, 2, 32, 5
    recipe = {
        "name": "mds-test",
        "arch": "decoder",
        "model": {"size": "tiny", "max_position_embeddings": 64},
        "seed": 5,
        "precision": "fp32",
        "micro_batch_size": 2,
        "tokenizer": str(small_tokenizer_dir),
        "data_dir": str(mds_data),
        "checkpoint": {"every_tokens": 100000},
        "phases": [
            {
                "name": "pretrain",
                "tokens": 10**6,
                "seq_len": seq_len,
                "batch_size": world * device_batch,
                "data": {
                    "mixture": {"u16_raw": 1},
                    "order": {"sampler": "bert24", "shuffle_seed": 11, "world_size": world},
                },
            }
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            load_recipe(path), TrainOptions(out=tmp_path / "run", progress=False, max_steps=steps, log=lambda m: None)
        )
    finally:
        torch.set_num_threads(before)
    rows = read_order(tmp_path / "run", arch="decoder").to_pylist()
    samples = written("u16-raw")
    ref = reference_bert24_batches(len(samples), 11, world, device_batch, steps)
    assert sorted({r["step"] for r in rows}) == list(range(1, steps + 1))
    for step, want in enumerate(ref, 1):
        got = [r["input_ids"] for r in rows if r["step"] == step]
        assert got == [reference_bert24_sample(samples[i], seq_len) for i in want], step
    code, out, err = run_in_process(["data", "order", tmp_path / "run", "--check"])  # plan.json keeps the order
    assert code == 0 and "identical" in out, out + err


# ------------------------------------------------------------------------------------------ bad input


def _prepare_cli(src: str, tokenizer: Path, out: Path):
    return run_in_process(["data", "prepare", "--source", src, "--tokenizer", tokenizer, "--out", out])


def test_folder_without_index_is_one_clear_error(tmp_path, small_tokenizer_dir):
    (tmp_path / "notmds").mkdir()
    code, _, err = _prepare_cli(f"x=mds:{tmp_path / 'notmds'}", small_tokenizer_dir, tmp_path / "out")
    assert_one_line_error(code, err, "no index.json")
    assert not (tmp_path / "out").exists()


def test_listed_but_missing_shard_is_one_clear_error(tmp_path, small_tokenizer_dir):
    shutil.copytree(FIXTURES / "u16-zstd", tmp_path / "m")
    (tmp_path / "m" / "shard.00003.mds.zstd").unlink()
    code, _, err = _prepare_cli(f"x=mds:{tmp_path / 'm'}", small_tokenizer_dir, tmp_path / "out")
    assert_one_line_error(code, err, "shard.00003.mds.zstd", "missing")
    assert not (tmp_path / "out").exists()


def test_corrupted_shard_fails_its_hash(tmp_path, small_tokenizer_dir):
    shutil.copytree(FIXTURES / "u16-raw", tmp_path / "m")
    shard = tmp_path / "m" / "shard.00004.mds"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # same size, other content: only the index's sha1 can tell
    shard.write_bytes(bytes(data))
    code, _, err = _prepare_cli(f"x=mds:{tmp_path / 'm'}", small_tokenizer_dir, tmp_path / "out")
    assert_one_line_error(code, err, "shard.00004.mds", "sha1", "corrupted")
    assert not (tmp_path / "out").exists()


def test_ids_beyond_the_vocabulary_name_shard_and_sample(tmp_path, small_tokenizer_dir):
    code, _, err = _prepare_cli(f"x=mds:{FIXTURES / 'oov'}", small_tokenizer_dir, tmp_path / "out")
    # the writer's size limit gave an empty first shard and then one sample per shard
    assert_one_line_error(code, err, "id 4000", "vocabulary of 1024", "sample 9 of the folder", "shard.00010.mds")
    assert not (tmp_path / "out").exists()


def test_float_column_is_refused(tmp_path, small_tokenizer_dir):
    code, _, err = _prepare_cli(f"x=mds:{FIXTURES / 'floats'}", small_tokenizer_dir, tmp_path / "out")
    assert_one_line_error(code, err, "ndarray:float32", "not integer token ids")
    assert not (tmp_path / "out").exists()


def test_hub_folder_is_downloaded_once_into_the_cache(tmp_path, monkeypatch, small_tokenizer_dir, mds_data):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, repo_type=None, revision=None):
        calls.append((repo_id, filename, repo_type, revision))
        return str(FIXTURES / filename)  # the hub repo's folder u16-zstd/ is our fixture

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("ETTIN_MDS_CACHE", str(tmp_path / "cache"))
    url = "hf://datasets/jhu-clsp/ettin-like@v1/u16-zstd"
    first = prepare([f"remote=mds:{url}"], small_tokenizer_dir, tmp_path / "d")[0]
    n_shards = len(MDSFolder.open(FIXTURES / "u16-zstd").shards)
    assert first.status == "prepared" and len(calls) == 1 + n_shards
    assert calls[0] == ("jhu-clsp/ettin-like", "u16-zstd/index.json", "dataset", "v1")
    again = prepare([f"remote=mds:{url}"], small_tokenizer_dir, tmp_path / "d")[0]
    assert again.status == "up to date" and len(calls) == 1 + n_shards
    remote, local = PreparedSource.open(tmp_path / "d" / "remote"), PreparedSource.open(mds_data / "u16_zstd")
    assert [remote.document_tokens(i).tolist() for i in range(remote.num_documents)] == [
        local.document_tokens(i).tolist() for i in range(local.num_documents)
    ]


def test_recipe_prepare_sources_take_an_mds_folder(small_tokenizer_dir, tmp_path):
    import torch
    import yaml

    from ettin.data.order import read_order
    from ettin.recipe import load_recipe
    from ettin.train.trainer import TrainOptions, train

    recipe = {
        "name": "mds-auto",
        "arch": "decoder",
        "model": {"size": "tiny", "max_position_embeddings": 64},
        "precision": "fp32",
        "micro_batch_size": 2,
        "tokenizer": str(small_tokenizer_dir),
        "data_dir": str(tmp_path / "data"),
        "prepare": {"sources": [f"ettin32=mds:{FIXTURES / 'u32-zstd'}"]},
        "checkpoint": {"every_tokens": 100000},
        "phases": [{"name": "p", "tokens": 10**6, "seq_len": 64, "batch_size": 4, "data": {"mixture": {"ettin32": 1}}}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_recipe(path), TrainOptions(out=tmp_path / "run", progress=False, max_steps=2, log=lambda m: None))
    finally:
        torch.set_num_threads(before)
    assert PreparedSource.open(tmp_path / "data" / "ettin32").manifest["mds"]["encoding"] == "ndarray:uint32"
    bodies = {tuple(w[(w[:1] == CLS).sum() : len(w) - (w[-1:] == SEP).sum()].tolist()) for w in written("u32-zstd")}
    rows = read_order(tmp_path / "run", arch="decoder").to_pylist()
    assert len(rows) == 8 and all(r["input_ids"][0] == CLS and tuple(r["input_ids"][1:-1]) in bodies for r in rows)
