"""Where a run's weights start: fresh (seeded spec initialisation) or another model's weights.

Cross-objective training (ettin-spec.md section 5) starts from a checkpoint of the other arch (a run's
model folder and a tag) or from any Hugging Face modernbert / modernbert-decoder folder, and continues
with the other objective: encoder -> decoder trains next-token prediction under the causal mask;
decoder -> encoder trains masked LM (or masked next-token prediction) with bidirectional attention.
Both archs name their weights alike, so switching arch is a config change plus a state-dict copy.

Continued pretraining starts the same way from a model of the recipe's own arch: a run's tag, a
folder, or a released checkpoint on the hub (`init: {path: jhu-clsp/ettin-encoder-150m, revision:
ext1000}`), resolved through `ettin.hf.resolve` (`resolve_init`) before anything is written. An HF
folder holds weights only, so the optimizer starts fresh whatever the source (docs/training.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ettin.config import ModelConfig, config_for_size
from ettin.errors import EttinError
from ettin.model import TIED_KEY, EttinModel
from ettin.recipe import Recipe


def recipe_config(recipe: Recipe, arch: str, vocab_size: int, special_ids: dict) -> ModelConfig:
    """The model a recipe describes, with the tokenizer's vocabulary and ids and phase 0's RoPE."""
    m = recipe.model
    shape = {
        k: getattr(m, k)
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        if getattr(m, k) is not None
    }
    common = dict(
        global_attn_every_n_layers=m.global_attn_every_n_layers,
        local_attention=m.local_attention,
        max_position_embeddings=m.max_position_embeddings,
        attention_dropout=m.attention_dropout,
        global_rope_theta=recipe.phases[0].rope.for_arch(arch)[0],
        local_rope_theta=recipe.phases[0].rope.for_arch(arch)[1],
        **special_ids,
    )
    if m.size is not None:
        return config_for_size(m.size, arch, vocab_size, **shape, **common)
    return ModelConfig(arch=arch, vocab_size=vocab_size, **shape, **common)


def fresh_model(recipe: Recipe, arch: str, vocab_size: int, special_ids: dict) -> EttinModel:
    """Seeded so that the encoder and the decoder of a pair start from the same weights."""
    config = recipe_config(recipe, arch, vocab_size, special_ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return EttinModel(config)


def resolve_init(recipe: Recipe) -> Path | None:
    """The local model folder the recipe's `init` stands for (a hub tag is downloaded), or None without
    one. Called before the run folder or any asset is written: a tag the source lacks stops the start
    with one line listing the tags it has."""
    if not recipe.init.path:
        return None
    from ettin import hf

    return Path(hf.resolve(recipe.init.path, recipe.init.revision))


def _an(arch: str) -> str:
    return "an" if arch == "encoder" else "a"


def init_model(recipe: Recipe, arch: str, path: str | Path, revision: str | None) -> tuple[EttinModel, Path]:
    """Weights from a run's model folder (at `revision`, default its latest tag), a folder of revisions,
    an HF folder or a hub repository (at `revision`), read as `arch`. With `init.same_arch` the weights
    must be of `arch` (a continuation, not a cross-objective start). Returns the model (training
    dropout from the recipe) and the folder it came from."""
    from ettin import hf

    source = hf.resolve(path, revision)
    if recipe.init.same_arch:
        have = hf.read_config(source).arch
        if have != arch:
            raise EttinError(
                f"holds {_an(have)} {have}, and the recipe continues {_an(arch)} {arch} (init.same_arch)",
                path=recipe.init.path,
                field="init.path",
                fix=f"pass --arch {have} to continue it as {_an(have)} {have}, "
                "or use a cross-objective recipe to change its arch",
            )
    loaded = hf.load_dir(source, arch=arch)
    check_size(loaded.config, recipe, source)
    config = loaded.config.replace(arch=arch, attention_dropout=recipe.model.attention_dropout)
    model = EttinModel(config, init=False)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if [k for k in missing if k != TIED_KEY] or unexpected:
        raise EttinError(f"the weights do not fit an {arch} ({missing[:1] or unexpected[:1]})", path=source)
    model.tie_head()
    return model.train(), source


_SHAPE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def _shape_text(shape: dict) -> str:
    return f"hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers"


def check_size(config: ModelConfig, recipe: Recipe, source: Path) -> None:
    """A recipe that names a size (the per-size cross-objective recipes) starts only from a model of that size."""
    size = recipe.model.size
    if size is None:
        return
    want = config_for_size(size, config.arch, config.vocab_size)
    got = {k: getattr(config, k) for k in _SHAPE}
    expected = {k: getattr(want, k) for k in _SHAPE}
    if got != expected:
        from ettin.config import SIZES

        match = [
            name
            for name in SIZES
            if {k: getattr(config_for_size(name, config.arch, config.vocab_size), k) for k in _SHAPE} == got
        ]
        what = f"a {match[0]}" if match else "of no known size"
        raise EttinError(
            f"the --init model is {what} ({_shape_text(got)}), not the {size} this recipe is for ({_shape_text(expected)})",
            path=source,
            field="model.size",
            fix=f"use the recipe for {match[0]} (e.g. {recipe.name.rsplit('-', 1)[0]}-{match[0]})"
            if match
            else "start from a model of the recipe's size, or set model.size=null",
        )


def check_fits(model: EttinModel, recipe: Recipe, tokenizer, tokenizer_path: Path) -> None:
    """The model can take every phase's sequences and reads the tokenizer's ids as they are meant."""
    from ettin.tokenizer import check_tokenizer_fits

    check_tokenizer_fits(tokenizer, model.config, tokenizer_path)
    for i, phase in enumerate(recipe.phases):
        model.config.check_seq_len(phase.seq_len, field=f"phases.{i}.seq_len")
