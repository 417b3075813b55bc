"""A tiny prepared corpus and recipe for the training tests.

`train_data`: 300 wiki summaries ("wiki") and 40 more kept apart ("heldout"), prepared with the shared
1,024-token tokenizer. `write_recipe(tmp_path, **changes)`: a three-phase recipe for the `tiny` size
with a few steps per phase (about 128 tokens a step), fp32, attention dropout on.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest
import yaml

from ettin.data.sources import builtin_texts

TINY_RECIPE = {
    "name": "tiny-test",
    "model": {"size": "tiny", "max_position_embeddings": 64, "attention_dropout": 0.1},
    "seed": 5,
    "precision": "fp32",
    "micro_batch_size": 2,
    "optimizer": {"lr": 3e-3, "weight_decay": 3e-4},
    "checkpoint": {"every_tokens": 256, "keep_last": 2},
    "eval": {"every_tokens": 512, "sequences": 4},
    "phases": [
        {
            "name": "pretrain",
            "tokens": 500,
            "seq_len": 32,
            "batch_size": 4,
            "batch_warmup_tokens": 128,
            "batch_warmup_min": 2,
            "lr": {"warmup_tokens": 128},
            "mask_rate": 0.3,
            "data": {"mixture": {"wiki": 1}},
        },
        {
            "name": "extension",
            "tokens": 200,
            "seq_len": 48,
            "batch_size": 3,
            "lr": {"schedule": "1-sqrt", "start": 1.0, "end": 0.5},
            "rope": {"global_theta": 160000, "local_theta": 160000},
            "data": {"mixture": {"wiki": 1}},
        },
        {
            "name": "decay",
            "tokens": 200,
            "seq_len": 48,
            "batch_size": 3,
            "mask_rate": 0.15,
            "lr": {"schedule": "1-sqrt", "start": 0.5, "end": 0.02},
            "rope": {"global_theta": 160000, "local_theta": 160000},
            "data": {"mixture": {"wiki": 1}},
        },
    ],
}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every training test runs with one torch thread (the root conftest's `one_thread`)."""


@pytest.fixture(scope="session")
def train_data(tmp_path_factory, small_tokenizer_dir) -> Path:
    from ettin.data.prepare import prepare

    root = tmp_path_factory.mktemp("train-corpus")
    texts = list(itertools.islice(builtin_texts("wiki"), 340))
    for name, part in (("wiki", texts[:300]), ("heldout", texts[300:])):
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for text in part:
                f.write(json.dumps({"text": text}) + "\n")
    out = root / "data"
    prepare([f"wiki=jsonl:{root / 'wiki.jsonl'}", f"heldout=jsonl:{root / 'heldout.jsonl'}"], small_tokenizer_dir, out)
    return out


def make_recipe(
    where: Path, tokenizer: Path, data: Path, changes: dict | None = None, name: str = "recipe.yaml"
) -> Path:
    """TINY_RECIPE with the tokenizer and data filled in; `changes` maps dotted fields to values."""
    raw = copy.deepcopy(TINY_RECIPE)
    raw["tokenizer"] = str(tokenizer)
    raw["data_dir"] = str(data)
    raw["eval"]["data"] = {"mixture": {"heldout": 1}}
    for key, value in (changes or {}).items():
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    where.mkdir(parents=True, exist_ok=True)
    path = where / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def write_recipe(train_data, small_tokenizer_dir):
    return lambda where, changes=None, name="recipe.yaml": make_recipe(
        where, small_tokenizer_dir, train_data, changes, name
    )


@pytest.fixture(scope="session")
def pair_run(tmp_path_factory, train_data, small_tokenizer_dir):
    """One uninterrupted three-phase pair run of the tiny recipe, shared read-only by several tests."""
    import torch

    from ettin.recipe import load_recipe
    from ettin.train.trainer import TrainOptions, train

    root = tmp_path_factory.mktemp("pair")
    recipe = make_recipe(root, small_tokenizer_dir, train_data)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(load_recipe(recipe), TrainOptions(out=root / "run", progress=False))
    finally:
        torch.set_num_threads(before)
    return recipe, result
