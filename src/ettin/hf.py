"""Conversion to and from transformers' `modernbert` and `modernbert-decoder` formats.

ettin's state dict uses ModernBertForMaskedLM's names for both archs, so an encoder export is the
identity and a decoder export is a short table: split the fused QKV rows, rename `head` to `lm_head`.
Reading is the mirror image and accepts what transformers 4.x and 5.x write (legacy and current
config keys, with or without the tied `decoder.weight`, one file or an index of shards).

Weights are read only from safetensors. A pickle checkpoint (`pytorch_model.bin`) is refused, never
opened: unpickling runs arbitrary code from the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ettin import runs
from ettin.config import (
    MODERNBERT_SPECIAL_IDS,
    MODERNBERT_VOCAB_SIZE,
    SIZES,
    ModelConfig,
    config_for_size,
    special_ids_for,
)
from ettin.errors import EttinError
from ettin.io import atomic_dir, atomic_write_json

if TYPE_CHECKING:
    import torch

    from ettin.model import EttinModel

MODEL_TYPES = {"encoder": "modernbert", "decoder": "modernbert-decoder"}
ARCH_OF_MODEL_TYPE = {"modernbert": "encoder", "modernbert-decoder": "decoder", "modernbert_decoder": "decoder"}
ARCHITECTURES = {"encoder": "ModernBertForMaskedLM", "decoder": "ModernBertDecoderForCausalLM"}
HEAD_PREFIX = {"encoder": "head.", "decoder": "lm_head."}

# Defaults transformers 5.x applies when a config carries no theta for a layer type; mirrored so that a
# model loads into ettin exactly as it loads into transformers.
HF_DEFAULT_THETA = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Our name (= modernbert name) -> modernbert-decoder name, per layer i. Wqkv rows are Q, then K, then V.
CONVERSION_TABLE: tuple[tuple[str, str, str], ...] = (
    (
        "model.embeddings.tok_embeddings.weight",
        "model.embeddings.tok_embeddings.weight",
        "model.embeddings.tok_embeddings.weight",
    ),
    ("model.embeddings.norm.weight", "model.embeddings.norm.weight", "model.embeddings.norm.weight"),
    (
        "model.layers.{i}.attn_norm.weight (i >= 1)",
        "model.layers.{i}.attn_norm.weight",
        "model.layers.{i}.attn_norm.weight",
    ),
    (
        "model.layers.{i}.attn.Wqkv.weight [3h, h]",
        "model.layers.{i}.attn.Wqkv.weight",
        "model.layers.{i}.attn.q_proj.weight, k_proj.weight, v_proj.weight (rows 0:h, h:2h, 2h:3h)",
    ),
    ("model.layers.{i}.attn.Wo.weight", "model.layers.{i}.attn.Wo.weight", "model.layers.{i}.attn.Wo.weight"),
    ("model.layers.{i}.mlp_norm.weight", "model.layers.{i}.mlp_norm.weight", "model.layers.{i}.mlp_norm.weight"),
    ("model.layers.{i}.mlp.Wi.weight [2I, h]", "model.layers.{i}.mlp.Wi.weight", "model.layers.{i}.mlp.Wi.weight"),
    ("model.layers.{i}.mlp.Wo.weight", "model.layers.{i}.mlp.Wo.weight", "model.layers.{i}.mlp.Wo.weight"),
    ("model.final_norm.weight", "model.final_norm.weight", "model.final_norm.weight"),
    ("head.dense.weight", "head.dense.weight", "lm_head.dense.weight"),
    ("head.norm.weight", "head.norm.weight", "lm_head.norm.weight"),
    ("decoder.weight (tied)", "not written (tied to the embedding)", "not written (tied to the embedding)"),
    ("decoder.bias", "decoder.bias", "decoder.bias"),
)


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
    d: Mapping[str, Any], *, path: object = None, arch: str | None = None, tokenizer_dir: Path | None = None
) -> ModelConfig:
    """A ModelConfig from a modernbert / modernbert-decoder config.json (5.x or legacy keys).

    The result loads exactly as transformers 5.x would build the model: a missing theta takes
    transformers' default for that layer type, a decoder's window comes from `local_attention`.
    `arch` overrides the config's own arch (reading an encoder as a decoder or back).
    """
    model_type = d.get("model_type")
    if model_type is None:
        raise EttinError(
            "config.json has no 'model_type'",
            path=path,
            field="model_type",
            fix="this does not look like a Hugging Face model config",
        )
    if model_type not in ARCH_OF_MODEL_TYPE:
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
    kw |= _special_ids(d, vocab_size, tokenizer_dir)
    return ModelConfig(**kw)


def _special_ids(d: Mapping, vocab_size: int, tokenizer_dir: Path | None) -> dict[str, int]:
    """Special ids: the config's, then the tokenizer's (for the ids ModernBERT configs do not carry),
    then ModernBERT's defaults, or the small-vocabulary layout when those would not fit."""
    fallback = special_ids_for(vocab_size) if vocab_size < MODERNBERT_VOCAB_SIZE else dict(MODERNBERT_SPECIAL_IDS)
    from_tok = _tokenizer_special_ids(tokenizer_dir) if tokenizer_dir is not None else {}
    out = {}
    for name in MODERNBERT_SPECIAL_IDS:
        value = d.get(name)
        if isinstance(value, list):  # eos_token_id may be a list in transformers configs
            value = value[0] if value else None
        if value is None:
            value = from_tok.get(name)
        if value is None:
            value = fallback[name]
        out[name] = int(value)
    return out


def _tokenizer_special_ids(tok_dir: Path) -> dict[str, int]:
    """[UNK]/[MASK] (and friends) ids straight from tokenizer.json, without loading transformers."""
    f = tok_dir / "tokenizer.json"
    if not f.is_file():
        return {}
    try:
        added = json.loads(f.read_text(encoding="utf-8")).get("added_tokens", [])
    except (OSError, json.JSONDecodeError):
        return {}
    by_content = {a.get("content"): a.get("id") for a in added if isinstance(a, dict)}
    names = {
        "unk_token_id": "[UNK]",
        "cls_token_id": "[CLS]",
        "sep_token_id": "[SEP]",
        "pad_token_id": "[PAD]",
        "mask_token_id": "[MASK]",
    }
    return {name: by_content[tok] for name, tok in names.items() if isinstance(by_content.get(tok), int)}


# ------------------------------------------------------------------------------------ state dicts


def state_dict_to_hf(state_dict: Mapping[str, "torch.Tensor"], arch: str, config: ModelConfig) -> dict:
    """ettin names -> the names of `arch`'s transformers class. The tied `decoder.weight` is left out,
    as transformers' own save_pretrained does."""
    out = {}
    h = config.hidden_size
    for name, tensor in state_dict.items():
        if name == "decoder.weight":
            continue
        if arch == "decoder":
            if name.endswith(".attn.Wqkv.weight"):
                base = name[: -len("Wqkv.weight")]
                if tensor.shape[0] != 3 * h:
                    raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected [{3 * h}, {h}]")
                q, k, v = tensor.split(h, dim=0)
                out[base + "q_proj.weight"] = q.contiguous()
                out[base + "k_proj.weight"] = k.contiguous()
                out[base + "v_proj.weight"] = v.contiguous()
                continue
            if name.startswith("head."):
                name = "lm_head." + name[len("head.") :]
        out[name] = tensor.contiguous()
    return out


def state_dict_from_hf(state_dict: Mapping[str, "torch.Tensor"], model_type: str) -> dict:
    """A modernbert or modernbert-decoder state dict -> ettin names (ModernBertForMaskedLM's)."""
    import torch

    out = dict(state_dict)
    if ARCH_OF_MODEL_TYPE.get(model_type) == "decoder":
        out = {}
        qkv: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in state_dict.items():
            m = re.fullmatch(r"(model\.layers\.\d+\.attn\.)([qkv])_proj\.weight", name)
            if m:
                qkv.setdefault(m.group(1), {})[m.group(2)] = tensor
                continue
            if name.startswith("lm_head."):
                name = "head." + name[len("lm_head.") :]
            out[name] = tensor
        for base, parts in qkv.items():
            missing = [f"{base}{p}_proj.weight" for p in "qkv" if p not in parts]
            if missing:
                raise KeyError(missing[0])
            out[base + "Wqkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# -------------------------------------------------------------------------------------- safetensors


def _check_safetensors(path: Path) -> None:
    """Catch a truncated or damaged file from its header before safetensors reads it."""
    size = path.stat().st_size
    fix = "the file is truncated or corrupt; copy or export it again"
    if size < 8:
        raise EttinError(f"is truncated or corrupt ({size} bytes, not a safetensors file)", path=path, fix=fix)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > min(size - 8, 100_000_000):
            raise EttinError(
                f"is truncated or corrupt (header length {n} for a file of {size} bytes)", path=path, fix=fix
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise EttinError("is truncated or corrupt (unreadable safetensors header)", path=path, fix=fix) from None
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError):
        raise EttinError("is corrupt (malformed safetensors header)", path=path, fix=fix) from None
    if 8 + n + end != size:
        raise EttinError(
            f"is truncated or corrupt: the header describes {8 + n + end:,} bytes, the file has {size:,}",
            path=path,
            fix=fix,
        )


def _read_safetensors(path: Path) -> dict[str, "torch.Tensor"]:
    _check_safetensors(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise EttinError(
            f"is corrupt: {exc}".splitlines()[0], path=path, fix="copy or export the model again"
        ) from None


def _read_weights(model_dir: Path) -> dict[str, "torch.Tensor"]:
    single, index = model_dir / WEIGHTS_NAME, model_dir / WEIGHTS_INDEX_NAME
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EttinError("is not a valid safetensors index (no 'weight_map')", path=index) from None
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            f = model_dir / shard
            if Path(shard).name != shard or not f.is_file():
                raise EttinError(
                    f"names the shard '{shard}', which is missing", path=index, fix="copy the complete model folder"
                )
            out |= _read_safetensors(f)
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise EttinError(
                f"lists {missing[0]} but no shard holds it", path=index, fix="copy the complete model folder"
            )
        return out
    pickles = [p for p in PICKLE_NAMES if (model_dir / p).is_file()]
    if pickles:
        raise EttinError(
            f"has only pickle weights ({pickles[0]}); ettin does not open them, because unpickling can run "
            "arbitrary code from the file",
            path=model_dir,
            fix="in a trusted environment load it with transformers and call "
            "model.save_pretrained(out_dir, safe_serialization=True), then use out_dir",
        )
    others = sorted(p.name for p in model_dir.glob("*.safetensors"))
    raise EttinError(
        f"has no weights ({WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} missing"
        + (f"; found {', '.join(others)}" if others else "")
        + ")",
        path=model_dir,
        fix="copy the complete model folder, or export one with `ettin export`",
    )


# ------------------------------------------------------------------------------------- tokenizer


def _tokenizer_size(tok_dir: Path) -> int | None:
    """Number of ids a tokenizer can emit (max id + 1), read from tokenizer.json."""
    f = tok_dir / "tokenizer.json"
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise EttinError("is not a readable tokenizer file", path=f) from None
    vocab = (raw.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [a["id"] for a in raw.get("added_tokens", []) if isinstance(a, dict) and isinstance(a.get("id"), int)]
    return max(ids) + 1 if ids else None


def _check_vocab_fits(tok_dir: Path, config: ModelConfig) -> None:
    n = _tokenizer_size(tok_dir)
    if n is not None and n > config.vocab_size:
        raise EttinError(
            f"the tokenizer emits ids up to {n - 1} but the model's vocab_size is {config.vocab_size}",
            path=tok_dir / "tokenizer.json",
            field="vocab_size",
            fix="use the tokenizer the model was made for, or build the model with a larger vocab_size",
        )


def check_tokenizer(tok_dir: Path, config: ModelConfig) -> None:
    """The tokenizer must not emit ids past the vocabulary and must agree on the special ids it has."""
    _check_vocab_fits(tok_dir, config)
    try:
        from ettin.tokenizer import check_tokenizer_fits, load_tokenizer, special_token_ids
    except ImportError:
        return
    tok = load_tokenizer(tok_dir)
    ids = special_token_ids(tok)
    if all(v is not None for v in ids.values()):
        check_tokenizer_fits(tok, config, path=tok_dir)
        return
    # Hub tokenizers often leave some roles (bos/eos) unset: check only the ids the tokenizer defines.
    wrong = [
        f"{k}: tokenizer {v}, model {getattr(config, k)}"
        for k, v in ids.items()
        if v is not None and v != getattr(config, k)
    ]
    if wrong:
        raise EttinError(
            "the tokenizer's special-token ids differ from the model config's (" + "; ".join(wrong) + ")",
            path=tok_dir,
            field=wrong[0].split(":")[0],
            fix="use the tokenizer the model was made for",
        )


def _tokenizer_files(tok_dir: Path) -> list[Path]:
    return [tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()]


# ----------------------------------------------------------------------------------------- writing


def _model_dtype(model: "EttinModel") -> str:
    import torch

    dtypes = {p.dtype for p in model.parameters()}
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if len(dtypes) != 1 or next(iter(dtypes)) not in names:
        raise ValueError(f"model parameters have dtypes {dtypes}; expected one of {list(names.values())}")
    return names[dtypes.pop()]


def _prepare_out(out_dir: Path, overwrite: bool) -> bool:
    """Whether atomic_dir must replace an existing folder; refuses a non-empty one without overwrite."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise EttinError("exists and is not a directory", path=out_dir, fix="choose another output path")
    if any(out_dir.iterdir()) and not overwrite:
        raise EttinError("exists and is not empty", path=out_dir, fix="choose a new folder or pass --overwrite")
    return True


def save_pretrained(
    model: "EttinModel",
    out_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | Any = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write `model` as a Hugging Face folder transformers loads with AutoModelForMaskedLM (encoder) or
    AutoModelForCausalLM (decoder): config.json, model.safetensors, generation_config.json for a decoder,
    and the tokenizer's files when `tokenizer` (a folder, or an object with save_pretrained) is given.

    The folder appears complete or not at all.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    config = model.config
    replace = _prepare_out(out_dir, overwrite)
    tok_dir = None
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        if not hasattr(tokenizer, "save_pretrained"):
            raise TypeError(f"tokenizer must be a folder or have save_pretrained, got {type(tokenizer).__name__}")
    elif tokenizer is not None:
        tok_dir = Path(tokenizer)
        if not (tok_dir / "tokenizer.json").is_file():
            raise EttinError(
                "is not a tokenizer directory (no tokenizer.json)",
                path=tok_dir,
                fix="give the folder written by `ettin tokenizer ...` or a model folder with a tokenizer",
            )
        check_tokenizer(tok_dir, config)
    if model.decoder.weight.data_ptr() != model.model.embeddings.tok_embeddings.weight.data_ptr():
        raise ValueError("the vocabulary projection is not tied to the embedding; the HF formats require tying")
    dtype = _model_dtype(model)
    tensors = state_dict_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, config.arch, config)
    with atomic_dir(out_dir, overwrite=replace) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", config_to_hf(config, dtype=dtype))
        if config.arch == "decoder":
            atomic_write_json(
                tmp / "generation_config.json",
                {
                    "bos_token_id": config.bos_token_id,
                    "eos_token_id": config.eos_token_id,
                    "pad_token_id": config.pad_token_id,
                },
            )
        if tok_dir is not None:
            from ettin.tokenizer import tokenizer_json_for

            for f in _tokenizer_files(tok_dir):
                if f.name == "tokenizer.json":  # the template follows the arch (see ettin.tokenizer.TEMPLATES)
                    (tmp / f.name).write_text(tokenizer_json_for(f, config.arch), encoding="utf-8")
                else:
                    shutil.copyfile(f, tmp / f.name)
        elif tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        from ettin.hf_clients import write_client_files

        write_client_files(tmp, config)  # so transformers / sentence-transformers / mteb read it as ettin does
    return out_dir


# ----------------------------------------------------------------------------------------- reading


def resolve(path: str | os.PathLike, revision: str | None = None) -> Path:
    """The local model folder `path` (and `revision`) stand for: a model folder, a training run's
    checkpoint (through ettin.runs), or a hub repository downloaded for users with network."""
    p = Path(path).expanduser()
    if p.is_dir() and runs.is_run_dir(p):
        return runs.resolve_revision(p, revision)
    if p.is_dir():
        if revision is not None:
            raise EttinError(
                f"is a model folder, so --revision {revision} does not apply",
                path=p,
                field="revision",
                fix="pass the training run's folder to pick a checkpoint, or drop --revision",
            )
        return p
    if p.exists():
        raise EttinError("is a file, not a model folder", path=p, fix="give the folder that holds config.json")
    text = str(path)
    # `runs/demo` with an existing `runs/` is a local typo, not a hub repository
    if _HUB_ID.match(text) and not text.startswith((".", "~")) and not p.parent.exists():
        return _hub_download(text, revision)
    raise EttinError("no such model folder", path=p, fix="check the path; `ettin export` and `ettin init` write one")


def _hub_download(repo_id: str, revision: str | None) -> Path:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline:
        raise EttinError(
            f"is not a local folder, and HF_HUB_OFFLINE is set so the hub repository '{repo_id}' cannot be fetched",
            path=repo_id,
            fix="give a local model folder, or unset HF_HUB_OFFLINE on a machine with network",
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id=repo_id,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
            )
        )
    except Exception as exc:  # network, auth, missing repo: all user-fixable
        raise EttinError(
            f"is not a local folder, and fetching it from the hub failed: {type(exc).__name__}: {exc}".splitlines()[0],
            path=repo_id,
            fix="check the path, or the repository name and your network",
        ) from None


def read_config(model_dir: Path, *, arch: str | None = None) -> ModelConfig:
    """The ModelConfig of a model folder (`arch` reads it as the other arch)."""
    d = _config_json(model_dir)
    tok_dir = model_dir if (model_dir / "tokenizer.json").is_file() else None
    return config_from_hf(d, path=model_dir / "config.json", arch=arch, tokenizer_dir=tok_dir)


def _config_json(model_dir: Path) -> dict:
    f = model_dir / "config.json"
    if not f.is_file():
        hint = " (it holds a tokenizer only)" if (model_dir / "tokenizer.json").is_file() else ""
        raise EttinError(
            f"is not a model folder: config.json is missing{hint}",
            path=model_dir,
            fix="give the folder written by `ettin export`, `ettin init` or transformers' save_pretrained",
        )
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EttinError(f"is not valid JSON ({exc})", path=f) from None
    if not isinstance(d, dict):
        raise EttinError("is not a JSON object", path=f)
    return d


def _dtype_name(dtype, model_dir: Path) -> Any:
    """None -> float32 (what training and CPU inference want); "auto" -> the dtype the folder records.

    Checked before any weights are read, and without importing torch for a name."""
    if dtype is not None and not isinstance(dtype, str):
        return dtype  # a torch.dtype
    if dtype is None:
        return "float32"
    if dtype.lower() == "auto":
        d = _config_json(model_dir)
        dtype = str(d.get("dtype") or d.get("torch_dtype") or "float32")
    name = DTYPES.get(dtype.lower())
    if name is None:
        raise EttinError(f"unknown dtype '{dtype}'", field="dtype", fix="use float32, bfloat16, float16 or auto")
    return name


def _build(config: ModelConfig, *, init: bool = False) -> "EttinModel":
    from ettin.model import EttinModel

    return EttinModel(config, init=init)


def load_dir(model_dir: Path, *, arch: str | None = None, dtype=None) -> "EttinModel":
    """Build an EttinModel from a local modernbert / modernbert-decoder folder."""
    config = read_config(model_dir, arch=arch)
    dtype = _dtype_name(dtype, model_dir)
    model_type = _config_json(model_dir)["model_type"]
    if (model_dir / "tokenizer.json").is_file():
        _check_vocab_fits(model_dir, config)
    raw = _read_weights(model_dir)
    if "model.embeddings.tok_embeddings.weight" not in raw and "embeddings.tok_embeddings.weight" in raw:
        raise EttinError(
            "holds only a backbone (saved from ModernBertModel, no prediction head)",
            path=model_dir,
            fix="export the masked-LM / causal-LM model (ModernBertForMaskedLM or ModernBertDecoderForCausalLM)",
        )
    try:
        sd = state_dict_from_hf(raw, model_type)
    except KeyError as exc:
        raise EttinError(
            f"the weights lack {exc.args[0]}", path=model_dir, fix="copy the complete model folder"
        ) from None
    model = _build(config)
    expected = model.state_dict()
    sd.pop("decoder.weight", None)  # tied: transformers re-ties it to the embedding on load, so do we
    missing = sorted(k for k in expected if k not in sd and k != "decoder.weight")
    unexpected = sorted(k for k in sd if k not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if any(k.startswith("classifier.") for k in unexpected):
            fix = (
                "a fine-tuned classifier cannot be loaded as a language model; "
                "use the masked-LM or causal-LM export of the model"
            )
        else:
            fix = "the config.json and the weights come from different models"
        raise EttinError(f"the weights do not match the config ({'; '.join(parts)})", path=model_dir, fix=fix)
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise EttinError(
                f"weight {k} has shape {tuple(v.shape)}, the config implies {tuple(expected[k].shape)}",
                path=model_dir,
                fix="the config.json and the weights come from different models",
            )
    import torch

    model.load_state_dict(sd, strict=False)
    _tie(model)
    model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    model.eval()
    return model


def _tie(model: "EttinModel") -> None:
    """Make sure the output projection is the embedding (whatever the model's own tying does)."""
    emb = model.get_submodule("model.embeddings.tok_embeddings")
    dec = model.get_submodule("decoder")
    if dec.weight is not emb.weight:
        dec.weight = emb.weight


def load(path: str | os.PathLike, revision: str | None = None, *, arch: str | None = None, dtype=None) -> "EttinModel":
    """An EttinModel from any modernbert / modernbert-decoder folder, a training run (with `revision`),
    or, for users with network, a hub repository id.

    `arch` reads the weights as the other arch (encoder <-> decoder: the start of cross-objective
    training). `dtype`: None loads float32 whatever the file holds (what training and CPU inference
    want), "auto" keeps the dtype recorded in config.json, or name one (float32, bfloat16, float16).
    """
    if arch is not None and arch not in MODEL_TYPES:
        raise EttinError(f"unknown arch '{arch}'", field="arch", fix="use 'encoder' or 'decoder'")
    return load_dir(resolve(path, revision), arch=arch, dtype=dtype)


# ----------------------------------------------------------------------------------- conversions


def convert(model_or_dir: "EttinModel | str | os.PathLike", arch: str) -> "EttinModel":
    """The same weights as the other arch (encoder <-> decoder); the attention mask and the
    objective are the only difference, so this is a config change plus a state-dict copy."""
    if arch not in MODEL_TYPES:
        raise EttinError(f"unknown arch '{arch}'", field="arch", fix="use 'encoder' or 'decoder'")
    if isinstance(model_or_dir, (str, os.PathLike)):
        return load(model_or_dir, arch=arch)
    model = model_or_dir
    if model.config.arch == arch:
        return model
    new = _build(model.config.replace(arch=arch))
    new.load_state_dict(model.state_dict())
    _tie(new)
    p = next(model.parameters())
    return new.to(device=p.device, dtype=p.dtype).train(model.training)


def export(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    revision: str | None = None,
    arch: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    overwrite: bool = False,
    require_arch_change: bool = False,
) -> tuple[Path, "EttinModel"]:
    """Anything ettin can load -> a Hugging Face folder (with the source's tokenizer unless one is given)."""
    out = Path(out)
    _prepare_out(out, overwrite)  # fail before the (possibly slow) load
    src_dir = resolve(src, revision)
    config = read_config(src_dir)
    if arch is not None and arch not in MODEL_TYPES:
        raise EttinError(f"unknown arch '{arch}'", field="arch", fix="use 'encoder' or 'decoder'")
    if require_arch_change and arch == config.arch:
        raise EttinError(
            f"is already a{'n' if arch == 'encoder' else ''} {arch}",
            path=src_dir,
            field="arch",
            fix=f"use --arch {'decoder' if arch == 'encoder' else 'encoder'}, or `ettin export` to copy",
        )
    model = load_dir(src_dir, arch=arch)
    if tokenizer is None and (src_dir / "tokenizer.json").is_file():
        tokenizer = src_dir
    return save_pretrained(model, out, tokenizer, overwrite=overwrite), model


def init_model(
    size: str,
    arch: str,
    out: str | os.PathLike,
    *,
    vocab_size: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    seed: int = 21,
    overwrite: bool = False,
) -> tuple[Path, "EttinModel"]:
    """A freshly initialised model (the spec's truncated-normal init, seeded) written as an HF folder.

    With a tokenizer the vocabulary and special ids come from it; without one they are ModernBERT's,
    or for a small vocabulary `special_ids_for(vocab_size)`, and config.json records them.
    """
    out = Path(out)
    if arch not in MODEL_TYPES:
        raise EttinError(f"unknown arch '{arch}'", field="arch", fix="use 'encoder' or 'decoder'")
    _prepare_out(out, overwrite)
    if size not in SIZES:
        config_for_size(size)  # raises the unknown-size error before anything slow
    ids: dict[str, int] = {}
    if tokenizer is not None:
        tok_dir = Path(tokenizer)
        from ettin.tokenizer import load_tokenizer, round_vocab_size, special_token_ids

        tok = load_tokenizer(tok_dir)
        ids = {k: v for k, v in special_token_ids(tok).items() if v is not None}
        if vocab_size is None:
            vocab_size = round_vocab_size(len(tok))
        elif vocab_size < len(tok):
            raise EttinError(
                f"the tokenizer has {len(tok)} tokens but vocab_size is {vocab_size}",
                path=tok_dir,
                field="vocab_size",
                fix=f"leave vocab_size out (it defaults to {round_vocab_size(len(tok))}) or raise it",
            )
    vocab_size = MODERNBERT_VOCAB_SIZE if vocab_size is None else vocab_size
    config = config_for_size(size, arch, vocab_size, **ids)
    if tokenizer is not None:
        check_tokenizer(Path(tokenizer), config)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build(config, init=True)
    model.eval()
    return save_pretrained(model, out, tokenizer, overwrite=overwrite), model
