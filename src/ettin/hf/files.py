"""The files of a Hugging Face model folder: safetensors read and validated, and the one atomic write.

Weights are read only from safetensors, after checking the header against the file size. A pickle
checkpoint (`pytorch_model.bin`) is refused, never opened: unpickling runs arbitrary code from the file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ettin.errors import EttinError
from ettin.io import atomic_dir, atomic_write_json, claim_out_dir

if TYPE_CHECKING:
    import torch

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


# ----------------------------------------------------------------------------------------- reading


def check_safetensors(path: Path) -> None:
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


def read_safetensors(path: Path) -> dict[str, "torch.Tensor"]:
    check_safetensors(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as exc:  # a damaged file the header check let through (bad dtype, bad offsets)
        raise EttinError(
            f"is corrupt: {exc}".splitlines()[0], path=path, fix="copy or export the model again"
        ) from None


def read_weights(model_dir: Path) -> dict[str, "torch.Tensor"]:
    single, index = model_dir / WEIGHTS_NAME, model_dir / WEIGHTS_INDEX_NAME
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except UnicodeDecodeError as exc:
            raise EttinError(
                f"is not UTF-8 text (byte {exc.start})", path=index, fix="copy the complete model folder again"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EttinError("is not a valid safetensors index (no 'weight_map')", path=index) from None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise EttinError(
                "must map weight names to shard file names",
                path=index,
                field="weight_map",
                fix="copy the complete model folder again",
            )
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            f = model_dir / shard
            if Path(shard).name != shard or not f.is_file():
                raise EttinError(
                    f"names the shard '{shard}', which is missing", path=index, fix="copy the complete model folder"
                )
            out |= read_safetensors(f)
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


# ----------------------------------------------------------------------------------------- writing


def tokenizer_files(tok_dir: Path) -> list[Path]:
    return [tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()]


def write_model_folder(
    out_dir: Path,
    tensors: Mapping[str, "torch.Tensor"],
    json_files: Mapping[str, Any],
    *,
    tokenizer: Path | Any = None,
    arch: str,
    overwrite: bool = False,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """Write `tensors` as model.safetensors, each of `json_files` (name -> object) and the tokenizer
    (a folder whose files are copied, tokenizer.json with `arch`'s template, or an object with
    save_pretrained) into `out_dir`, which appears complete or not at all. `finish(folder)` adds what
    else belongs in it before it is published."""
    from safetensors.torch import save_file

    replace = claim_out_dir(out_dir, overwrite)
    with atomic_dir(out_dir, overwrite=replace) as tmp:
        save_file(dict(tensors), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        for name, obj in json_files.items():
            atomic_write_json(tmp / name, obj)
        if isinstance(tokenizer, (str, os.PathLike)):
            from ettin.tokenizer import tokenizer_json_for

            for f in tokenizer_files(Path(tokenizer)):
                if f.name == "tokenizer.json":  # the template follows the arch (see ettin.tokenizer.TEMPLATES)
                    (tmp / f.name).write_text(tokenizer_json_for(f, arch), encoding="utf-8")
                else:
                    shutil.copyfile(f, tmp / f.name)
        elif tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if finish is not None:
            finish(tmp)
    return out_dir
