"""What an export carries so that standard clients read it the way ettin does.

`write_client_files(out_dir, config)` runs on a folder that already holds config.json, the weights and
(optionally) the tokenizer's files, and adds or corrects:

- `tokenizer_config.json`: `model_max_length` = the model's `max_position_embeddings` (so
  `tokenizer(text, truncation=True)` never returns more positions than the model has), and
  `padding_side` = "left" for decoders (a batch handed to `generate` keeps every prompt's last token at
  the end) and "right" for encoders;
- a sentence-transformers configuration (`modules.json`, `sentence_bert_config.json`,
  `1_Pooling/config.json`, `config_sentence_transformers.json`) with the arch's pooling: mean over
  tokens for encoders, the last token for decoders, cosine similarity, no normalisation module. So
  `SentenceTransformer(EXPORT)` needs no arguments, and mteb (which wraps it) embeds as ettin does.

The files use the classic layout (`sentence_transformers.models.Transformer` / `.Pooling`, the
`pooling_mode_*` flags), which sentence-transformers 2.x through 6.x read. No torch here.
The decoder convention (what the last token is) is explained in docs/evaluation.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from ettin.config import ModelConfig
from ettin.io import atomic_write_json

# The paper's pooling per arch; equal to ettin.eval.pooling.default_pooling (a test keeps them equal).
ARCH_POOLING = {"encoder": "mean", "decoder": "last"}
PADDING_SIDE = {"encoder": "right", "decoder": "left"}
_ST_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "last": "pooling_mode_lasttoken",
}
POOLING_DIR = "1_Pooling"
CLIENT_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    f"{POOLING_DIR}/config.json",
)


def tokenizer_settings(config: ModelConfig) -> dict:
    """The tokenizer_config.json keys an export of `config` must carry."""
    return {
        "model_max_length": int(config.max_position_embeddings),
        "padding_side": PADDING_SIDE[config.arch],
        "truncation_side": "right",
    }


def sentence_transformers_files(config: ModelConfig) -> dict[str, dict | list]:
    """{relative path: JSON content} of the sentence-transformers configuration for `config`."""
    pooling = ARCH_POOLING[config.arch]
    pool_cfg: dict = {"word_embedding_dimension": int(config.hidden_size)}
    pool_cfg |= {flag: how == pooling for how, flag in _ST_FLAGS.items()}
    pool_cfg["include_prompt"] = True
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
        ],
        "sentence_bert_config.json": {"max_seq_length": int(config.max_position_embeddings), "do_lower_case": False},
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        f"{POOLING_DIR}/config.json": pool_cfg,
    }


def write_client_files(out_dir: str | Path, config: ModelConfig) -> None:
    """Correct the tokenizer settings and add the sentence-transformers configuration in `out_dir`
    (a folder being written; each file is written atomically). Without a tokenizer nothing is added:
    sentence-transformers cannot load a model that has none."""
    out_dir = Path(out_dir)
    tok_cfg = out_dir / "tokenizer_config.json"
    if tok_cfg.is_file():
        d = json.loads(tok_cfg.read_text(encoding="utf-8"))
        atomic_write_json(tok_cfg, d | tokenizer_settings(config))
    if not (out_dir / "tokenizer.json").is_file():
        return
    for name, content in sentence_transformers_files(config).items():
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / name, content)
