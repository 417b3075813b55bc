"""Chunking as the original Ettin data processing: pieces of max_tokens, the first always kept, later
short pieces skipped or back-filled by moving (no token twice) or copying (named option)."""

import itertools
from collections import Counter

import numpy as np
import pytest

from ettin.data.chunking import (
    BACKFILL_MODES,
    chunk_document,
    chunk_spans,
    default_backfill_below,
    default_min_tokens,
    move_amount,
)
from ettin.errors import EttinError

MAX, MIN, BELOW = 10, 3, 6  # a small model of (1022, 128, 512)


def counts(spans) -> Counter:
    return Counter(t for s, e in spans for t in range(s, e))


def test_piece_lengths_follow_the_rule():
    assert chunk_document(0, MAX, MIN, "move", BELOW) == []
    assert chunk_document(1, MAX, MIN, "move", BELOW) == [(0, 1)]  # a 1-token document is kept
    assert chunk_document(2, MAX, MIN, "none", BELOW) == [(0, 2)]  # the first piece is kept in every mode
    assert chunk_document(10, MAX, MIN, "move", BELOW) == [(0, 10)]
    assert chunk_document(20, MAX, MIN, "move", BELOW) == [(0, 10), (10, 20)]
    assert chunk_document(22, MAX, MIN, "move", BELOW) == [(0, 10), (10, 20)]  # a later piece of 2 < 3 skipped
    assert chunk_document(26, MAX, MIN, "move", BELOW) == [(0, 10), (10, 20), (20, 26)]  # 6 >= BELOW: as is
    r = move_amount(0, 24, 4, MAX)
    assert 0 <= r <= MAX - 4 - 1
    assert chunk_document(24, MAX, MIN, "move", BELOW) == [(0, 10), (10, 20 - r), (20 - r, 24)]
    assert chunk_document(24, MAX, MIN, "copy", BELOW) == [(0, 10), (10, 20), (14, 24)]
    assert chunk_document(24, MAX, MIN, "none", BELOW) == [(0, 10), (10, 20)]


@pytest.mark.parametrize("mode", BACKFILL_MODES)
@pytest.mark.parametrize("max_tokens,min_tokens,below", [(10, 3, 6), (8, 1, 8), (7, 7, 7), (1, 1, 1), (12, 2, 2)])
def test_every_length_exhaustively(mode, max_tokens, min_tokens, below):
    for n, doc in itertools.product(range(0, 6 * max_tokens + 3), range(3)):
        spans = chunk_document(n, max_tokens, min_tokens, mode, below, doc=doc)
        seen = counts(spans)
        # spans lie in the document, in order, each of 1..max_tokens tokens
        assert all(0 <= s < e <= n and e - s <= max_tokens for s, e in spans)
        assert [s for s, _ in spans] == sorted(s for s, _ in spans)
        pieces = -(-n // max_tokens)
        tail = n - (pieces - 1) * max_tokens if n else 0
        skipped = pieces > 1 and tail < below and (tail < min_tokens or mode == "none")
        # every token once, except a skipped last piece (and, with copy, its back-filled copy)
        if mode == "copy" and pieces > 1 and min_tokens <= tail < below:
            assert set(seen) == set(range(n))
            assert sum(seen.values()) == n + max_tokens - tail
            assert spans[-1] == (n - max_tokens, n)
        else:
            expect = set(range(n - tail if skipped else n))
            assert set(seen) == expect and all(c == 1 for c in seen.values()), (n, spans)
        # the first piece is always there; later pieces are never under min_tokens
        assert (len(spans) >= 1) == (n >= 1)
        assert all(e - s >= min_tokens for s, e in spans[1:])
        assert len(spans) == pieces - skipped


def test_move_keeps_both_pieces_in_bounds_and_spreads_the_amount():
    # the moved amount is uniform over 0 .. max - tail - 1, like the original's np.random.randint
    amounts = [move_amount(d, 1022 + 200, 200, 1022) for d in range(20_000)]
    assert min(amounts) == 0 and max(amounts) == 1022 - 200 - 1
    assert abs(np.mean(amounts) - (1022 - 200 - 1) / 2) < 10
    for n in (1022 + 128, 1022 + 300, 5 * 1022 + 511):
        spans = chunk_document(n, 1022, 128, "move", 512, doc=7)
        assert all(e - s <= 1022 for s, e in spans) and spans[-1][1] == n
        assert sum(e - s for s, e in spans) == n


def test_short_documents_are_kept():
    lengths = np.array([1, 5, 127, 128, 1022, 1023, 1022 + 127, 1022 + 128])
    doc, start, end = chunk_spans(lengths, 1022, 128, "move", 512)
    assert set(doc.tolist()) == set(range(len(lengths)))  # every document gives a chunk
    kept = np.bincount(doc, weights=end - start, minlength=len(lengths)).astype(int)
    assert kept.tolist() == [1, 5, 127, 128, 1022, 1022, 1022, 1022 + 128]  # 1 and 127 tokens skipped tails


@pytest.mark.parametrize("mode", BACKFILL_MODES)
def test_vectorised_matches_reference(mode):
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 60, size=600)
    for max_tokens, min_tokens, below in [(8, 3, 5), (1, 1, 1), (16, 16, 16), (49, 2, 30), (10, 3, None)]:
        doc, start, end = chunk_spans(lengths, max_tokens, min_tokens, mode, below)
        expected = [
            (d, s, e)
            for d, n in enumerate(lengths)
            for s, e in chunk_document(int(n), max_tokens, min_tokens, mode, below, doc=d)
        ]
        assert list(zip(doc.tolist(), start.tolist(), end.tolist())) == expected


def test_validation_and_defaults():
    with pytest.raises(EttinError, match="field 'data.min_tokens'.*min_tokens 9 must lie in 1..8"):
        chunk_spans(np.array([5]), 8, 9)
    with pytest.raises(EttinError, match="min_tokens"):
        chunk_document(5, 8, 0)
    with pytest.raises(EttinError, match="field 'data.backfill_below'"):
        chunk_document(5, 8, 3, "move", 9)
    with pytest.raises(EttinError, match="field 'data.backfill'.*unknown back-fill mode 'yes'"):
        chunk_document(5, 8, 3, "yes", 4)
    assert default_min_tokens(1024) == 128 and default_min_tokens(128) == 16 and default_min_tokens(4) == 1
    assert default_backfill_below(1024, 128) == 512 and default_backfill_below(7999, 128) == 512
    assert default_backfill_below(128, 16) == 64 and default_backfill_below(8, 7) == 7
