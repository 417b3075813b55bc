import numpy as np
import pytest

from ettin.data.chunking import chunk_document, chunk_spans, default_min_tokens
from ettin.errors import EttinError


def test_chunk_document_cases():
    assert chunk_document(5, 10, 3) == [(0, 5)]
    assert chunk_document(2, 10, 3) == []  # a whole document under the minimum is dropped
    assert chunk_document(10, 10, 3) == [(0, 10)]
    assert chunk_document(20, 10, 3) == [(0, 10), (10, 20)]
    assert chunk_document(23, 10, 3) == [(0, 10), (10, 20), (13, 23)]  # short tail back-filled to full length
    assert chunk_document(23, 10, 3, backfill=False) == [(0, 10), (10, 20), (20, 23)]
    assert chunk_document(22, 10, 3, backfill=False) == [(0, 10), (10, 20)]  # tail under the minimum dropped


def test_chunks_cover_every_token_and_respect_limits():
    for n in range(0, 60):
        for backfill in (True, False):
            spans = chunk_document(n, 8, 3, backfill)
            assert all(0 <= s < e <= n and e - s <= 8 for s, e in spans)
            if backfill and n >= 3:
                covered = set().union(*(range(s, e) for s, e in spans))
                assert covered == set(range(n))
                assert all(e - s == 8 for s, e in spans) or n <= 8


def test_vectorised_matches_reference():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 50, size=500)
    for max_tokens, min_tokens, backfill in [(8, 3, True), (8, 3, False), (1, 1, True), (16, 16, False), (49, 2, True)]:
        doc, start, end = chunk_spans(lengths, max_tokens, min_tokens, backfill)
        expected = [
            (d, s, e)
            for d, n in enumerate(lengths)
            for s, e in chunk_document(int(n), max_tokens, min_tokens, backfill)
        ]
        assert list(zip(doc.tolist(), start.tolist(), end.tolist())) == expected


def test_validation_and_default_minimum():
    with pytest.raises(EttinError, match="min_tokens"):
        chunk_spans(np.array([5]), 8, 9)
    with pytest.raises(EttinError, match="min_tokens"):
        chunk_document(5, 8, 0)
    assert default_min_tokens(1024) == 128 and default_min_tokens(128) == 16 and default_min_tokens(4) == 1
