"""Conversion to and from transformers' `modernbert` and `modernbert-decoder` formats.

One job per module:

- `ettin.hf.adapter`: pure mappings, config.json <-> ModelConfig and the state-dict names
  (`STATE_DICT_MAP`, the one table both directions and the docs use);
- `ettin.hf.files`: the folder's files, safetensors read and validated (pickle refused), and the
  one atomic write;
- `ettin.hf.loading`: which folder a path, run, folder of revisions or hub id (and a revision) stands
  for, the revisions it lists, and loading it;
- `ettin.hf.save`: `save_pretrained`.

`ettin init`, `ettin export` and `ettin convert` are in `ettin.commands`.
"""

from ettin.hf.adapter import (
    ARCH_OF_MODEL_TYPE,
    ARCHITECTURES,
    HF_DEFAULT_THETA,
    MODEL_TYPES,
    STATE_DICT_MAP,
    Rule,
    config_from_hf,
    config_to_hf,
    conversion_table_markdown,
    state_dict_from_hf,
    state_dict_to_hf,
)
from ettin.hf.files import PICKLE_NAMES, TOKENIZER_FILES, WEIGHTS_INDEX_NAME, WEIGHTS_NAME, read_weights
from ettin.hf.loading import (
    DTYPES,
    HubUnavailableError,
    is_revisions_dir,
    list_revisions,
    load,
    load_dir,
    read_config,
    resolve,
)
from ettin.hf.save import save_pretrained
from ettin.tokenizer import check_tokenizer_dir as check_tokenizer

__all__ = [
    "ARCHITECTURES",
    "ARCH_OF_MODEL_TYPE",
    "DTYPES",
    "HF_DEFAULT_THETA",
    "MODEL_TYPES",
    "PICKLE_NAMES",
    "STATE_DICT_MAP",
    "TOKENIZER_FILES",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "HubUnavailableError",
    "Rule",
    "check_tokenizer",
    "config_from_hf",
    "config_to_hf",
    "conversion_table_markdown",
    "is_revisions_dir",
    "list_revisions",
    "load",
    "load_dir",
    "read_config",
    "read_weights",
    "resolve",
    "save_pretrained",
    "state_dict_from_hf",
    "state_dict_to_hf",
]
