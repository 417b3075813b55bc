"""Training recipes: YAML files validated into dataclasses.

A recipe is the whole of what decides a run: the model, the tokenizer, the seed, the precision, the
batch geometry, the optimizer and the list of phases (tokens, sequence length, batch size, learning-rate
schedule, batch-size warmup, mask rate, RoPE thetas, data mixture). Every key is checked: an unknown
key, a wrong type or a value out of range stops before anything runs, with the file and the dotted
field named. `--set a.b.0.c=VALUE` overrides edit the raw mapping before validation, so they are
checked exactly like the file. The effective recipe (defaults filled in) is saved with the run, and
`diff_recipes` says what changed when a run is resumed with a different one.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ettin.errors import EttinError

SCHEDULES = ("constant", "1-sqrt", "linear")
PRECISIONS = ("fp32", "bf16")
RUN_ARCHS = ("pair", "encoder", "decoder")
STRATEGIES = ("auto", "ddp", "fsdp")
# Default revision-tag prefixes of the paper's three phases (ettin-spec.md section 5).
PHASE_TAGS = {"pretrain": "step", "pretraining": "step", "extension": "ext", "decay": "decay"}

MAX_COUNT = 10**18  # counts are kept in int64 (positions, token totals): far beyond any corpus
MAX_INT = 2**63 - 1  # every integer field: int64, what torch and numpy seeds and counters take
_COUNT_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_COUNT_RE = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*$", re.IGNORECASE)


def parse_count(value: Any) -> int:
    """Token counts as people write them: 1700000000000, 1.7e12, "1.7T", "250B", "8.5B", "4_000".

    Raises ValueError for anything that is not a whole non-negative count.
    """
    if isinstance(value, bool):
        raise ValueError("a count, not true/false")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{value!r} is not a whole number")
        n = int(value)
    elif isinstance(value, str):
        m = _COUNT_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a count (write e.g. 200000, 1.7e12, 250B, 8.5B, 1.7T)")
        number = float(m.group(1).replace("_", "")) * _COUNT_SUFFIX[m.group(2).upper()]
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is beyond any count")
        if number != round(number):
            raise ValueError(f"{value!r} is not a whole number")
        n = int(round(number))
    else:
        raise ValueError(f"expected a count, got {type(value).__name__}")
    if n < 0:
        raise ValueError(f"{value!r} is negative")
    if n > MAX_COUNT:
        raise ValueError(f"{value!r} is beyond the largest count ettin keeps ({format_count(MAX_COUNT)})")
    return n


def format_count(n: int) -> str:
    """The short form `parse_count` reads back: 1.7T, 250B, 8.5B, 125K."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale and n % (scale // 1000) == 0:
            text = f"{n / scale:g}{suffix}"
            if parse_count(text) == n:
                return text
    return str(n)


def approx_count(n: int) -> str:
    """For people, not for reading back: 16666666667 -> 16.667B, 1716666666667 -> 1.7167T."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.5g}{suffix}"
    return str(n)


# ----------------------------------------------------------------------------------------- schema
#
# metadata keys: "count" (parse with parse_count), "min"/"max" (inclusive), "gt" (exclusive lower
# bound), "choices_name" (word used in the "unknown X" message), "help".


def _count(default=0, **meta):
    return field(default=default, metadata={"count": True, "min": 0, **meta})


@dataclass
class ModelSection:
    """Shape by size name (ettin.config.SIZES) or explicitly; the vocabulary comes from the tokenizer."""

    size: str | None = None
    hidden_size: int | None = field(default=None, metadata={"min": 1})
    intermediate_size: int | None = field(default=None, metadata={"min": 1})
    num_hidden_layers: int | None = field(default=None, metadata={"min": 1})
    num_attention_heads: int | None = field(default=None, metadata={"min": 1})
    global_attn_every_n_layers: int = field(default=3, metadata={"min": 1})
    local_attention: int = field(default=128, metadata={"min": 2})
    max_position_embeddings: int = field(default=7999, metadata={"min": 1})
    attention_dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 0.99})


@dataclass
class OptimizerSection:
    """StableAdamW, fully decoupled weight decay (ettin-spec.md section 5)."""

    lr: float = field(default=3e-3, metadata={"gt": 0.0})
    weight_decay: float = field(default=3e-4, metadata={"min": 0.0})
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = field(default=1e-6, metadata={"min": 0.0})


@dataclass
class GuardsSection:
    """What a step with an exploding or non-finite gradient does (docs/reliability.md).

    Such a step's update is skipped (the batch still counts as consumed, so resume stays exact) and
    logged; more than `max_skips` skipped steps in a row stop the run. A non-finite loss always stops.
    """

    max_grad_norm: float | None = field(default=None, metadata={"gt": 0.0})  # None: only non-finite norms
    max_skips: int = field(default=0, metadata={"min": 0})


@dataclass
class LRSection:
    """Learning rate within a phase, as fractions of the peak.

    Linear warmup from 0 to `start` over `warmup_tokens`, then `start` until the decay begins, then
    `schedule` from `start` to `end` over the last `decay_tokens` of the phase (default: everything
    after the warmup). `1-sqrt`: lr = end + (start - end) * (1 - sqrt(x)), x the fraction of the decay done.
    """

    schedule: Literal["constant", "1-sqrt", "linear"] = field(default="constant", metadata={"choices_name": "schedule"})
    start: float = field(default=1.0, metadata={"min": 0.0})
    end: float | None = field(default=None, metadata={"min": 0.0})
    warmup_tokens: int = _count()
    decay_tokens: int | None = _count(None)


@dataclass
class RopeSection:
    global_theta: float = field(default=10_000.0, metadata={"gt": 0.0})
    local_theta: float = field(default=10_000.0, metadata={"gt": 0.0})
    # The decoder's local theta where it differs from the encoder's (the released 17m/32m/68m/400m
    # decoder decay configs keep 10k while their encoders use 160k); None: local_theta for both.
    decoder_local_theta: float | None = field(default=None, metadata={"gt": 0.0})

    def for_arch(self, arch: str) -> tuple[float, float]:
        """(global, local) theta of a member of this arch."""
        if arch == "decoder" and self.decoder_local_theta is not None:
            return self.global_theta, self.decoder_local_theta
        return self.global_theta, self.local_theta


@dataclass
class Phase:
    name: str = "pretrain"
    tag: str | None = (
        None  # revision-tag prefix; default from the name (pretrain -> step, extension -> ext, decay -> decay)
    )
    tokens: int = field(default=0, metadata={"count": True, "gt": 0})
    seq_len: int = field(default=1024, metadata={"min": 2})
    batch_size: int = field(default=4608, metadata={"min": 1})
    batch_warmup_tokens: int = _count()
    # The batch the warmup starts from, in sequences of all processes together (the original: the
    # per-device micro-batch x 4 devices); independent of micro_batch_size. Needed with a warmup.
    batch_warmup_min: int | None = field(default=None, metadata={"min": 1})
    # steps: ModernBERT's scheduler (each size, a multiple of the minimum, lasts the same number of
    # steps); linear: linear in tokens (ettin.train.schedule.batch_size_at)
    batch_warmup_shape: Literal["steps", "linear"] = field(default="steps", metadata={"choices_name": "shape"})
    mask_rate: float = field(default=0.3, metadata={"gt": 0.0, "max": 1.0})
    lr: LRSection = field(default_factory=LRSection)
    rope: RopeSection = field(default_factory=RopeSection)
    # The data pipeline's spec (ettin.data.mixture.DataSpec): dir, mixture, min_tokens, backfill.
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def tag_prefix(self) -> str:
        return self.tag or PHASE_TAGS.get(self.name, self.name)

    def data_spec(self):
        from ettin.data.mixture import DataSpec

        return DataSpec.from_dict(self.data)


@dataclass
class CheckpointSection:
    every_tokens: int = field(default=8_500_000_000, metadata={"count": True, "gt": 0})
    keep_last: int | None = field(default=None, metadata={"min": 1})  # full states kept; None = all
    export_hf: bool = True


@dataclass
class EvalSection:
    """Held-out loss, measured on sequences the training stream never yields."""

    every_tokens: int | None = field(default=None, metadata={"count": True, "gt": 0})
    sequences: int = field(default=64, metadata={"min": 1})
    mask_rate: float = field(default=0.15, metadata={"gt": 0.0, "max": 1.0})
    # A DataSpec (dir, mixture) over prepared sources kept out of training; empty = no held-out loss.
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveSection:
    encoder: Literal["mlm", "mntp"] = field(default="mlm", metadata={"choices_name": "encoder objective"})
    decoder: Literal["clm"] = field(default="clm", metadata={"choices_name": "decoder objective"})


@dataclass
class InitSection:
    """Start from existing weights: a run's model dir, an HF folder, a folder of revisions (one model
    folder per tag) or a hub repository id; `revision` is the tag (a run's latest, or the hub's default
    branch, when unset). Weights only: the optimizer starts fresh. `same_arch`: the weights must be of
    the recipe's arch (continued pretraining; without it, another arch's weights start a
    cross-objective run)."""

    path: str | None = None
    revision: str | None = None
    same_arch: bool = False


@dataclass
class PrepareTokenizerSection:
    corpus: list[str] = field(default_factory=list)
    vocab_size: int = field(default=4096, metadata={"min": 1})


@dataclass
class PrepareSection:
    """How `ettin train` may build what the recipe needs when it is missing (the demo uses this).

    `tokenizer`: train the recipe's tokenizer on these corpora if its folder does not exist.
    `sources`: prepare these sources into each phase's data dir (idempotent: prepared ones are checked):
    built-in names or NAME=KIND:PATH like `arxiv=mds:hf://datasets/jhu-clsp/ettin-pretraining-data/arxiv`.
    Without it, a missing tokenizer or prepared source stops the run with the command that makes it.
    """

    tokenizer: PrepareTokenizerSection | None = None
    sources: list[str] = field(default_factory=list)


@dataclass
class DistributedSection:
    strategy: Literal["auto", "ddp", "fsdp"] = field(default="auto", metadata={"choices_name": "strategy"})
    fsdp_min_params: int = field(default=300_000_000, metadata={"count": True})  # auto: FSDP2 from this size up


@dataclass
class Recipe:
    name: str = ""
    arch: Literal["pair", "encoder", "decoder"] = field(default="pair", metadata={"choices_name": "arch"})
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: str = ""
    data_dir: str = ""  # default data.dir of every phase that names none
    prepare: PrepareSection = field(default_factory=PrepareSection)
    seed: int = field(default=21, metadata={"min": 0})
    precision: Literal["fp32", "bf16"] = field(default="bf16", metadata={"choices_name": "precision"})
    micro_batch_size: int = field(default=96, metadata={"min": 1})
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    guards: GuardsSection = field(default_factory=GuardsSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    init: InitSection = field(default_factory=InitSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    phases: list[Phase] = field(default_factory=list)

    # ------------------------------------------------------------------ views

    def to_dict(self) -> dict:
        return _to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, width=120)

    @property
    def total_tokens(self) -> int:
        return sum(p.tokens for p in self.phases)

    def phase_offsets(self) -> list[int]:
        """Global token count at which each phase starts."""
        out, t = [], 0
        for p in self.phases:
            out.append(t)
            t += p.tokens
        return out

    def archs(self) -> tuple[str, ...]:
        return ("encoder", "decoder") if self.arch == "pair" else (self.arch,)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------- validation


class _Invalid(Exception):
    def __init__(self, field: str, message: str, fix: str | None = None):
        super().__init__(message)
        self.field, self.message, self.fix = field, message, fix


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__} {value!r}"


def _convert(value: Any, tp: Any, where: str, meta: dict) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], where, meta)
        raise AssertionError(f"unsupported union {tp}")
    if value is None:
        raise _Invalid(where, f"must be {_type_name(tp)}, got null")
    if origin is Literal:
        if value not in args:
            word = meta.get("choices_name", where.rsplit(".", 1)[-1])
            raise _Invalid(where, f"unknown {word} {value!r}", f"use one of: {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Invalid(where, f"must be a mapping of {tp.__name__} fields, got {_describe(value)}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise _Invalid(where, f"must be a list, got {_describe(value)}")
        return [_convert(v, args[0], f"{where}.{i}", {}) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _Invalid(where, f"must be a list of {len(args)} values, got {_describe(value)}")
        return tuple(_convert(v, a, f"{where}.{i}", meta) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Invalid(where, f"must be a mapping, got {_describe(value)}")
        return {str(k): _convert(v, args[1], f"{where}.{k}", meta) for k, v in value.items()}
    if meta.get("count"):
        try:
            out = parse_count(value)
        except ValueError as exc:
            raise _Invalid(where, str(exc)) from None
    elif tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(where, f"must be true or false, got {_describe(value)}")
        out = value
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(where, f"must be an integer, got {_describe(value)}")
        if not -MAX_INT <= value <= MAX_INT:
            raise _Invalid(where, f"{value} is beyond the 64-bit range (at most {MAX_INT})")
        out = value
    elif tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise _Invalid(where, f"must be a number, got {_describe(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Invalid(where, f"must be a finite number, got {_describe(value)}")
        out = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise _Invalid(where, f"must be a string, got {_describe(value)}")
        out = value
    else:
        raise AssertionError(f"unsupported type {tp}")
    _check_range(out, where, meta)
    return out


def _check_range(value: Any, where: str, meta: dict) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if "min" in meta and value < meta["min"]:
        raise _Invalid(where, f"{value} is below the minimum {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise _Invalid(where, f"{value} is above the maximum {meta['max']}")
    if "gt" in meta and meta["gt"] is not None and value <= meta["gt"]:
        raise _Invalid(where, f"{value} must be greater than {meta['gt']}")


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else str(key)
            close = [k for k in fields if k.replace("_", "") == str(key).replace("_", "").replace("-", "")]
            raise _Invalid(
                where,
                f"unknown key '{key}'",
                f"did you mean '{close[0]}'?" if close else f"known keys here: {', '.join(fields)}",
            )
    kw = {}
    for name, f in fields.items():
        if name in raw:
            where = f"{prefix}.{name}" if prefix else name
            kw[name] = _convert(raw[name], hints[name], where, dict(f.metadata))
    return cls(**kw)


def _check_recipe(r: Recipe) -> None:
    """Constraints between fields, beyond each field's own type and range."""
    from ettin.config import SIZES

    m = r.model
    explicit = [m.hidden_size, m.intermediate_size, m.num_hidden_layers, m.num_attention_heads]
    if m.size is not None and m.size not in SIZES:
        raise _Invalid("model.size", f"unknown size '{m.size}'", f"use one of: {', '.join(SIZES)}")
    if m.size is None and any(v is None for v in explicit) and not r.init.path:
        raise _Invalid(
            "model",
            "gives neither a size nor the full shape",
            "set model.size (see `ettin sizes`) or hidden_size, intermediate_size, num_hidden_layers, num_attention_heads",
        )
    b1, b2 = r.optimizer.betas
    for i, b in enumerate((b1, b2)):
        if not 0.0 <= b < 1.0:
            raise _Invalid(f"optimizer.betas.{i}", f"{b} is outside [0, 1)")
    if not r.phases:
        raise _Invalid("phases", "no phases given", "list at least one phase with tokens, seq_len and batch_size")
    tags: dict[str, int] = {}
    for i, p in enumerate(r.phases):
        where = f"phases.{i}"
        if not re.fullmatch(r"[A-Za-z][A-Za-z_-]*", p.tag_prefix):
            raise _Invalid(
                f"{where}.tag",
                f"tag prefix '{p.tag_prefix}' must be letters, '-' or '_'",
                "tags are PREFIX followed by the step number, e.g. ext1000",
            )
        if p.tag_prefix in tags:
            raise _Invalid(
                f"{where}.tag",
                f"tag prefix '{p.tag_prefix}' is already used by phase {tags[p.tag_prefix]}",
                "give each phase its own tag",
            )
        tags[p.tag_prefix] = i
        if p.seq_len > m.max_position_embeddings:
            raise _Invalid(
                f"{where}.seq_len",
                f"sequence length {p.seq_len} is beyond the model's limit of {m.max_position_embeddings} positions",
                "lower seq_len or raise model.max_position_embeddings",
            )
        lr = p.lr
        if lr.schedule == "constant" and lr.end is not None and lr.end != lr.start:
            raise _Invalid(
                f"{where}.lr.end",
                f"a constant schedule cannot end at {lr.end} after starting at {lr.start}",
                "use schedule 1-sqrt or linear, or drop end",
            )
        if lr.schedule != "constant" and lr.end is None:
            raise _Invalid(f"{where}.lr.end", f"a {lr.schedule} schedule needs the fraction of the peak it ends at")
        decay = lr.decay_tokens if lr.decay_tokens is not None else p.tokens - lr.warmup_tokens
        if lr.warmup_tokens > p.tokens:
            raise _Invalid(
                f"{where}.lr.warmup_tokens",
                f"warmup of {lr.warmup_tokens} tokens is longer than the phase ({p.tokens})",
            )
        if lr.warmup_tokens + decay > p.tokens:
            raise _Invalid(
                f"{where}.lr.decay_tokens",
                f"warmup ({lr.warmup_tokens}) plus decay ({decay}) is longer than the phase ({p.tokens})",
            )
        if p.batch_warmup_tokens > p.tokens:
            raise _Invalid(
                f"{where}.batch_warmup_tokens",
                f"batch-size warmup of {p.batch_warmup_tokens} tokens is longer than the phase ({p.tokens})",
            )
        if p.batch_warmup_tokens and p.batch_warmup_min is None:
            raise _Invalid(
                f"{where}.batch_warmup_min",
                "a batch-size warmup needs the batch it starts from (sequences, all processes together)",
                "set it, e.g. 576 for the 17m (the original: per-device micro-batch x 4 devices), or drop batch_warmup_tokens",
            )
        if p.batch_warmup_tokens and p.batch_warmup_min is not None and p.batch_warmup_min > p.batch_size:
            raise _Invalid(
                f"{where}.batch_warmup_min",
                f"the warmup's first batch of {p.batch_warmup_min} sequences exceeds the phase's batch of {p.batch_size}",
                "lower batch_warmup_min to at most batch_size",
            )
        p.data = _normalise_data(p.data, r.data_dir, f"{where}.data")
        for key in ("min_tokens", "backfill_below"):
            value = p.data.get(key)
            if value is not None and value > p.seq_len - 2:
                raise _Invalid(
                    f"{where}.data.{key}",
                    f"{key} {value} exceeds the {p.seq_len - 2} tokens a chunk holds at seq_len {p.seq_len}",
                    f"lower {key} or raise seq_len",
                )
    if r.eval.data:
        r.eval.data = _normalise_data(r.eval.data, r.data_dir, "eval.data")
    if r.init.revision and not r.init.path:
        raise _Invalid(
            "init.revision",
            "a revision without init.path",
            "set init.path (or --init) to a run's model dir, a folder of revisions or a hub id",
        )
    if r.init.same_arch and r.arch == "pair":
        raise _Invalid(
            "init.same_arch",
            "a pair cannot continue from one model's weights",
            "set arch (or --arch) to encoder or decoder, the arch of the weights",
        )


def _normalise_data(data: dict, data_dir: str, where: str) -> dict:
    from ettin.data.mixture import DataSpec

    data = dict(data)
    if not data.get("dir") and data_dir:
        data["dir"] = data_dir
    try:
        spec = DataSpec.from_dict(data, where=where)
    except EttinError as exc:
        field = exc.field or where
        message = str(exc).removeprefix(f"field '{exc.field}': ") if exc.field else str(exc)
        if exc.fix:
            message = message.removesuffix(f" ({exc.fix})")
        raise _Invalid(field, message, exc.fix) from None
    return spec.to_dict()


def recipe_from_dict(raw: Any, path: str | os.PathLike | None = None) -> Recipe:
    if not isinstance(raw, dict):
        raise EttinError(f"must hold a mapping of recipe fields, got {_describe(raw)}", path=path)
    try:
        recipe = _build(Recipe, raw, "")
        _check_recipe(recipe)
    except _Invalid as exc:
        raise EttinError(exc.message, path=path, field=exc.field, fix=exc.fix) from None
    return recipe


# ----------------------------------------------------------------------------------------- overrides


def _yaml_problem(exc: Exception) -> str:
    """What PyYAML says is wrong, on one line (a ReaderError has no `problem`, only a multi-line text)."""
    problem = getattr(exc, "problem", None) or next((ln for ln in str(exc).splitlines() if ln.strip()), "")
    return " ".join(str(problem).split())[:200] or type(exc).__name__


def parse_override(text: str) -> tuple[list[str], Any]:
    """`phases.0.tokens=200000` -> (["phases", "0", "tokens"], 200000); the value is read as YAML."""
    if "=" not in text:
        raise EttinError(
            f"override '{text}' has no '='", fix="write --set FIELD=VALUE, e.g. --set phases.0.tokens=200000"
        )
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise EttinError(f"override '{text}' has an empty field name", fix="write --set FIELD=VALUE, e.g. --set seed=7")
    try:
        parsed = safe_load_strict(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise EttinError(f"override '{text}': the value is not valid YAML ({_yaml_problem(exc)})", field=key) from None
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Edit the raw recipe mapping in place; list items are addressed by index."""
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise EttinError(
                        f"override '{text}': no item {part} in a list of {len(node)}",
                        field=where,
                        fix=f"use an index from 0 to {len(node) - 1}" if node else "the list is empty",
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise EttinError(
                    f"override '{text}': '{'.'.join(parts[:depth])}' is not a mapping or list", field=where
                )
    return raw


# ----------------------------------------------------------------------------------------- shipped recipes


def shipped_dir() -> Path:
    """The folder of the recipes that ship inside the package (src/ettin/recipes, package data)."""
    return Path(str(importlib.resources.files("ettin") / "recipes"))


def shipped_recipes() -> dict[str, Path]:
    """Shipped recipes by name (the file name without .yaml), sorted."""
    folder = shipped_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def resolve_recipe(spec: str | os.PathLike) -> Path:
    """A recipe argument as a file: an existing path, else the name of a shipped recipe (`ettin-17m`)."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = str(spec)
    if name.endswith((".yaml", ".yml")) and "/" not in name and os.sep not in name:
        name = name.rsplit(".", 1)[0]
    if name in shipped:
        return shipped[name]
    if path.stem in shipped and path.parent.name == "recipes":
        fix = f"the shipped recipes moved into the package: give the name, e.g. `ettin train {path.stem}`"
    else:
        fix = "give a YAML file, or the name of a shipped recipe (`ettin recipes` lists them, e.g. demo, ettin-17m)"
    raise EttinError("no such recipe file or shipped recipe", path=spec, fix=fix)


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; anything near this is not one


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, mark):
        super().__init__(f"the key {key!r} appears twice in one mapping")
        self.problem = f"the key {key!r} appears twice in one mapping (the second would silently win)"
        self.problem_mark = mark


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load_strict(text: str):
    """yaml.safe_load, with duplicate keys refused."""
    loader = _StrictLoader(text)  # a SafeLoader subclass: only plain YAML types are built
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe from a YAML file or a shipped recipe's name, with `--set` overrides applied."""
    path = resolve_recipe(path)
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise EttinError(
            f"is {size:,} bytes, more than a recipe can be ({MAX_RECIPE_BYTES:,}); not read",
            path=path,
            fix="give the recipe YAML file, not a data file",
        )
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)  # the file may have grown since the stat
        if len(data) > MAX_RECIPE_BYTES:
            raise EttinError(f"is more than {MAX_RECIPE_BYTES:,} bytes; not read", path=path)
        raw = safe_load_strict(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise EttinError(f"is not UTF-8 text (byte {exc.start})", path=path, fix="save the recipe as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise EttinError(f"is not valid YAML{where}: {_yaml_problem(exc)}", path=path) from None
    if raw is None:
        raw = {}
    if overrides:
        if not isinstance(raw, dict):
            raise EttinError("must hold a mapping of recipe fields", path=path)
        apply_overrides(raw, overrides)
    return recipe_from_dict(raw, path)


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> Path:
    from ettin.io import atomic_write_text

    return atomic_write_text(path, recipe.to_yaml())


# ----------------------------------------------------------------------------------------- diff


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out or {prefix: {}}
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out |= _flatten(v, f"{prefix}.{i}")
        return out
    return {prefix: obj}


def diff_recipes(old: Recipe | dict, new: Recipe | dict) -> list[str]:
    """Human lines `field: old -> new` for every field that differs (added/removed phases included)."""
    a = _flatten(old.to_dict() if isinstance(old, Recipe) else old)
    b = _flatten(new.to_dict() if isinstance(new, Recipe) else new)
    lines = []
    for key in list(a) + [k for k in b if k not in a]:
        if key not in b:
            lines.append(f"{key}: {a[key]!r} -> (absent)")
        elif key not in a:
            lines.append(f"{key}: (absent) -> {b[key]!r}")
        elif a[key] != b[key] and not (isinstance(a[key], (list, tuple)) and list(a[key]) == list(b[key])):
            lines.append(f"{key}: {a[key]!r} -> {b[key]!r}")
    return lines
