"""The per-phase token stream both members of a pair consume: deterministic, resumable, arch-blind.

Order: each source's chunks are visited in a fresh seeded permutation per epoch (seeded by the run
seed, the source name and the epoch); sources are interleaved by "who is furthest behind its share
of tokens", so the realised token shares track the target within one sample at every point. The
whole position is a few integers per source (`state_dict()`), so a checkpoint stores it and
`load_state_dict` continues with exactly the next sample.

A shared sample is `[CLS] + chunk` plus `[SEP]` when the chunk ends its document; chunks hold at most
`seq_len - 2` tokens so that the encoder's `[SEP]` (added in `make_inputs`) still fits `seq_len`.

    stream = TokenStream(spec, seed=21, seq_len=1024)            # spec: DataSpec or its dict
    samples = stream.next_batch(batch_size_sequences=4608)      # or batch_size_tokens=...
    state = stream.state_dict(); stream.load_state_dict(state)

`PhaseBatches` adds batch-size warmup (`ettin.train.schedule.batch_size_at`) on top; the trainer and
the data-order regeneration both use it so that they agree by construction.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ettin.data.chunking import chunk_spans, default_backfill_below, default_min_tokens
from ettin.data.mixture import DataSpec
from ettin.data.shards import PreparedSource
from ettin.errors import EttinError

STATE_VERSION = 2  # 2: chunking as the original (first piece kept, back-fill by moving)


@dataclass
class Sample:
    """One shared training sequence and where it came from."""

    input_ids: np.ndarray  # int32: [CLS] + chunk (+ [SEP] at a document's end)
    source: str
    doc: int  # document index within the prepared source
    offset: int  # token offset of the chunk within the document

    def __len__(self) -> int:
        return len(self.input_ids)


class _SourceOrder:
    def __init__(
        self,
        name: str,
        source: PreparedSource,
        seed: int,
        max_tokens: int,
        min_tokens: int,
        backfill: str,
        backfill_below: int,
    ):
        self.name = name
        self.source = source
        self.seed = seed
        self.doc, self.start, self.end = chunk_spans(
            source.doc_lengths, max_tokens, min_tokens, backfill, backfill_below
        )
        if not len(self.doc):
            raise EttinError(
                f"source '{name}' holds no tokens (every document is empty)",
                path=source.folder,
                field="data.mixture",
                fix="prepare the source from non-empty documents, or drop it from the mixture",
            )
        self.sample_tokens = (self.end - self.start) + 1 + (self.end == source.doc_lengths[self.doc])
        self._epoch = -1
        self._perm: np.ndarray | None = None

    @property
    def num_chunks(self) -> int:
        return len(self.doc)

    def chunk_at(self, position: int) -> int:
        epoch, i = divmod(position, self.num_chunks)
        if epoch != self._epoch:
            key = [self.seed & 0xFFFFFFFF, self.seed >> 32 & 0xFFFFFFFF, zlib.crc32(self.name.encode()), epoch]
            self._perm = np.random.default_rng(key).permutation(self.num_chunks)
            self._epoch = epoch
        return int(self._perm[i])


class TokenStream:
    """Samples of one phase; see the module docstring."""

    def __init__(
        self,
        spec: DataSpec | dict,
        data_dir: str | Path | None = None,
        *,
        seed: int,
        seq_len: int,
        verify: bool = False,
        tokenizer_fingerprint: str | None = None,
    ):
        self.spec = DataSpec.from_dict(spec)
        self.data_dir = Path(data_dir if data_dir is not None else self.spec.dir)
        if seq_len < 3:
            raise EttinError(f"seq_len {seq_len} leaves no room for text between [CLS] and [SEP]", field="seq_len")
        self.seed = int(seed)
        self.seq_len = int(seq_len)
        self.max_tokens = self.seq_len - 2
        self.min_tokens = self.spec.min_tokens if self.spec.min_tokens is not None else default_min_tokens(self.seq_len)
        if self.min_tokens > self.max_tokens:
            raise EttinError(
                f"min_tokens {self.min_tokens} exceeds the {self.max_tokens} tokens a chunk can hold at seq_len {self.seq_len}",
                field="data.min_tokens",
                fix="lower min_tokens or raise seq_len",
            )
        self.backfill_below = (
            self.spec.backfill_below
            if self.spec.backfill_below is not None
            else default_backfill_below(self.seq_len, self.min_tokens)
        )
        if not self.min_tokens <= self.backfill_below <= self.max_tokens:
            raise EttinError(
                f"backfill_below {self.backfill_below} must lie in {self.min_tokens}..{self.max_tokens} "
                f"(min_tokens .. the tokens a chunk holds at seq_len {self.seq_len})",
                field="data.backfill_below",
                fix="lower backfill_below or raise seq_len",
            )
        opened = [
            PreparedSource.open(self.data_dir / name, verify=verify, tokenizer_fingerprint=tokenizer_fingerprint)
            for name in self.spec.sources
        ]
        fps = {s.manifest["tokenizer"]["fingerprint"] for s in opened}
        if len(fps) > 1:
            raise EttinError(
                "the mixture's sources were prepared with different tokenizers",
                path=self.data_dir,
                field="data.mixture",
                fix="prepare every source with the same tokenizer",
            )
        self.tokenizer_fingerprint = fps.pop()
        self.special_ids = dict(opened[0].manifest["tokenizer"]["special_ids"])
        self.cls_id = self.special_ids.get("cls_token_id")
        self.sep_id = self.special_ids.get("sep_token_id")
        if self.cls_id is None or self.sep_id is None:
            raise EttinError("the tokenizer the data was prepared with has no [CLS] or [SEP]", path=self.data_dir)
        self.vocab_size = int(opened[0].manifest["tokenizer"]["vocab_size"])
        self._orders = [
            _SourceOrder(
                name, src, self.seed, self.max_tokens, self.min_tokens, self.spec.backfill, self.backfill_below
            )
            for name, src in zip(self.spec.sources, opened)
        ]
        self._shares = np.asarray(self.spec.shares())
        self.fingerprint = self._fingerprint(opened)
        self._positions = np.zeros(len(self._orders), np.int64)
        self._tokens = np.zeros(len(self._orders), np.int64)
        self._samples = 0
        self._peeked: tuple[int, Sample] | None = None

    def _fingerprint(self, opened: list[PreparedSource]) -> str:
        blob = {
            "version": STATE_VERSION,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "min_tokens": self.min_tokens,
            "backfill": self.spec.backfill,
            "backfill_below": self.backfill_below,
            "mixture": [e.to_dict() for e in self.spec.mixture],
            "data": [s.manifest["key"] for s in opened],
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    # ------------------------------------------------------------------ sampling

    def _next_source(self) -> int:
        return int(np.argmin(self._tokens / self._shares))

    def _make(self, s: int) -> Sample:
        order = self._orders[s]
        c = order.chunk_at(int(self._positions[s]))
        doc, start, end = int(order.doc[c]), int(order.start[c]), int(order.end[c])
        body = order.source.document_tokens(doc, start, end)
        ends_doc = end == int(order.source.doc_lengths[doc])
        ids = np.empty(len(body) + 1 + ends_doc, np.int32)
        ids[0] = self.cls_id
        ids[1 : 1 + len(body)] = body
        if ends_doc:
            ids[-1] = self.sep_id
        return Sample(ids, order.name, doc, start)

    def peek(self) -> Sample:
        """The sample `next_sample` will return, without taking it."""
        if self._peeked is None:
            s = self._next_source()
            self._peeked = (s, self._make(s))
        return self._peeked[1]

    def next_sample(self) -> Sample:
        sample = self.peek()
        s = self._peeked[0]
        self._positions[s] += 1
        self._tokens[s] += len(sample)
        self._samples += 1
        self._peeked = None
        return sample

    def next_batch(self, batch_size_sequences: int | None = None, batch_size_tokens: int | None = None) -> list[Sample]:
        """The next global batch: a number of sequences, or as many as fit a token budget (at least one)."""
        if (batch_size_sequences is None) == (batch_size_tokens is None):
            raise EttinError("give exactly one of batch_size_sequences or batch_size_tokens", field="batch_size")
        if batch_size_sequences is not None:
            if batch_size_sequences < 1:
                raise EttinError(f"batch size {batch_size_sequences} is not positive", field="batch_size")
            return [self.next_sample() for _ in range(batch_size_sequences)]
        if batch_size_tokens < 1:
            raise EttinError(f"batch size {batch_size_tokens} tokens is not positive", field="batch_tokens")
        batch = [self.next_sample()]
        total = len(batch[0])
        while total + len(self.peek()) <= batch_size_tokens:
            batch.append(self.next_sample())
            total += len(batch[-1])
        return batch

    # ------------------------------------------------------------------ state

    @property
    def samples_seen(self) -> int:
        return self._samples

    @property
    def tokens_seen(self) -> int:
        return int(self._tokens.sum())

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "samples": self._samples,
            "positions": {o.name: int(p) for o, p in zip(self._orders, self._positions)},
            "tokens": {o.name: int(t) for o, t in zip(self._orders, self._tokens)},
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise EttinError(
                "not a data-stream state of this version", field="data_state", fix="resume with the same ettin version"
            )
        if state.get("fingerprint") != self.fingerprint:
            raise EttinError(
                "the saved data position belongs to other data (seed, seq_len, mixture or prepared sources differ)",
                field="data_state",
                fix="resume with the data and recipe the run started with",
            )
        self._positions = np.asarray([state["positions"][o.name] for o in self._orders], np.int64)
        self._tokens = np.asarray([state["tokens"][o.name] for o in self._orders], np.int64)
        self._samples = int(state["samples"])
        self._peeked = None

    # ------------------------------------------------------------------ report

    def mixture_report(self) -> list[dict]:
        """Target and realised share of tokens per source so far, with epochs used."""
        total = max(int(self._tokens.sum()), 1)
        budgets = self.spec.budgets
        rows = []
        for order, share, pos, tok in zip(self._orders, self._shares, self._positions, self._tokens):
            rows.append(
                {
                    "source": order.name,
                    "target_share": float(share),
                    "realised_share": float(tok) / total,
                    "samples": int(pos),
                    "tokens": int(tok),
                    "budget_tokens": budgets[order.name] if budgets else None,
                    "epochs": float(pos) / order.num_chunks,
                    "chunks": order.num_chunks,
                    "source_tokens": order.source.num_tokens,
                    "epoch_tokens": int(order.sample_tokens.sum()),
                }
            )
        return rows

    def planned_epochs(self, total_tokens: int) -> dict[str, float]:
        """How many times each source would be seen over `total_tokens` tokens (> 1 means repetition)."""
        return {
            o.name: total_tokens * float(share) / max(int(o.sample_tokens.sum()), 1)
            for o, share in zip(self._orders, self._shares)
        }


class PhaseBatches:
    """Global batches of one phase with batch-size warmup: the one place that decides what a step gets.

    `batch_size` (sequences) or `batch_tokens` is the full size; during the first `warmup_tokens`
    tokens (counted over shared samples, the same for both archs, starting from `tokens_seen`) the size
    grows from `warmup_start` (the recipe's `batch_warmup_min`, never the micro-batch) in the
    `warmup_shape` of `ettin.train.schedule.batch_size_at`: `steps` (ModernBERT's) or `linear`.
    """

    def __init__(
        self,
        stream: TokenStream,
        *,
        batch_size: int | None = None,
        batch_tokens: int | None = None,
        warmup_tokens: int = 0,
        warmup_start: int | None = None,
        warmup_shape: str = "steps",
        tokens_seen: int = 0,
    ):
        if (batch_size is None) == (batch_tokens is None):
            raise EttinError("give exactly one of batch_size or batch_tokens", field="batch_size")
        self.stream = stream
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.warmup_tokens = int(warmup_tokens)
        self.warmup_start = warmup_start or 1
        self.warmup_shape = warmup_shape
        self.tokens_seen = int(tokens_seen)

    def current_size(self) -> int:
        full = self.batch_size if self.batch_size is not None else self.batch_tokens
        from ettin.train.schedule import batch_size_at

        return batch_size_at(self.tokens_seen, self.warmup_tokens, self.warmup_start, full, self.warmup_shape)

    def next_batch(self) -> list[Sample]:
        size = self.current_size()
        if self.batch_size is not None:
            batch = self.stream.next_batch(batch_size_sequences=size)
        else:
            batch = self.stream.next_batch(batch_size_tokens=size)
        self.tokens_seen += sum(len(s) for s in batch)
        return batch

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.tokens_seen = int(state["tokens_seen"])
