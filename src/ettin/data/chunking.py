"""Cutting documents into training chunks (pure functions of document lengths).

Chunking happens when a phase's stream opens, not at prepare time, because the length depends on the
phase (1024 in pretraining, up to 8000 later) while the prepared tokens do not. The rule is the
original's (the Ettin repository's `split_dataset_into_chunks*.py`, run with `-c 1024 -m 512 -a 128
--backfill --backfill_no_duplicates`):

- a document is cut into pieces of `max_tokens` (= seq_len - 2, room for [CLS] and [SEP]); only the
  last piece can be shorter;
- the first piece of a document is always kept, however short (a 5-token document is one chunk);
- a later piece shorter than `min_tokens` (128) is skipped;
- a later piece shorter than `backfill_below` (512) is back-filled, by mode:
  - `move` (the original's no-duplicates back-fill, the default): a number of tokens, drawn uniformly
    from 0 .. max_tokens - len - 1, is *moved* from the end of the previous piece to the front of
    this one, so both stay within `max_tokens` and no token is in two chunks: every token of a
    document is trained exactly once per epoch, except a skipped last piece;
  - `copy` (the original's back-fill with duplicates, which its script refuses to run): the piece
    is extended to `max_tokens` with a copy of the tokens before it (they are seen twice per epoch);
  - `none` (the original without `--backfill`): the piece is skipped.

The original draws the moved amount from numpy's global generator (seed 42, in file order). Here it
is drawn from a hash of the document's index and length, so that chunking is a pure function of the
lengths and identical in every run and process; the distribution is the same.
"""

from __future__ import annotations

import numpy as np

from ettin.errors import EttinError

DEFAULT_MIN_TOKENS = 128  # the original's -a (always skip a later piece under this)
DEFAULT_BACKFILL_BELOW = 512  # the original's -m (back-fill a later piece under this)
BACKFILL_MODES = ("move", "copy", "none")


def default_min_tokens(seq_len: int) -> int:
    """128 at seq_len 1024 and above; short demo lengths scale it down (seq_len // 8) so that a later
    piece of a short-context phase is judged by the same fraction of a chunk."""
    return max(1, min(DEFAULT_MIN_TOKENS, seq_len // 8))


def default_backfill_below(seq_len: int, min_tokens: int) -> int:
    """512 at seq_len 1024 and above (half a chunk below that), never under `min_tokens`."""
    return max(min_tokens, min(DEFAULT_BACKFILL_BELOW, seq_len // 2))


def check_chunking(max_tokens: int, min_tokens: int, backfill: str = "move", backfill_below: int | None = None) -> None:
    if max_tokens < 1:
        raise EttinError(
            f"chunks must hold at least one token, got {max_tokens}", field="seq_len", fix="use seq_len >= 3"
        )
    if not 1 <= min_tokens <= max_tokens:
        raise EttinError(
            f"min_tokens {min_tokens} must lie in 1..{max_tokens} (the content of one chunk)",
            field="data.min_tokens",
            fix="lower min_tokens or raise seq_len",
        )
    if backfill not in BACKFILL_MODES:
        raise EttinError(
            f"unknown back-fill mode {backfill!r}",
            field="data.backfill",
            fix=f"use one of: {', '.join(BACKFILL_MODES)}",
        )
    if backfill_below is not None and not min_tokens <= backfill_below <= max_tokens:
        raise EttinError(
            f"backfill_below {backfill_below} must lie in {min_tokens}..{max_tokens} (min_tokens .. the content of one chunk)",
            field="data.backfill_below",
            fix="lower backfill_below or raise seq_len",
        )


def move_amount(doc: np.ndarray | int, length: np.ndarray | int, tail: np.ndarray | int, max_tokens: int):
    """Tokens moved into a short last piece of `tail` tokens: uniform in 0 .. max_tokens - tail - 1,
    from a splitmix64 hash of (document index, document length)."""
    with np.errstate(over="ignore"):
        x = np.asarray(doc, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.asarray(length, dtype=np.uint64)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    room = np.maximum(np.asarray(max_tokens - np.asarray(tail), dtype=np.int64), 1).astype(np.uint64)
    out = (x % room).astype(np.int64)
    return int(out) if out.ndim == 0 else out


def chunk_document(
    length: int,
    max_tokens: int,
    min_tokens: int,
    backfill: str = "move",
    backfill_below: int | None = None,
    doc: int = 0,
) -> list[tuple[int, int]]:
    """(start, end) token spans of document number `doc`; the reference the vectorised version is
    tested against, written as the original's loop over pieces. `backfill_below` None: no piece is
    back-filled (only the skip under `min_tokens` applies); the stream passes `default_backfill_below`."""
    below = min_tokens if backfill_below is None else backfill_below
    check_chunking(max_tokens, min_tokens, backfill, below)
    spans: list[tuple[int, int]] = []
    for i, start in enumerate(range(0, length, max_tokens)):
        end = min(start + max_tokens, length)
        size = end - start
        if i == 0 or size >= below:
            spans.append((start, end))
        elif size < min_tokens or backfill == "none":
            continue  # skipped
        elif backfill == "copy":
            spans.append((end - max_tokens, end))
        else:
            r = move_amount(doc, length, size, max_tokens)
            prev_start, _ = spans[-1]
            spans[-1] = (prev_start, start - r)
            spans.append((start - r, end))
    return spans


def chunk_spans(
    doc_lengths: np.ndarray,
    max_tokens: int,
    min_tokens: int,
    backfill: str = "move",
    backfill_below: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All chunks of a corpus as arrays (doc index, start, end), documents in order, chunks in order."""
    below = min_tokens if backfill_below is None else backfill_below
    check_chunking(max_tokens, min_tokens, backfill, below)
    n = np.asarray(doc_lengths, dtype=np.int64)
    pieces = -(-n // max_tokens)  # ceil; 0 for an empty document
    tail = n - (pieces - 1) * max_tokens  # length of the last piece (when pieces >= 1)
    later_short = (pieces > 1) & (tail < below)
    dropped = later_short & ((tail < min_tokens) | (backfill == "none"))
    counts = pieces - dropped
    total = int(counts.sum())
    doc = np.repeat(np.arange(len(n), dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    j = np.arange(total, dtype=np.int64) - np.repeat(first, counts)
    length = n[doc]
    start = j * max_tokens
    end = np.minimum(start + max_tokens, length)
    filled = (later_short & ~dropped)[doc]
    last_piece = j == (pieces[doc] - 1)
    if backfill == "copy":
        start = np.where(filled & last_piece, end - max_tokens, start)
    elif backfill == "move":
        r = move_amount(doc, length, tail[doc], max_tokens)
        start = np.where(filled & last_piece, start - r, start)
        end = np.where(filled & (j == pieces[doc] - 2), end - r, end)
    return doc, start, end
