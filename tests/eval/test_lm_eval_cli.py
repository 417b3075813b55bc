"""`ettin lm-eval` (lm-eval's own CLI with `--model ettin`) and `ettin lm-eval-tasks`."""

from __future__ import annotations

import json

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from ettin import hf  # noqa: E402
from ettin.cli import harness  # noqa: E402
from ettin.config import config_for_size  # noqa: E402
from ettin.eval.lm_eval_model import LOCAL_TAG, LOCAL_TASKS  # noqa: E402
from ettin.model import EttinModel  # noqa: E402


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    harness.register(app)
    return app


@pytest.fixture(scope="module")
def encoder_dir(small_tokenizer_dir, tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("lm_eval_cli") / "encoder"
    hf.save_pretrained(
        EttinModel(config_for_size("tiny", arch="encoder", vocab_size=1024)), out, tokenizer=small_tokenizer_dir
    )
    return out


def test_lm_eval_tasks_writes_one_yaml_per_local_task(cli, tmp_path):
    result = CliRunner().invoke(cli, ["lm-eval-tasks", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = sorted(p.stem for p in tmp_path.glob("*.yaml"))
    assert files == sorted(LOCAL_TASKS)
    arc = yaml.safe_load((tmp_path / "ettin_arc_easy.yaml").read_text())
    assert arc["include"].endswith("arc/arc_easy.yaml") and arc["dataset_path"] == "arrow"
    assert arc["tag"] == []  # not in lm-eval's ai2_arc tag, not in the paper's suite
    assert yaml.safe_load((tmp_path / "ettin_hellaswag.yaml").read_text())["tag"] == [LOCAL_TAG]


def test_lm_eval_passthrough_runs_an_encoder_on_a_local_task(cli, encoder_dir, tmp_path):
    args = [
        "lm-eval",
        "--model",
        "ettin",
        "--model_args",
        f"pretrained={encoder_dir}",
        "--tasks",
        "ettin_arc_easy",
        "--limit",
        "1",
        "--device",
        "cpu",
        "--batch_size",
        "32",
        "--output_path",
        str(tmp_path / "out"),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    [results] = list((tmp_path / "out").rglob("results_*.json"))
    data = json.loads(results.read_text())
    assert data["config"]["model"] == "ettin"
    assert 0.0 <= data["results"]["ettin_arc_easy"]["acc,none"] <= 1.0
