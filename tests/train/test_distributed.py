"""Scale-out on CPU with gloo: real processes under torchrun, compared with one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ettin.recipe import load_recipe
from ettin.train import checkpoint as ck
from ettin.train.metrics import read_metrics
from ettin.train.trainer import TrainOptions, train

# Dropout is on, as in every shipped recipe: its masks hash each sequence's global index, so they do not
# depend on how the batch is split over processes or micro-batches.


def _torchrun(nproc: int, *args: str, timeout: int = 300, wrapper: bool = False) -> subprocess.CompletedProcess:
    """torchrun itself, or `ettin train --nproc N`, which launches it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if wrapper:
        cmd = [sys.executable, "-m", "ettin", "train", "--nproc", str(nproc), *args, "--no-progress", "--device", "cpu"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "ettin",
            "train",
            *args,
            "--no-progress",
            "--device",
            "cpu",
        ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _losses(run, arch):
    return [(r["step"], r["tokens"], r["loss"]) for r in read_metrics(run / arch) if r["kind"] == "train"]


def _compare(a, b, tol=1e-5):
    assert [(s, t) for s, t, _ in a] == [(s, t) for s, t, _ in b]
    for (step, _, x), (_, _, y) in zip(a, b):
        assert abs(x - y) <= tol, f"step {step}: {x} vs {y}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, write_recipe):
    root = tmp_path_factory.mktemp("one")
    recipe = write_recipe(root)
    assert load_recipe(recipe).model.attention_dropout == 0.1
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(load_recipe(recipe), TrainOptions(out=root / "run", progress=False, tensorboard=False))
    finally:
        torch.set_num_threads(before)
    return recipe, result


def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(one_process, tmp_path):
    recipe, single = one_process
    stop = ck.list_tags(single.out / "encoder")[1]  # second tag: mid-pretraining, after the batch-size warmup
    run = tmp_path / "run"
    _torchrun(2, str(recipe), "--out", str(run), "--max-steps", str(stop.step), wrapper=True)
    for arch in ("encoder", "decoder"):
        two = _losses(run, arch)
        assert len(two) == stop.step
        _compare(two, _losses(single.out, arch)[: stop.step])
        state = ck.read_trainer_state(run / arch / "checkpoints" / stop.tag)
        assert state.world_size == 2 and state.strategy == "ddp"
    resumed = train(load_recipe(recipe), TrainOptions(out=run, resume=True, progress=False, tensorboard=False))
    assert resumed.finished and resumed.step == single.step
    for arch in ("encoder", "decoder"):
        _compare(_losses(run, arch), _losses(single.out, arch))


def test_three_processes_follow_one_through_every_phase(one_process, tmp_path):
    """Uneven splits (batch 4 and 3 over 3 ranks, micro-batch 2) and both phase changes, dropout on."""
    recipe, single = one_process
    run = tmp_path / "run"
    _torchrun(3, str(recipe), "--out", str(run))
    for arch in ("encoder", "decoder"):
        three = _losses(run, arch)
        assert len(three) == single.step
        _compare(three, _losses(single.out, arch))


@pytest.mark.slow
def test_fsdp2_matches_one_process(one_process, tmp_path):
    recipe, single = one_process
    run = tmp_path / "run"
    _torchrun(2, str(recipe), "--out", str(run), "--set", "distributed.strategy=fsdp", "--max-steps", "5")
    for arch in ("encoder", "decoder"):
        _compare(_losses(run, arch), _losses(single.out, arch)[:5])
    state = ck.read_trainer_state(ck.latest_full_state(run / "encoder"))
    assert state.strategy == "fsdp"
    resumed = train(
        load_recipe(recipe),
        TrainOptions(out=run, resume=True, progress=False, tensorboard=False, max_steps=state.step + 2),
    )
    assert resumed.step == state.step + 2
