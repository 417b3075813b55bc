"""Small real corpora for the data tests: slices of the built-in wiki and Shakespeare texts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from ettin.data.sources import builtin_texts


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """wiki.jsonl (300 summaries) and plays/ (6 acts, as text files)."""
    root = tmp_path_factory.mktemp("corpus")
    with open(root / "wiki.jsonl", "w", encoding="utf-8") as f:
        for text in itertools.islice(builtin_texts("wiki"), 300):
            f.write(json.dumps({"text": text, "id": len(text)}) + "\n")
    plays = root / "plays"
    plays.mkdir()
    for i, text in enumerate(itertools.islice(builtin_texts("shakespeare"), 6)):
        (plays / f"act{i}.txt").write_text(text[:5000], encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, corpus_dir, small_tokenizer_dir) -> Path:
    """The corpus prepared with the shared small tokenizer, several shards per source. Read-only."""
    from ettin.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(
        [f"wiki=jsonl:{corpus_dir / 'wiki.jsonl'}", f"plays=text:{corpus_dir / 'plays'}"],
        small_tokenizer_dir,
        out,
        shard_tokens=20000,
    )
    return out
