"""The only arch-specific step of the data path: shared samples -> model inputs and labels.

`make_inputs(samples, objective, ...)` is a pure function of the samples and (seed, step): the same
call gives the same batch on any machine, and a sequence's masking depends only on (seed, step, its
index in the global batch), never on how the batch is split into micro-batches or across ranks.
That is done with a counter-based hash (splitmix64 over seed, step, sequence index, position) instead
of a stateful generator, which also makes it vectorised: one pass over the flat batch.

Objectives:
- "mlm" (encoder): `[SEP]` appended when the sample does not end with it; a `mask_rate` share of the
  non-special tokens is chosen; of those 80% become `[MASK]`, 10% a random non-special id, 10% stay;
  labels only at chosen positions.
- "clm" (decoder): labels[t] = input_ids[t + 1] inside a sequence, -100 at each sequence's last token.
- "mntp" (decoder -> encoder, as in LLM2Vec): inputs masked as in "mlm" (bidirectional attention),
  but the label of a masked position i sits at i - 1.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ettin.errors import EttinError
from ettin.hashing import sequence_keys, uniform

OBJECTIVES = ("mlm", "clm", "mntp")
IGNORE_INDEX = -100


@dataclass
class Batch:
    """A varlen batch: sequences concatenated, no padding; `cu_seqlens` marks where each begins."""

    input_ids: torch.Tensor  # int64 [N]
    cu_seqlens: torch.Tensor  # int32 [B + 1]
    max_seqlen: int
    labels: torch.Tensor  # int64 [N], -100 = no loss
    num_label_tokens: int

    @property
    def num_sequences(self) -> int:
        return len(self.cu_seqlens) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def __len__(self) -> int:
        return self.num_sequences

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.cu_seqlens.to(device, non_blocking=non_blocking),
            self.max_seqlen,
            self.labels.to(device, non_blocking=non_blocking),
            self.num_label_tokens,
        )


@functools.lru_cache(maxsize=8)
def _replacement_ids(vocab_size: int, specials: tuple[int, ...]) -> np.ndarray:
    ids = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.asarray(specials, np.int64))
    if not len(ids):
        raise EttinError(f"no non-special ids below vocab_size {vocab_size}", field="vocab_size")
    return ids


def _special_set(special_ids: dict) -> tuple[int, ...]:
    return tuple(sorted({int(v) for v in special_ids.values() if v is not None}))


def _need(special_ids: dict, key: str) -> int:
    value = special_ids.get(key)
    if value is None:
        raise EttinError(f"the tokenizer has no {key}", field=key, fix="use a tokenizer with [CLS] [SEP] [MASK] tokens")
    return int(value)


def make_inputs(
    samples: Sequence,
    objective: str,
    *,
    special_ids: dict,
    vocab_size: int,
    mask_rate: float = 0.3,
    seed: int = 0,
    step: int = 0,
    first_index: int = 0,
) -> Batch:
    """Model inputs for `objective` from shared samples (`Sample`s or int arrays).

    `first_index` is the global-batch index of `samples[0]`: pass it when building a micro-batch or a
    rank's share directly, so its masking equals that of the same sequences in the full batch.
    Random replacement tokens are drawn from [0, vocab_size) minus the special ids.
    """
    if objective not in OBJECTIVES:
        raise EttinError(
            f"unknown objective '{objective}'", field="objective", fix=f"use one of {', '.join(OBJECTIVES)}"
        )
    if not samples:
        raise EttinError("cannot make a batch of no samples")
    seqs = [np.asarray(getattr(s, "input_ids", s)) for s in samples]
    if objective in ("mlm", "mntp"):
        sep = _need(special_ids, "sep_token_id")
        seqs = [s if len(s) and s[-1] == sep else np.append(s, sep) for s in seqs]
    lengths = np.fromiter((len(s) for s in seqs), np.int64, count=len(seqs))
    if (lengths == 0).any():
        raise EttinError("a sample has no tokens")
    cu = np.zeros(len(seqs) + 1, np.int64)
    np.cumsum(lengths, out=cu[1:])
    ids = np.concatenate(seqs).astype(np.int64)
    n = len(ids)
    if objective == "clm":
        labels = np.empty(n, np.int64)
        labels[:-1] = ids[1:]
        labels[cu[1:] - 1] = IGNORE_INDEX
    else:
        if not 0.0 <= mask_rate < 1.0:
            raise EttinError(f"mask_rate {mask_rate} is not in [0, 1)", field="mask_rate")
        mask_id = _need(special_ids, "mask_token_id")
        specials = _special_set(special_ids)
        seq_of = np.repeat(np.arange(len(seqs), dtype=np.int64), lengths)
        pos = np.arange(n, dtype=np.int64) - cu[:-1][seq_of]
        keys = sequence_keys(seed, step, np.arange(first_index, first_index + len(seqs)))[seq_of]
        chosen = (uniform(keys, pos, 0) < mask_rate) & ~np.isin(ids, specials)
        if objective == "mntp":
            chosen &= pos > 0
        where = np.flatnonzero(chosen)
        original = ids[where]
        action = uniform(keys[where], pos[where], 1)
        replace = _replacement_ids(int(vocab_size), specials)
        random_ids = replace[(uniform(keys[where], pos[where], 2) * len(replace)).astype(np.int64)]
        ids[where] = np.where(action < 0.8, mask_id, np.where(action < 0.9, random_ids, original))
        labels = np.full(n, IGNORE_INDEX, np.int64)
        labels[where - 1 if objective == "mntp" else where] = original
    num_labels = int((labels != IGNORE_INDEX).sum())
    return Batch(
        torch.from_numpy(ids),
        torch.from_numpy(cu.astype(np.int32)),
        int(lengths.max()),
        torch.from_numpy(labels),
        num_labels,
    )
