"""Cutting documents into training chunks (pure functions of document lengths).

Chunking happens when a phase's stream opens, not at prepare time, because the length depends on the
phase (1024 in pretraining, up to 8000 later) while the prepared tokens do not. A document of n tokens
gives chunks of at most `max_tokens`; a short last piece is back-filled from the text before it (the
final chunk is the last `max_tokens` tokens, overlapping its neighbour) instead of being padded;
documents (or, without back-fill, last pieces) under `min_tokens` are dropped.
"""

from __future__ import annotations

import numpy as np

from ettin.errors import EttinError

DEFAULT_MIN_TOKENS = 128


def default_min_tokens(seq_len: int) -> int:
    """Ettin drops pieces under 128 tokens at length 1024; short demo lengths scale that down so a
    corpus of short documents (wiki summaries) is not dropped whole."""
    return max(1, min(DEFAULT_MIN_TOKENS, seq_len // 8))


def check_chunking(max_tokens: int, min_tokens: int) -> None:
    if max_tokens < 1:
        raise EttinError(
            f"chunks must hold at least one token, got {max_tokens}", field="seq_len", fix="use seq_len >= 3"
        )
    if not 1 <= min_tokens <= max_tokens:
        raise EttinError(
            f"min_tokens {min_tokens} must lie in 1..{max_tokens} (the content of one chunk)",
            field="min_tokens",
            fix="lower min_tokens or raise seq_len",
        )


def chunk_document(length: int, max_tokens: int, min_tokens: int, backfill: bool = True) -> list[tuple[int, int]]:
    """(start, end) token spans of one document; the reference the vectorised version is tested against."""
    check_chunking(max_tokens, min_tokens)
    if length < min_tokens:
        return []
    if length <= max_tokens:
        return [(0, length)]
    spans = [(s, s + max_tokens) for s in range(0, length - max_tokens + 1, max_tokens)]
    tail = length - spans[-1][1]
    if tail:
        if backfill:
            spans.append((length - max_tokens, length))
        elif tail >= min_tokens:
            spans.append((length - tail, length))
    return spans


def chunk_spans(
    doc_lengths: np.ndarray, max_tokens: int, min_tokens: int, backfill: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All chunks of a corpus as arrays (doc index, start, end), documents in order, chunks in order."""
    check_chunking(max_tokens, min_tokens)
    n = np.asarray(doc_lengths, dtype=np.int64)
    full = n // max_tokens
    tail = n % max_tokens
    long = n > max_tokens
    keep_tail = long & (tail > 0) & (backfill | (tail >= min_tokens))
    counts = np.where(n < min_tokens, 0, np.where(long, full + keep_tail, 1))
    total = int(counts.sum())
    doc = np.repeat(np.arange(len(n), dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    j = np.arange(total, dtype=np.int64) - np.repeat(first, counts)
    length = n[doc]
    start = j * max_tokens
    end = np.minimum(start + max_tokens, length)
    is_tail = long[doc] & (j == full[doc])
    if backfill:
        start = np.where(is_tail, length - max_tokens, start)
        end = np.where(is_tail, length, end)
    return doc, start, end
