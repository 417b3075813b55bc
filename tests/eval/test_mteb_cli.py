"""`ettin mteb` and `ettin mteb-check`."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from ettin import hf  # noqa: E402
from ettin.cli import harness  # noqa: E402
from ettin.config import config_for_size  # noqa: E402
from ettin.model import EttinModel  # noqa: E402


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    harness.register(app)
    return app


def test_mteb_command_scores_a_decoder_folder(cli, small_tokenizer_dir, tmp_path):
    torch.manual_seed(0)
    model_dir = tmp_path / "decoder"
    hf.save_pretrained(
        EttinModel(config_for_size("tiny", arch="decoder", vocab_size=1024)), model_dir, tokenizer=small_tokenizer_dir
    )
    out = tmp_path / "mteb.json"
    result = CliRunner().invoke(
        cli, ["mteb", str(model_dir), "--max-queries", "5", "--max-docs", "10", "--max-length", "64", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["arch"] == "decoder" and report["pooling"] == "last"
    task = report["tasks"]["wiki_retrieval"]
    assert task["size"] == {"queries": 5, "documents": 10}
    assert 0.0 <= task["scores"]["ndcg_at_10"] <= 1.0


def test_mteb_check_passes_for_the_reference_embedder(cli):
    result = CliRunner().invoke(cli, ["mteb-check", "--queries", "10", "--docs", "20", "--max-seq-length", "64"])
    assert result.exit_code == 0, result.output
    assert "nDCG@10 ours" in result.output
