"""Tiny random models for the evaluation tests (vocabulary 1,024 from the shared small tokenizer)."""

from __future__ import annotations

import pytest
import torch

from ettin.config import config_for_size
from ettin.eval.handle import EvalModel, load_eval_model


def tiny_model(arch: str, seed: int = 0):
    from ettin.model import EttinModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EttinModel(config_for_size("tiny", arch, 1024))


@pytest.fixture(scope="session")
def small_tokenizer(small_tokenizer_dir):
    from ettin.tokenizer import load_tokenizer

    return load_tokenizer(small_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_encoder(small_tokenizer) -> EvalModel:
    return load_eval_model(tiny_model("encoder"), tokenizer=small_tokenizer, name="encoder")


@pytest.fixture(scope="session")
def tiny_decoder(small_tokenizer) -> EvalModel:
    return load_eval_model(tiny_model("decoder"), tokenizer=small_tokenizer, name="decoder")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, small_tokenizer_dir):
    """A training run's layout: RUN/{encoder,decoder}/hf/{step1,step2}, written by the checkpoint module."""
    from ettin.train.checkpoint import write_hf_export

    run = tmp_path_factory.mktemp("runs") / "pair"
    for arch in ("encoder", "decoder"):
        for step, seed in ((1, 1), (2, 2)):
            info = {"step": step, "tokens": 1000 * step, "phase": 0, "phase_name": "pretraining", "phase_step": step}
            write_hf_export(run / arch, f"step{step}", tiny_model(arch, seed), info, tokenizer=small_tokenizer_dir)
    return run


@pytest.fixture(scope="session")
def make_tiny():
    """tiny_model(arch, seed) as a fixture (tests/ is not a package, so it cannot be imported)."""
    return tiny_model
