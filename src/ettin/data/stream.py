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

With `order: {sampler: bert24, ...}` (one source) the order is the original Ettin runs' instead
(`Bert24Order`): one sample per document (an MDS sample), in bert24's `DistributedSamplerPCG64DXSM`
order, shaped as its `NoStreamingDataset` does: [CLS] inserted when the sample does not start with
it (then cut to seq_len), when no [SEP] is anywhere in the sample it is cut to seq_len - 1 and
[SEP] appended, then cut to seq_len. A global batch of G sequences is rank 0's device batch of
G / world_size, then rank 1's, and so on.

With `order: {sampler: replay}` (one source prepared from a released batch-order folder with
`replay:`) each global batch is exactly the rows of the next recorded step (`ReplayOrder`),
whatever size the caller asks for.

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

REPLAY_STEPS_FILE = "replay-steps.npy"  # (step, rows) of a replayed order folder (ettin.data.order)


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


def bert24_indices(n: int, *, seed: int, epoch: int, world_size: int, shuffle: bool, drop_last: bool) -> np.ndarray:
    """The sample indices of one epoch, padded or cut to a multiple of world_size as the original's
    DistributedSampler does (rank r reads `[r::world_size]` of this)."""
    if shuffle:
        idx = np.random.Generator(np.random.PCG64DXSM(seed + epoch)).permutation(n)
    else:
        idx = np.arange(n)
    if drop_last:
        return idx[: (n // world_size) * world_size]
    total = -(-n // world_size) * world_size
    if total > n:
        idx = np.concatenate([idx, np.resize(idx, total - n)])
    return idx


def bert24_sample(raw: np.ndarray, seq_len: int, cls_id: int, sep_id: int) -> np.ndarray:
    """One sample as the original's NoStreamingDataset shapes it (ids given, specials as found)."""
    ids = np.asarray(raw, np.int32)
    if not len(ids) or ids[0] != cls_id:
        ids = np.insert(ids, 0, cls_id)[:seq_len]
    if not np.any(ids == sep_id):
        ids = np.append(ids[: seq_len - 1], np.int32(sep_id))
    return ids[:seq_len]


class Bert24Order:
    """Position in the bert24 order of one source: `pos` samples read by every rank so far."""

    def __init__(self, name: str, source: PreparedSource, spec, seq_len: int, cls_id: int, sep_id: int):
        from ettin.data.mds import FLAG_CLS, FLAG_SEP, load_flags

        self.name, self.source, self.spec = name, source, spec
        self.seq_len, self.cls_id, self.sep_id = seq_len, cls_id, sep_id
        self.flags = load_flags(source.folder, source.manifest)
        self._FLAG_CLS, self._FLAG_SEP = FLAG_CLS, FLAG_SEP
        n = source.num_documents
        w = spec.world_size
        self.per_rank = n // w if spec.drop_last else -(-n // w)
        if self.per_rank < 1:
            raise EttinError(
                f"source '{name}' has {n} samples, fewer than world_size {w}", path=source.folder, field="data.order"
            )
        lengths = source.doc_lengths + (self.flags & FLAG_CLS > 0) + (self.flags & FLAG_SEP > 0)
        self.sample_tokens = np.minimum(lengths + 2, seq_len)  # for reports; exact per sample in `sample`
        self._epoch = -1
        self._idx: np.ndarray | None = None

    @property
    def num_chunks(self) -> int:
        return self.source.num_documents

    def indices(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            s = self.spec
            self._idx = bert24_indices(
                self.source.num_documents,
                seed=s.shuffle_seed,
                epoch=epoch,
                world_size=s.world_size,
                shuffle=s.shuffle,
                drop_last=s.drop_last,
            )
            self._epoch = epoch
        return self._idx

    def sample(self, doc: int) -> Sample:
        body = np.asarray(self.source.document_tokens(doc), np.int32)
        f = int(self.flags[doc])
        head = [self.cls_id] if f & self._FLAG_CLS else []
        tail = [self.sep_id] if f & self._FLAG_SEP else []
        raw = np.concatenate([np.asarray(head, np.int32), body, np.asarray(tail, np.int32)])
        return Sample(bert24_sample(raw, self.seq_len, self.cls_id, self.sep_id), self.name, doc, 0)

    def device_batches(self, pos: int, size: int) -> tuple[list[list[int]], int]:
        """(per rank, the documents of its next device batch of `size`), and the new position."""
        w = self.spec.world_size
        if size > self.per_rank:
            raise EttinError(
                f"a device batch of {size} exceeds the {self.per_rank} samples each of {w} ranks reads per epoch",
                path=self.source.folder,
                field="batch_size",
                fix="lower the batch size or use more data",
            )
        epoch, local = divmod(pos, self.per_rank)
        if local + size > self.per_rank:
            if self.spec.drop_last:  # the loader drops the short last device batch of the epoch
                epoch, local = epoch + 1, 0
            else:
                size = self.per_rank - local
        idx = self.indices(epoch)
        ranks = [idx[r::w][local : local + size].tolist() for r in range(w)]
        return ranks, epoch * self.per_rank + local + size


class ReplayOrder:
    """Position in a replayed batch order (a prepared `replay:` source): `pos` recorded steps given out."""

    def __init__(self, name: str, source: PreparedSource, seq_len: int, cls_id: int, sep_id: int):
        from ettin.data.mds import FLAG_CLS, FLAG_SEP, load_flags

        info = source.manifest.get("replay")
        if not info:
            raise EttinError(
                f"source '{name}' is not a replay source",
                path=source.folder,
                field="data.order",
                fix="prepare the order folder with --source NAME=replay:FOLDER, or use another sampler",
            )
        self.name, self.source, self.seq_len = name, source, seq_len
        self.cls_id, self.sep_id = cls_id, sep_id
        self.flags = load_flags(source.folder, source.manifest)
        self._FLAG_CLS, self._FLAG_SEP = FLAG_CLS, FLAG_SEP
        path = source.folder / REPLAY_STEPS_FILE
        if not path.is_file():
            raise EttinError("the replay source has no step table", path=path, fix="prepare it again")
        table = np.load(path, allow_pickle=False)
        self.steps = table[:, 0]
        self.first_doc = np.concatenate([[0], np.cumsum(table[:, 1])]).astype(np.int64)
        lengths = source.doc_lengths + (self.flags & FLAG_CLS > 0) + (self.flags & FLAG_SEP > 0)
        self.sample_tokens = lengths
        if len(lengths) and int(lengths.max()) > seq_len:
            raise EttinError(
                f"replayed rows hold up to {int(lengths.max())} tokens, more than seq_len {seq_len}",
                path=source.folder,
                field="seq_len",
                fix="replay with the seq_len the order was recorded with",
            )

    @property
    def num_chunks(self) -> int:
        return self.source.num_documents

    def sample(self, doc: int) -> Sample:
        body = np.asarray(self.source.document_tokens(doc), np.int32)
        f = int(self.flags[doc])
        head = [self.cls_id] if f & self._FLAG_CLS else []
        tail = [self.sep_id] if f & self._FLAG_SEP else []
        ids = np.concatenate([np.asarray(head, np.int32), body, np.asarray(tail, np.int32)])
        return Sample(ids, self.name, doc, 0)

    def step_batch(self, pos: int) -> list[Sample]:
        if pos >= len(self.steps):
            raise EttinError(
                f"the replayed order has {len(self.steps)} step(s); the phase asks for more",
                path=self.source.folder,
                field="tokens",
                fix="shorten the phase (tokens) to the recorded steps",
            )
        return [self.sample(d) for d in range(int(self.first_doc[pos]), int(self.first_doc[pos + 1]))]


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
        self.bert24 = self.spec.order.sampler == "bert24"
        self.replay = self.spec.order.sampler == "replay"
        if self.replay:
            self._orders = [ReplayOrder(self.spec.sources[0], opened[0], self.seq_len, self.cls_id, self.sep_id)]
        elif self.bert24:
            self._orders = [
                Bert24Order(self.spec.sources[0], opened[0], self.spec.order, self.seq_len, self.cls_id, self.sep_id)
            ]
        else:
            self._orders = [
                _SourceOrder(
                    name, src, self.seed, self.max_tokens, self.min_tokens, self.spec.backfill, self.backfill_below
                )
                for name, src in zip(self.spec.sources, opened)
            ]
        self._buffer: list[Sample] = []
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
            **({"order": self.spec.order.to_dict()} if self.bert24 or self.replay else {}),
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

    def _bert24_batch(self, size: int) -> list[Sample]:
        order = self._orders[0]
        if self.replay:  # the recorded step decides its size
            batch = order.step_batch(int(self._positions[0]))
            self._positions[0] += 1
            self._tokens[0] += sum(len(s) for s in batch)
            self._samples += len(batch)
            return batch
        w = order.spec.world_size
        if size % w:
            raise EttinError(
                f"a global batch of {size} does not split over world_size {w}",
                field="batch_size",
                fix=f"use batch sizes (and the warmup's micro-batch) that are multiples of {w}",
            )
        ranks, self._positions[0] = order.device_batches(int(self._positions[0]), size // w)
        batch = [order.sample(d) for docs in ranks for d in docs]
        self._tokens[0] += sum(len(s) for s in batch)
        self._samples += len(batch)
        return batch

    def peek(self) -> Sample:
        """The sample `next_sample` will return, without taking it."""
        if self.bert24 or self.replay:
            if not self._buffer:
                self._buffer = self._bert24_batch(self.spec.order.world_size)
            return self._buffer[0]
        if self._peeked is None:
            s = self._next_source()
            self._peeked = (s, self._make(s))
        return self._peeked[1]

    def next_sample(self) -> Sample:
        if self.bert24 or self.replay:
            self.peek()
            return self._buffer.pop(0)
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
            if (self.bert24 or self.replay) and not self._buffer:
                return self._bert24_batch(batch_size_sequences)
            return [self.next_sample() for _ in range(batch_size_sequences)]
        if self.replay and not self._buffer:
            return self._bert24_batch(0)
        if self.bert24:
            raise EttinError(
                "the bert24 order takes batch sizes in sequences, not tokens",
                field="batch_tokens",
                fix="set batch_size (sequences) for this phase",
            )
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
        if self._buffer:
            raise EttinError(
                "the bert24 order is inside a device batch taken by next_sample",
                field="data_state",
                fix="save the state between next_batch calls",
            )
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
        self._buffer = []

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
