"""A phase's data spec: which prepared sources, in what shares, chunked how.

Recipes write it as

    data:
      dir: runs/data/demo
      mixture:
        - {source: wiki, weight: 0.7}
        - {source: shakespeare, weight: 0.3}
      min_tokens: 16        # optional; default min(128, seq_len // 8)
      backfill: true        # optional
      order: {sampler: bert24, shuffle_seed: 9176, world_size: 4}   # optional; default: ettin's own order

or with token budgets (`{source: wiki, tokens: 2M}`): the budgets set the shares and say how many
tokens of each source the phase is meant to see; a budget larger than the source repeats it. Shares
are shares of tokens, as in the Ettin mixture tables. `mixture: {wiki: 0.7, shakespeare: 0.3}` is
accepted as a short form of weights.

`order` picks who decides the sample order (`OrderSpec`): `sampler: ettin` (the default: chunked
documents, a seeded permutation per source and epoch, sources interleaved by share) or
`sampler: bert24` (the original Ettin runs: one sample per document of a single source, usually an
MDS folder, in bert24's `DistributedSamplerPCG64DXSM` order; see ettin.data.stream) or
`sampler: replay` (a prepared `replay:` source: each step gets exactly the rows of one recorded step).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ettin.errors import EttinError

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(value, *, field: str) -> int:
    """An integer, or a string like "2M", "1.5B", "250k"."""
    if isinstance(value, bool):
        raise EttinError(f"expected a number of tokens, got {value!r}", field=field)
    if isinstance(value, (int, float)):
        number = float(value) if isinstance(value, float) or abs(value) < 10**300 else math.inf
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbgt]?)\s*", str(value).lower())
        if not m:
            raise EttinError(
                f"cannot read {value!r} as a number of tokens", field=field, fix="write e.g. 2000000 or 2M"
            )
        number = float(m.group(1)) * _SUFFIX[m.group(2)]
    if not math.isfinite(number) or number > 1e18:  # counts are int64
        raise EttinError(f"{str(value)[:40]} is beyond any count of tokens (at most 1e18)", field=field)
    if number <= 0 or number != int(number):
        raise EttinError(f"expected a positive whole number of tokens, got {value!r}", field=field)
    return int(number)


@dataclass(frozen=True)
class MixtureEntry:
    source: str
    weight: float | None = None
    tokens: int | None = None

    def to_dict(self) -> dict:
        d: dict = {"source": self.source}
        if self.weight is not None:
            d["weight"] = self.weight
        if self.tokens is not None:
            d["tokens"] = self.tokens
        return d


SAMPLERS = ("ettin", "bert24", "replay")


@dataclass(frozen=True)
class OrderSpec:
    """Who orders the samples. bert24: the permutation of `numpy.random.PCG64DXSM(shuffle_seed + epoch)`
    over the source's documents, rank r of `world_size` taking every world_size-th index from r, each
    rank's device batch in turn; `drop_last` as the original's `drop_last` (sampler and loader)."""

    sampler: str = "ettin"
    shuffle_seed: int = 9176  # bert24's default when its config names none
    world_size: int = 4  # the original ran 4 GPUs per model
    shuffle: bool = True
    drop_last: bool = True

    def to_dict(self) -> dict:
        return {
            "sampler": self.sampler,
            "shuffle_seed": self.shuffle_seed,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    @classmethod
    def from_dict(cls, d, *, where: str = "data.order") -> "OrderSpec":
        if isinstance(d, OrderSpec):
            return d
        if d is None:
            return cls()
        if isinstance(d, str):
            d = {"sampler": d}
        if not isinstance(d, dict):
            raise EttinError(f"expected a mapping, got {type(d).__name__}", field=where)
        known = {"sampler", "shuffle_seed", "world_size", "shuffle", "drop_last"}
        extra = sorted(set(d) - known)
        if extra:
            raise EttinError(f"unknown key(s) {extra}", field=where, fix=f"known keys: {', '.join(sorted(known))}")
        sampler = d.get("sampler", "ettin")
        if sampler not in SAMPLERS:
            raise EttinError(
                f"unknown sampler {sampler!r}", field=f"{where}.sampler", fix="use ettin, bert24 or replay"
            )
        out = {"sampler": sampler}
        for key, lo in (("shuffle_seed", 0), ("world_size", 1)):
            if key in d:
                v = d[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                    raise EttinError(f"expected a whole number >= {lo}, got {v!r}", field=f"{where}.{key}")
                out[key] = v
        for key in ("shuffle", "drop_last"):
            if key in d:
                if not isinstance(d[key], bool):
                    raise EttinError(f"expected true or false, got {d[key]!r}", field=f"{where}.{key}")
                out[key] = d[key]
        return cls(**out)


@dataclass(frozen=True)
class DataSpec:
    dir: str
    mixture: tuple[MixtureEntry, ...]
    min_tokens: int | None = None
    backfill: str = "move"  # ettin.data.chunking.BACKFILL_MODES: move (the original's), copy, none
    order: OrderSpec = OrderSpec()
    backfill_below: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mixture", tuple(self.mixture))
        if not self.mixture:
            raise EttinError(
                "the mixture names no source", field="data.mixture", fix="add e.g. {source: wiki, weight: 1}"
            )
        names = [e.source for e in self.mixture]
        if len(set(names)) != len(names):
            raise EttinError(f"a source appears twice in the mixture ({', '.join(names)})", field="data.mixture")
        kinds = {("weight" if e.weight is not None else "tokens") for e in self.mixture}
        for i, e in enumerate(self.mixture):
            if (e.weight is None) == (e.tokens is None):
                raise EttinError(
                    f"source '{e.source}' needs exactly one of weight or tokens", field=f"data.mixture[{i}]"
                )
            if e.weight is not None and not e.weight > 0:
                raise EttinError(f"weight {e.weight} is not positive", field=f"data.mixture[{i}].weight")
        if len(kinds) > 1:
            raise EttinError(
                "the mixture mixes weights and token budgets",
                field="data.mixture",
                fix="give all weights or all budgets",
            )
        if self.min_tokens is not None and self.min_tokens < 1:
            raise EttinError(f"min_tokens {self.min_tokens} is not positive", field="data.min_tokens")
        from ettin.data.chunking import BACKFILL_MODES

        if self.backfill not in BACKFILL_MODES:
            raise EttinError(
                f"unknown back-fill mode {self.backfill!r}",
                field="data.backfill",
                fix=f"use one of: {', '.join(BACKFILL_MODES)} (move: the original's, no token twice)",
            )
        if self.backfill_below is not None and self.backfill_below < 1:
            raise EttinError(f"backfill_below {self.backfill_below} is not positive", field="data.backfill_below")

    @property
    def sources(self) -> list[str]:
        return [e.source for e in self.mixture]

    @property
    def budgets(self) -> dict[str, int] | None:
        if self.mixture[0].tokens is None:
            return None
        return {e.source: int(e.tokens) for e in self.mixture}

    def shares(self) -> list[float]:
        raw = [float(e.weight if e.weight is not None else e.tokens) for e in self.mixture]
        total = sum(raw)
        return [r / total for r in raw]

    def to_dict(self) -> dict:
        d: dict = {"dir": self.dir, "mixture": [e.to_dict() for e in self.mixture]}
        if self.min_tokens is not None:
            d["min_tokens"] = self.min_tokens
        if self.backfill != "move":
            d["backfill"] = self.backfill
        if self.backfill_below is not None:
            d["backfill_below"] = self.backfill_below
        if self.order.sampler != "ettin":
            d["order"] = self.order.to_dict()
        return d

    @classmethod
    def from_dict(cls, d, *, where: str = "data") -> "DataSpec":
        if isinstance(d, DataSpec):
            return d
        if not isinstance(d, dict):
            raise EttinError(f"expected a mapping, got {type(d).__name__}", field=where)
        known = {"dir", "mixture", "min_tokens", "backfill", "backfill_below", "order"}
        extra = sorted(set(d) - known)
        if extra:
            raise EttinError(f"unknown key(s) {extra}", field=where, fix=f"known keys: {', '.join(sorted(known))}")
        if not d.get("dir"):
            raise EttinError(
                "missing the prepared-data folder",
                field=f"{where}.dir",
                fix="set dir: to the --out of `ettin data prepare`",
            )
        raw = d.get("mixture")
        if isinstance(raw, dict):
            raw = [{"source": k, "weight": v} for k, v in raw.items()]
        if not isinstance(raw, list) or not raw:
            raise EttinError("expected a list of {source, weight | tokens}", field=f"{where}.mixture")
        entries = []
        for i, item in enumerate(raw):
            f = f"{where}.mixture[{i}]"
            if isinstance(item, str):
                item = {"source": item, "weight": 1.0}
            if not isinstance(item, dict):
                raise EttinError(f"expected a mapping, got {type(item).__name__}", field=f)
            extra = sorted(set(item) - {"source", "weight", "tokens"})
            if extra:
                raise EttinError(f"unknown key(s) {extra}", field=f, fix="known keys: source, weight, tokens")
            if not isinstance(item.get("source"), str) or not item["source"]:
                raise EttinError("missing the source name", field=f"{f}.source")
            weight = item.get("weight")
            if weight is not None:
                if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                    raise EttinError(f"expected a number, got {weight!r}", field=f"{f}.weight")
                weight = float(weight) if isinstance(weight, float) or abs(weight) < 10**300 else math.inf
                if not math.isfinite(weight):
                    raise EttinError(f"weight {str(weight)[:40]} is not a finite number", field=f"{f}.weight")
            tokens = item.get("tokens")
            if tokens is not None:
                tokens = parse_count(tokens, field=f"{f}.tokens")
            entries.append(MixtureEntry(item["source"], weight, tokens))
        min_tokens = d.get("min_tokens")
        if min_tokens is not None and (isinstance(min_tokens, bool) or not isinstance(min_tokens, int)):
            raise EttinError(f"expected a whole number, got {min_tokens!r}", field=f"{where}.min_tokens")
        backfill = d.get("backfill", "move")
        if not isinstance(backfill, str):
            raise EttinError(
                f"expected a back-fill mode, got {backfill!r}",
                field=f"{where}.backfill",
                fix="use move (the original's: tokens moved from the previous piece), copy or none",
            )
        backfill_below = d.get("backfill_below")
        if backfill_below is not None and (isinstance(backfill_below, bool) or not isinstance(backfill_below, int)):
            raise EttinError(f"expected a whole number, got {backfill_below!r}", field=f"{where}.backfill_below")
        order = OrderSpec.from_dict(d.get("order"), where=f"{where}.order")
        if order.sampler != "ettin" and len(entries) != 1:
            raise EttinError(
                f"the {order.sampler} order reads one source, the mixture names {len(entries)}",
                field=f"{where}.order",
                fix="give one source (the MDS folder), or use sampler: ettin for mixtures",
            )
        try:
            return cls(str(d["dir"]), tuple(entries), min_tokens, backfill, order, backfill_below)
        except EttinError as exc:
            if exc.field and exc.field.startswith("data") and where != "data":
                raise EttinError(_bare(exc), field=where + exc.field[len("data") :], fix=exc.fix) from None
            raise


def _bare(exc: EttinError) -> str:
    text = str(exc).removeprefix(f"field '{exc.field}': ")
    return text.removesuffix(f" ({exc.fix})") if exc.fix else text
