"""Writing an EttinModel as a Hugging Face folder (`save_pretrained`): the adapter's names and
config.json, written by `ettin.hf.files.write_model_folder` in one atomic step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ettin.errors import EttinError
from ettin.hf.adapter import config_to_hf, state_dict_to_hf
from ettin.hf.files import write_model_folder
from ettin.io import claim_out_dir
from ettin.tokenizer import check_tokenizer_dir

if TYPE_CHECKING:
    from ettin.model import EttinModel


def model_dtype(model: "EttinModel") -> str:
    import torch

    dtypes = {p.dtype for p in model.parameters()}
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if len(dtypes) != 1 or next(iter(dtypes)) not in names:
        raise ValueError(f"model parameters have dtypes {dtypes}; expected one of {list(names.values())}")
    return names[dtypes.pop()]


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
    out_dir = Path(out_dir)
    config = model.config
    claim_out_dir(out_dir, overwrite)  # refuse before anything is converted
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        if not hasattr(tokenizer, "save_pretrained"):
            raise TypeError(f"tokenizer must be a folder or have save_pretrained, got {type(tokenizer).__name__}")
    elif tokenizer is not None:
        tokenizer = Path(tokenizer)
        if not (tokenizer / "tokenizer.json").is_file():
            raise EttinError(
                "is not a tokenizer directory (no tokenizer.json)",
                path=tokenizer,
                fix="give the folder written by `ettin tokenizer ...` or a model folder with a tokenizer",
            )
        check_tokenizer_dir(tokenizer, config)
    if not model.head_is_tied:
        raise ValueError("the vocabulary projection is not tied to the embedding; the HF formats require tying")
    dtype = model_dtype(model)
    tensors = state_dict_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, config.arch, config)
    json_files: dict[str, Any] = {"config.json": config_to_hf(config, dtype=dtype)}
    if config.arch == "decoder":
        json_files["generation_config.json"] = {
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
        }
    from ettin.hf.clients import write_client_files

    return write_model_folder(
        out_dir,
        tensors,
        json_files,
        tokenizer=tokenizer,
        arch=config.arch,
        overwrite=overwrite,
        # so transformers, sentence-transformers and mteb read the export as ettin does
        finish=lambda folder: write_client_files(folder, config),
    )
