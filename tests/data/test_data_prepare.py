import json

import numpy as np
import pytest

from ettin import faults
from ettin.data.prepare import prepare
from ettin.data.shards import PreparedSource, read_manifest
from ettin.data.sources import iter_texts
from ettin.errors import EttinError
from ettin.tokenizer import load_tokenizer, tokenizer_fingerprint


def shard_hashes(folder):
    return [
        (s["tokens"]["sha256"], s["docs"]["sha256"], s["origins"]["sha256"]) for s in read_manifest(folder)["shards"]
    ]


def test_prepared_tokens_equal_direct_encoding(data_dir, corpus_dir, small_tokenizer_dir):
    manifest = read_manifest(data_dir / "wiki")
    assert manifest["tokenizer"]["fingerprint"] == tokenizer_fingerprint(small_tokenizer_dir)
    assert manifest["dtype"] == "uint16" and manifest["documents"] == 300 and len(manifest["shards"]) > 1
    assert all(len(s["tokens"]["sha256"]) == 64 for s in manifest["shards"])
    src = PreparedSource.open(data_dir / "wiki", verify=True)
    tok = load_tokenizer(small_tokenizer_dir)
    texts = list(iter_texts(f"jsonl:{corpus_dir / 'wiki.jsonl'}"))
    for i in (0, 1, 150, 299):
        expected = tok(texts[i], add_special_tokens=False)["input_ids"]
        assert src.document_tokens(i).tolist() == expected
    assert src.num_tokens == int(src.doc_lengths.sum()) == manifest["tokens"]
    assert src.origin(2) == "wiki.jsonl:3"


def test_second_run_does_nothing(data_dir, corpus_dir, small_tokenizer_dir):
    before = {p.name: p.stat().st_mtime_ns for p in (data_dir / "wiki").iterdir()}
    (result,) = prepare([f"wiki=jsonl:{corpus_dir / 'wiki.jsonl'}"], small_tokenizer_dir, data_dir, shard_tokens=20000)
    assert result.status == "up to date"
    assert {p.name: p.stat().st_mtime_ns for p in (data_dir / "wiki").iterdir()} == before


def test_changed_source_is_prepared_again(tmp_path, small_tokenizer_dir):
    p = tmp_path / "a.txt"
    p.write_text("to be or not to be " * 50)
    out = tmp_path / "out"
    assert prepare([f"text:{p}"], small_tokenizer_dir, out)[0].status == "prepared"
    p.write_text("that is the question " * 50)
    assert prepare([f"text:{p}"], small_tokenizer_dir, out)[0].status == "prepared"
    assert [x.name for x in out.iterdir()] == ["a"]


def test_interrupted_prepare_resumes_to_the_same_result(tmp_path, corpus_dir, small_tokenizer_dir, data_dir):
    source = [f"wiki=jsonl:{corpus_dir / 'wiki.jsonl'}"]
    out = tmp_path / "out"
    # die after shard 2's files are written but before it is marked done
    with faults.arm("prepare.write_shard", "interrupt", index="2") as fault, pytest.raises(KeyboardInterrupt):
        prepare(source, small_tokenizer_dir, out, shard_tokens=20000)
    assert fault.hits == 1
    assert not (out / "wiki").exists()  # nothing that looks finished
    assert (out / ".wiki.partial" / "shard-00001.json").exists()
    assert (out / ".wiki.partial" / "tokens-00002.npy").exists()
    assert not (out / ".wiki.partial" / "shard-00002.json").exists()
    (result,) = prepare(source, small_tokenizer_dir, out, shard_tokens=20000)
    assert result.status == "resumed"
    assert not (out / ".wiki.partial").exists()
    assert shard_hashes(out / "wiki") == shard_hashes(data_dir / "wiki")
    assert read_manifest(out / "wiki")["tokens"] == read_manifest(data_dir / "wiki")["tokens"]


def test_worker_processes_give_the_same_shards(tmp_path, corpus_dir, small_tokenizer_dir, data_dir):
    prepare(
        [f"wiki=jsonl:{corpus_dir / 'wiki.jsonl'}"],
        small_tokenizer_dir,
        tmp_path / "out",
        shard_tokens=20000,
        workers=2,
        batch_chars=30000,
    )
    assert shard_hashes(tmp_path / "out" / "wiki") == shard_hashes(data_dir / "wiki")


def test_tamper_detection(tmp_path, data_dir):
    import shutil

    copy = tmp_path / "wiki"
    shutil.copytree(data_dir / "wiki", copy)
    tokens = copy / "tokens-00001.npy"
    raw = bytearray(tokens.read_bytes())
    raw[-2] ^= 0x01  # the low bit of the last uint16 id: still inside the vocabulary
    tokens.write_bytes(bytes(raw))
    PreparedSource.open(copy)  # same size: only the hash check sees it
    with pytest.raises(EttinError, match="sha256"):
        PreparedSource.open(copy, verify=True)
    tokens.write_bytes(bytes(raw[:-2]))
    with pytest.raises(EttinError, match="bytes, the manifest says"):
        PreparedSource.open(copy)


def test_other_tokenizer_is_refused(tmp_path, data_dir, corpus_dir, modernbert_tokenizer_dir):
    with pytest.raises(EttinError, match="different tokenizer"):
        PreparedSource.open(data_dir / "wiki", tokenizer_fingerprint=tokenizer_fingerprint(modernbert_tokenizer_dir))
    import shutil

    out = tmp_path / "data"
    shutil.copytree(data_dir, out)
    with pytest.raises(EttinError, match="another tokenizer"):
        prepare([f"new=text:{corpus_dir / 'plays'}"], modernbert_tokenizer_dir, out)
    assert not (out / "new").exists() and not (out / ".new.partial").exists()


def test_empty_corpus_leaves_nothing(tmp_path, small_tokenizer_dir):
    (tmp_path / "blank.txt").write_text("  \n\n ")
    out = tmp_path / "out"
    with pytest.raises(EttinError, match="no text"):
        prepare([f"text:{tmp_path / 'blank.txt'}"], small_tokenizer_dir, out)
    assert not out.exists()


def test_skip_mode_records_bad_input(tmp_path, small_tokenizer_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine words here"}\n{oops\n{"text": "caf\xe9 au lait"}\n')
    from ettin.data.sources import SourceSpec

    (result,) = prepare([SourceSpec("jsonl", str(bad), on_error="skip")], small_tokenizer_dir, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "bad" / "manifest.json").read_text())["report"]
    assert report["bad_lines"] == 1 and report["bad_utf8_bytes"] == 1 and result.documents == 2
    assert report["bad_line_refs"] == ["bad.jsonl:2"]
    assert np.asarray(PreparedSource.open(tmp_path / "out" / "bad").doc_lengths).min() > 0
