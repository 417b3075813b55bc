"""What `ettin init`, `ettin export` and `ettin convert` do, as library functions: they use the
format code in `ettin.hf` and add the command's policy (output folder checked before a slow load,
tokenizer carried over, seeded initialisation)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ettin.config import MODERNBERT_VOCAB_SIZE, SIZES, config_for_size
from ettin.errors import EttinError
from ettin.hf.adapter import check_arch
from ettin.hf.loading import load, load_dir, read_config, resolve
from ettin.hf.save import save_pretrained
from ettin.io import claim_out_dir
from ettin.tokenizer import check_tokenizer_dir

if TYPE_CHECKING:
    from ettin.model import EttinModel


def convert(model_or_dir: "EttinModel | str | os.PathLike", arch: str) -> "EttinModel":
    """The same weights as the other arch (encoder <-> decoder); the attention mask and the
    objective are the only difference, so this is a config change plus a state-dict copy."""
    check_arch(arch)
    if isinstance(model_or_dir, (str, os.PathLike)):
        return load(model_or_dir, arch=arch)
    model = model_or_dir
    if model.config.arch == arch:
        return model
    from ettin.model import EttinModel

    new = EttinModel(model.config.replace(arch=arch), init=False)
    new.load_state_dict(model.state_dict())
    new.tie_head()
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
    claim_out_dir(out, overwrite)  # fail before the (possibly slow) load
    src_dir = resolve(src, revision)
    config = read_config(src_dir)
    if arch is not None:
        check_arch(arch)
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
    check_arch(arch)
    claim_out_dir(out, overwrite)
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
        check_tokenizer_dir(Path(tokenizer), config)
    import torch

    from ettin.model import EttinModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EttinModel(config, init=True)
    model.eval()
    return save_pretrained(model, out, tokenizer, overwrite=overwrite), model
