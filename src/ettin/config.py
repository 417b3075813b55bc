"""Model configuration and the table of sizes.

One `ModelConfig` describes both members of a pair: `arch` is the only field in which an Ettin
encoder and its decoder differ. Field names follow transformers' ModernBERT config so that
conversion (`ettin.hf`) is a table, not code.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Literal

from ettin.errors import EttinError

Arch = Literal["encoder", "decoder"]
ARCHS: tuple[str, ...] = ("encoder", "decoder")

# ModernBERT tokenizer ids (ettin-spec.md section 3).
MODERNBERT_VOCAB_SIZE = 50368
MODERNBERT_SPECIAL_IDS = {
    "unk_token_id": 50280,
    "cls_token_id": 50281,
    "sep_token_id": 50282,
    "pad_token_id": 50283,
    "mask_token_id": 50284,
    "bos_token_id": 50281,
    "eos_token_id": 50282,
}
SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
# Upper bounds on shapes: far above any Ettin model, low enough that a typo is refused before any allocation.
MAX_VOCAB_SIZE = 1 << 24  # token ids are stored as int32; real vocabularies are below 300k
MAX_DIMENSION = 1 << 20
_INT_LIMITS = {"vocab_size": MAX_VOCAB_SIZE, "num_hidden_layers": 4096, "max_position_embeddings": 1 << 22}
# Ettin's position limit (max_position_embeddings); tokenizers truncate at the same length.
DEFAULT_MAX_POSITIONS = 7999


@dataclass
class ModelConfig:
    arch: Arch = "encoder"
    vocab_size: int = MODERNBERT_VOCAB_SIZE
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    global_attn_every_n_layers: int = 3
    # Total local window as transformers stores it: the encoder sees |i - j| <= local_attention // 2,
    # the decoder i - local_attention // 2 < j <= i.
    local_attention: int = 128
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 160_000.0
    max_position_embeddings: int = DEFAULT_MAX_POSITIONS
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    attention_dropout: float = 0.0
    unk_token_id: int = MODERNBERT_SPECIAL_IDS["unk_token_id"]
    cls_token_id: int = MODERNBERT_SPECIAL_IDS["cls_token_id"]
    sep_token_id: int = MODERNBERT_SPECIAL_IDS["sep_token_id"]
    pad_token_id: int = MODERNBERT_SPECIAL_IDS["pad_token_id"]
    mask_token_id: int = MODERNBERT_SPECIAL_IDS["mask_token_id"]
    bos_token_id: int = MODERNBERT_SPECIAL_IDS["bos_token_id"]
    eos_token_id: int = MODERNBERT_SPECIAL_IDS["eos_token_id"]
    layer_types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise EttinError(f"unknown arch '{self.arch}'", field="arch", fix="use 'encoder' or 'decoder'")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "global_attn_every_n_layers",
            "local_attention",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EttinError(f"{name} must be a positive integer, got {value!r}", field=name)
            if value > _INT_LIMITS.get(name, MAX_DIMENSION):
                raise EttinError(
                    f"{name} {value} is beyond what ettin builds (at most {_INT_LIMITS.get(name, MAX_DIMENSION):,})",
                    field=name,
                )
        if self.hidden_size % self.num_attention_heads:
            raise EttinError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}",
                field="num_attention_heads",
            )
        if self.head_dim % 2:
            raise EttinError(
                f"the head dimension hidden_size / num_attention_heads = {self.head_dim} is odd; rotary position "
                "embeddings rotate pairs of dimensions",
                field="num_attention_heads",
                fix="choose hidden_size and num_attention_heads so that their quotient is even",
            )
        for name, low, high, closed in (
            ("global_rope_theta", 0.0, math.inf, False),
            ("local_rope_theta", 0.0, math.inf, False),
            ("norm_eps", 0.0, 1.0, False),
            ("initializer_range", 0.0, math.inf, True),
            ("initializer_cutoff_factor", 0.0, math.inf, False),
            ("attention_dropout", 0.0, 1.0, True),
        ):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (low <= value if closed else low < value) and value < high
            if not ok:
                bound = f"{'at least' if closed else 'above'} {low:g}" + (
                    f" and below {high:g}" if high < math.inf else ""
                )
                raise EttinError(f"{name} must be a finite number {bound}, got {value!r}", field=name)
        if not self.layer_types:
            self.layer_types = [
                "full_attention" if i % self.global_attn_every_n_layers == 0 else "sliding_attention"
                for i in range(self.num_hidden_layers)
            ]
        if len(self.layer_types) != self.num_hidden_layers:
            raise EttinError(
                f"{len(self.layer_types)} layer_types for {self.num_hidden_layers} layers", field="layer_types"
            )
        for i, kind in enumerate(self.layer_types):
            if kind not in ("full_attention", "sliding_attention"):
                raise EttinError(f"layer {i} has unknown type '{kind}'", field="layer_types")
        for name in MODERNBERT_SPECIAL_IDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise EttinError(f"{name} must be a token id (an integer), got {value!r}", field=name)
            if not 0 <= value < self.vocab_size:
                raise EttinError(
                    f"{name}={value} does not fit a vocabulary of {self.vocab_size}",
                    field=name,
                    fix="give special-token ids inside the vocabulary (see ettin.config.special_ids_for)",
                )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_causal(self) -> bool:
        return self.arch == "decoder"

    def check_seq_len(self, seq_len: int, *, field: str = "seq_len") -> None:
        """The sequence-length limit: a sequence may use at most max_position_embeddings positions."""
        limit = self.max_position_embeddings
        if seq_len > limit:
            raise EttinError(
                f"sequence length {seq_len} is beyond the model's limit of {limit} positions",
                field=field,
                fix=f"use seq_len <= {limit} for this model",
            )

    @property
    def half_window(self) -> int:
        return self.local_attention // 2

    def replace(self, **changes) -> "ModelConfig":
        kw = dataclasses.asdict(self) | changes
        if "num_hidden_layers" in changes or "global_attn_every_n_layers" in changes:
            kw["layer_types"] = changes.get("layer_types", [])
        return ModelConfig(**kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Size:
    name: str
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    ettin: bool  # one of the six released sizes, or a small CPU size of ours
    note: str = ""


SIZES: dict[str, Size] = {
    s.name: s
    for s in (
        # Small CPU sizes (ours). Head dim stays 64 and there are at least 4 layers so that both
        # layer types occur.
        Size("tiny", 4, 64, 96, 1, False, "unit tests"),
        Size("mini", 4, 128, 192, 2, False, "fast integration tests"),
        Size("demo", 6, 192, 288, 3, False, "the CPU demo pair (make demo)"),
        # The Ettin suite (ettin-spec.md section 1).
        Size("17m", 7, 256, 384, 4, True),
        Size("32m", 10, 384, 576, 6, True),
        Size("68m", 19, 512, 768, 8, True),
        Size("150m", 22, 768, 1152, 12, True),
        Size("400m", 28, 1024, 2624, 16, True),
        Size("1b", 28, 1792, 3840, 28, True),
    )
}


def special_ids_for(vocab_size: int) -> dict[str, int]:
    """Special-token ids for a model built without a tokenizer.

    With the full ModernBERT vocabulary they are the ModernBERT ids; with a smaller vocabulary the five
    specials take the top ids, in ModernBERT's order, so they fit and stay out of the way of the BPE ids
    a tokenizer trained by `ettin tokenizer train` puts first.
    """
    if vocab_size >= MODERNBERT_VOCAB_SIZE:
        return dict(MODERNBERT_SPECIAL_IDS)
    if vocab_size < 8:
        raise EttinError(f"vocab_size {vocab_size} is too small", field="vocab_size", fix="use at least 8")
    base = vocab_size - len(SPECIAL_TOKENS)
    unk, cls, sep, pad, mask = range(base, base + 5)
    return {
        "unk_token_id": unk,
        "cls_token_id": cls,
        "sep_token_id": sep,
        "pad_token_id": pad,
        "mask_token_id": mask,
        "bos_token_id": cls,
        "eos_token_id": sep,
    }


def config_for_size(
    size: str, arch: Arch = "encoder", vocab_size: int = MODERNBERT_VOCAB_SIZE, **overrides
) -> ModelConfig:
    if size not in SIZES:
        raise EttinError(f"unknown size '{size}'", field="size", fix=f"choose one of: {', '.join(SIZES)}")
    s = SIZES[size]
    kw = dict(
        arch=arch,
        vocab_size=vocab_size,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
    )
    kw |= special_ids_for(vocab_size)
    kw |= overrides
    return ModelConfig(**kw)


def count_parameters(config: ModelConfig, *, with_head: bool = False) -> int:
    """Closed-form parameter count (backbone = embeddings + layers + final norm, as `AutoModel` holds).

    The head adds dense h x h, a norm and the vocabulary bias; the vocabulary weight is tied.
    """
    h, i, v, n = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    layer = 4 * h * h + 3 * h * i + 2 * h  # Wqkv, Wo, Wi (2I x h), mlp.Wo (h x I), two norms
    backbone = v * h + h + n * layer - h + h  # embedding + norm, layers (layer 0 lacks attn_norm), final norm
    if with_head:
        backbone += h * h + h + v
    return backbone


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_model_bytes(config: ModelConfig, *, bytes_per_param: int = 4) -> int:
    """The weights a model of `config` allocates (float32 by default), head included."""
    return count_parameters(config, with_head=True) * bytes_per_param


def check_memory(config: ModelConfig, *, what: str = "the model", bytes_per_param: int = 4) -> None:
    """Refuse, before allocating, a model whose weights alone exceed this machine's memory."""
    need = estimate_model_bytes(config, bytes_per_param=bytes_per_param)
    have = machine_memory_bytes()
    if have is not None and need > have:
        raise EttinError(
            f"{what} would need {need / 2**30:,.1f} GiB for its weights alone "
            f"({count_parameters(config, with_head=True):,} parameters), more than this machine's "
            f"{have / 2**30:,.1f} GiB",
            field="vocab_size" if config.vocab_size * config.hidden_size * 2 > count_parameters(config) else "model",
            fix="check vocab_size and the model's shape (`ettin sizes`)",
        )
