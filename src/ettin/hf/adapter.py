"""The pure half of the Hugging Face format: config.json <-> ModelConfig and the state-dict names.

No file is read or written here. ettin's state dict uses ModernBertForMaskedLM's names for both
archs, so the encoder converts by identity and the decoder by `STATE_DICT_MAP`: the one table that
`state_dict_to_hf`, `state_dict_from_hf` and the docs' table (`conversion_table_markdown`) all use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ettin.config import (
    MODERNBERT_SPECIAL_IDS,
    MODERNBERT_VOCAB_SIZE,
    ModelConfig,
    special_ids_for,
)
from ettin.errors import EttinError

if TYPE_CHECKING:
    import torch

MODEL_TYPES = {"encoder": "modernbert", "decoder": "modernbert-decoder"}
ARCH_OF_MODEL_TYPE = {"modernbert": "encoder", "modernbert-decoder": "decoder", "modernbert_decoder": "decoder"}
ARCHITECTURES = {"encoder": "ModernBertForMaskedLM", "decoder": "ModernBertDecoderForCausalLM"}

# Defaults transformers 5.x applies when a config carries no theta for a layer type; mirrored so that a
# model loads into ettin exactly as it loads into transformers.
HF_DEFAULT_THETA = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}


def check_arch(arch: str) -> None:
    if arch not in MODEL_TYPES:
        raise EttinError(f"unknown arch '{arch}'", field="arch", fix="use 'encoder' or 'decoder'")


# ------------------------------------------------------------------------------------ state dicts


@dataclass(frozen=True)
class Rule:
    """One ettin parameter (a name template; `{i}` is the layer index) and its names per arch.

    One name: a rename (or the identity). Several: the ettin tensor is their concatenation along
    dim 0, in that order, each `hidden_size` rows (the fused Wqkv = Q, K, V). None: not written,
    because the tensor is tied to another one (transformers re-ties it on load, so does ettin).
    """

    ettin: str
    encoder: tuple[str, ...] | None
    decoder: tuple[str, ...] | None
    note: str = ""  # shape or remark, for the docs' table only

    def names(self, arch: str) -> tuple[str, ...] | None:
        return self.encoder if arch == "encoder" else self.decoder


def _same(name: str, note: str = "") -> Rule:
    return Rule(name, (name,), (name,), note)


_L = "model.layers.{i}."
STATE_DICT_MAP: tuple[Rule, ...] = (
    _same("model.embeddings.tok_embeddings.weight", "[V, h]"),
    _same("model.embeddings.norm.weight"),
    _same(_L + "attn_norm.weight", "(i >= 1)"),
    Rule(
        _L + "attn.Wqkv.weight",
        (_L + "attn.Wqkv.weight",),
        (_L + "attn.q_proj.weight", _L + "attn.k_proj.weight", _L + "attn.v_proj.weight"),
        "[3h, h]",
    ),
    _same(_L + "attn.Wo.weight"),
    _same(_L + "mlp_norm.weight"),
    _same(_L + "mlp.Wi.weight", "[2I, h]"),
    _same(_L + "mlp.Wo.weight", "[h, I]"),
    _same("model.final_norm.weight"),
    Rule("head.dense.weight", ("head.dense.weight",), ("lm_head.dense.weight",)),
    Rule("head.norm.weight", ("head.norm.weight",), ("lm_head.norm.weight",)),
    Rule("decoder.weight", None, None, "(tied to the embedding)"),
    _same("decoder.bias", "[V]"),
)


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)"))


_TO_HF = [(_pattern(r.ettin), r) for r in STATE_DICT_MAP]
_FROM_HF = {
    arch: [(_pattern(name), r, j) for r in STATE_DICT_MAP for j, name in enumerate(r.names(arch) or ())]
    for arch in MODEL_TYPES
}


def _fill(template: str, m: re.Match) -> str:
    return template.replace("{i}", m.group("i")) if "i" in m.groupdict() else template


def state_dict_to_hf(state_dict: Mapping[str, "torch.Tensor"], arch: str, config: ModelConfig) -> dict:
    """ettin names -> the names of `arch`'s transformers class (by `STATE_DICT_MAP`; a name the table
    does not know is kept). The tied `decoder.weight` is left out, as transformers' own save_pretrained does."""
    out = {}
    h = config.hidden_size
    for name, tensor in state_dict.items():
        rule, m = next(((r, m) for p, r in _TO_HF if (m := p.fullmatch(name))), (None, None))
        if rule is None:
            out[name] = tensor.contiguous()
            continue
        targets = rule.names(arch)
        if targets is None:
            continue
        if len(targets) == 1:
            out[_fill(targets[0], m)] = tensor.contiguous()
            continue
        n = len(targets)
        if tensor.shape[0] != n * h:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected [{n * h}, {h}]")
        for target, part in zip(targets, tensor.split(h, dim=0), strict=True):
            out[_fill(target, m)] = part.contiguous()
    return out


def state_dict_from_hf(state_dict: Mapping[str, "torch.Tensor"], model_type: str) -> dict:
    """A modernbert or modernbert-decoder state dict -> ettin names (ModernBertForMaskedLM's), by
    `STATE_DICT_MAP` read backwards; a name the table does not know is kept. A split tensor with a
    part missing raises KeyError naming that part."""
    arch = ARCH_OF_MODEL_TYPE.get(model_type, "encoder")
    out: dict = {}
    parts: dict[str, tuple[Rule, re.Match, dict[int, torch.Tensor]]] = {}
    for name, tensor in state_dict.items():
        hit = next(((r, j, m) for p, r, j in _FROM_HF[arch] if (m := p.fullmatch(name))), None)
        if hit is None:
            out[name] = tensor
            continue
        rule, j, m = hit
        if len(rule.names(arch)) == 1:
            out[_fill(rule.ettin, m)] = tensor
        else:
            parts.setdefault(_fill(rule.ettin, m), (rule, m, {}))[2][j] = tensor
    if parts:
        import torch

        for target, (rule, m, got) in parts.items():
            names = rule.names(arch)
            missing = [_fill(names[j], m) for j in range(len(names)) if j not in got]
            if missing:
                raise KeyError(missing[0])
            out[target] = torch.cat([got[j] for j in range(len(names))], dim=0)
    return out


def conversion_table_markdown() -> str:
    """The docs' parameter-name table (docs/architecture.md), rendered from `STATE_DICT_MAP`."""
    ranges = ("0:h", "h:2h", "2h:3h", "3h:4h")

    def cell(rule: Rule, arch: str) -> str:
        names = rule.names(arch)
        if names is None:
            return "not written"
        if names == (rule.ettin,):
            return "same"
        if len(names) == 1:
            return f"`{names[0]}`"
        return ", ".join(f"`{n}` = rows {ranges[j]}" for j, n in enumerate(names))

    lines = ["| ettin (both archs) | modernbert | modernbert-decoder |", "|---|---|---|"]
    for r in STATE_DICT_MAP:
        first = f"`{r.ettin}`" + (f" {r.note}" if r.note else "")
        lines.append(f"| {first} | {cell(r, 'encoder')} | {cell(r, 'decoder')} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ config


def config_to_hf(config: ModelConfig, *, dtype: str = "float32") -> dict[str, Any]:
    """The config.json transformers expects for `config.arch`.

    Besides the 5.x keys (`layer_types`, `rope_parameters`) it keeps the legacy ones
    (`global_rope_theta`, `local_rope_theta`, `global_attn_every_n_layers`) so that transformers 4.x
    reads the same model; `mask_token_id` and `unk_token_id` are ettin's own (ModernBERT's config has
    no slot for them) and transformers keeps them as plain attributes.
    """
    arch = config.arch
    d: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": MODEL_TYPES[arch],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "hidden_activation": "gelu",
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "initializer_cutoff_factor": config.initializer_cutoff_factor,
        "norm_eps": config.norm_eps,
        "norm_bias": False,
        "attention_bias": False,
        "attention_dropout": config.attention_dropout,
        "embedding_dropout": 0.0,
        "mlp_bias": False,
        "mlp_dropout": 0.0,
        "decoder_bias": True,
        "classifier_dropout": 0.0,
        "classifier_bias": False,
        "classifier_activation": "gelu",
        "tie_word_embeddings": True,
        "layer_types": list(config.layer_types),
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": float(config.global_rope_theta)},
            "sliding_attention": {"rope_type": "default", "rope_theta": float(config.local_rope_theta)},
        },
        "global_rope_theta": float(config.global_rope_theta),
        "local_rope_theta": float(config.local_rope_theta),
        "local_attention": config.local_attention,
        "global_attn_every_n_layers": config.global_attn_every_n_layers,
    }
    if arch == "encoder":
        d |= {
            "classifier_pooling": "cls",
            "sparse_prediction": False,
            "sparse_pred_ignore_index": -100,
            "deterministic_flash_attn": False,
        }
    else:
        d |= {"sliding_window": config.local_attention // 2, "use_cache": True}
    for name in (
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "cls_token_id",
        "sep_token_id",
        "mask_token_id",
        "unk_token_id",
    ):
        d[name] = getattr(config, name)
    d["dtype"] = dtype
    d["torch_dtype"] = dtype
    return dict(sorted(d.items()))


def _theta(d: Mapping, layer_type: str, legacy_key: str, path) -> float:
    params = d.get("rope_parameters") or {}
    if params and not ({"full_attention", "sliding_attention"} & set(params)):
        params = {"full_attention": params, "sliding_attention": params}  # one dict for all layers
    p = dict(params.get(layer_type) or {})
    scaling = d.get("rope_scaling")
    if isinstance(scaling, Mapping):
        p |= dict(scaling)
    kind = p.get("rope_type", p.get("type", "default"))
    if kind != "default":
        raise EttinError(
            f"RoPE type '{kind}' for {layer_type} layers is not supported",
            path=path,
            field="rope_parameters",
            fix="ettin implements plain RoPE ('default'); convert the model without RoPE scaling",
        )
    if "rope_theta" in p:
        return float(p["rope_theta"])
    if legacy_key in d:
        return float(d[legacy_key])
    return HF_DEFAULT_THETA[layer_type]


def config_from_hf(
    d: Mapping[str, Any],
    *,
    path: object = None,
    arch: str | None = None,
    tokenizer_ids: Mapping[str, int] | None = None,
) -> ModelConfig:
    """A ModelConfig from a modernbert / modernbert-decoder config.json (5.x or legacy keys).

    The result loads exactly as transformers 5.x would build the model: a missing theta takes
    transformers' default for that layer type, a decoder's window comes from `local_attention`.
    `arch` overrides the config's own arch (reading an encoder as a decoder or back); `tokenizer_ids`
    (the folder's tokenizer's special ids, see `ettin.hf.loading.tokenizer_special_ids`) fill the ids a
    ModernBERT config does not carry.
    """
    model_type = d.get("model_type")
    if model_type is None:
        raise EttinError(
            "config.json has no 'model_type'",
            path=path,
            field="model_type",
            fix="this does not look like a Hugging Face model config",
        )
    if not isinstance(model_type, str) or model_type not in ARCH_OF_MODEL_TYPE:
        raise EttinError(
            f"is a '{model_type}' model, not ModernBERT",
            path=path,
            field="model_type",
            fix="ettin reads model_type 'modernbert' (encoders) and 'modernbert-decoder' (decoders)",
        )
    own_arch = ARCH_OF_MODEL_TYPE[model_type]
    for key, want in (
        ("norm_bias", False),
        ("attention_bias", False),
        ("mlp_bias", False),
        ("decoder_bias", True),
        ("tie_word_embeddings", True),
    ):
        if key in d and bool(d[key]) != want:
            raise EttinError(
                f"{key}={d[key]} is not supported (ettin's ModernBERT has {key}={want})", path=path, field=key
            )
    act = d.get("hidden_activation", "gelu")
    if act != "gelu":
        raise EttinError(
            f"hidden_activation '{act}' is not supported",
            path=path,
            field="hidden_activation",
            fix="ettin implements GeGLU with exact GELU ('gelu')",
        )
    try:
        n_layers = int(d["num_hidden_layers"])
        every = int(d.get("global_attn_every_n_layers", 3))
        for name, value, high in (("num_hidden_layers", n_layers, 4096), ("global_attn_every_n_layers", every, 4096)):
            if not 1 <= value <= high:  # before a list of that many layer types is built
                message = (
                    f"{name} must be a positive integer, got {value}"
                    if value < 1
                    else f"{name} {value} is beyond what ettin builds (at most {high})"
                )
                raise EttinError(message, path=path, field=name)
        layer_types = d.get("layer_types") or [
            "full_attention" if i % every == 0 else "sliding_attention" for i in range(n_layers)
        ]
        if d.get("local_attention") is not None:
            local = int(d["local_attention"])
        elif d.get("sliding_window") is not None:
            local = 2 * int(d["sliding_window"])
        else:
            local = 128
        vocab_size = int(d.get("vocab_size", MODERNBERT_VOCAB_SIZE))
        kw: dict[str, Any] = dict(
            arch=arch or own_arch,
            vocab_size=vocab_size,
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=n_layers,
            num_attention_heads=int(d["num_attention_heads"]),
            global_attn_every_n_layers=every,
            local_attention=local,
            global_rope_theta=_theta(d, "full_attention", "global_rope_theta", path),
            local_rope_theta=_theta(d, "sliding_attention", "local_rope_theta", path),
            max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
            norm_eps=float(d.get("norm_eps", 1e-5)),
            initializer_range=float(d.get("initializer_range", 0.02)),
            initializer_cutoff_factor=float(d.get("initializer_cutoff_factor", 2.0)),
            attention_dropout=float(d.get("attention_dropout", 0.0)),
            layer_types=list(layer_types),
        )
    except KeyError as exc:
        raise EttinError(
            f"config.json lacks the required key {exc.args[0]!r}", path=path, field=str(exc.args[0])
        ) from None
    except (TypeError, ValueError) as exc:
        raise EttinError(f"config.json has a malformed value: {exc}", path=path) from None
    kw |= _special_ids(d, vocab_size, tokenizer_ids or {})
    return ModelConfig(**kw)


def _special_ids(d: Mapping, vocab_size: int, from_tok: Mapping[str, int]) -> dict[str, int]:
    """Special ids: the config's, then the tokenizer's (for the ids ModernBERT configs do not carry),
    then ModernBERT's defaults, or the small-vocabulary layout when those would not fit."""
    fallback = special_ids_for(vocab_size) if vocab_size < MODERNBERT_VOCAB_SIZE else dict(MODERNBERT_SPECIAL_IDS)
    out = {}
    for name in MODERNBERT_SPECIAL_IDS:
        value = d.get(name)
        if isinstance(value, list):  # eos_token_id may be a list in transformers configs
            value = value[0] if value else None
        if value is None:
            value = from_tok.get(name)
        if value is None:
            value = fallback[name]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise EttinError(f"config.json: {name} must be a token id (an integer), got {value!r}"[:200], field=name)
        out[name] = value
    return out
