"""Exports read by standard clients as ettin reads them: tokenizer settings, sentence-transformers, mteb.

Random tiny models with the small shakespeare tokenizer and 512 positions, written by the real
export writer (`ettin.hf.save_pretrained`); the clients are the installed transformers,
sentence-transformers and mteb, run offline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ettin import commands, hf, infer
from ettin.config import config_for_size
from ettin.hf.clients import ARCH_POOLING, CLIENT_FILES
from ettin.model import EttinModel

pytestmark = pytest.mark.usefixtures("one_thread")

POSITIONS = 512
TEXTS = [
    "To be, or not to be, that is the question",
    "O",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune, "
    "or to take arms against a sea of troubles, and by opposing end them.",
    "",
    "Now is the winter of our discontent made glorious summer by this sun of York",
]


def _export(tmp_path, tokenizer_dir, arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = EttinModel(config_for_size("tiny", arch, vocab_size=1024).replace(max_position_embeddings=POSITIONS))
    return hf.save_pretrained(model, tmp_path / arch, tokenizer=tokenizer_dir)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, small_tokenizer_dir):
    root = tmp_path_factory.mktemp("exports")
    return {arch: _export(root, small_tokenizer_dir, arch) for arch in ("encoder", "decoder")}


def test_pooling_per_arch_is_ettins():
    from ettin.eval.pooling import default_pooling

    assert ARCH_POOLING == {a: default_pooling(a) for a in ("encoder", "decoder")}


@pytest.mark.parametrize("arch,side", [("encoder", "right"), ("decoder", "left")])
def test_tokenizer_truncates_at_the_models_positions_and_pads_on_the_arch_side(exports, arch, side):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exports[arch])
    assert tok.model_max_length == POSITIONS and tok.padding_side == side
    ids = tok("to be or not to be " * 400, truncation=True)["input_ids"]
    assert len(ids) == POSITIONS
    batch = tok(["to be", "to be or not to be"], padding=True)["attention_mask"]
    short = batch[0]
    assert (short[0] == 0) == (side == "left") and (short[-1] == 0) == (side == "right")
    for name in CLIENT_FILES:
        assert (exports[arch] / name).is_file(), name


def test_no_tokenizer_no_sentence_transformers_files(tmp_path):
    torch.manual_seed(0)
    out = hf.save_pretrained(EttinModel(config_for_size("tiny", "encoder", vocab_size=1024)), tmp_path / "m")
    assert not any((out / name).exists() for name in CLIENT_FILES)


def test_reexport_rewrites_the_settings_for_the_new_arch(exports, tmp_path):
    out, _ = commands.export(exports["decoder"], tmp_path / "as-encoder", arch="encoder")
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["padding_side"] == "right" and cfg["model_max_length"] == POSITIONS
    pool = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pool["pooling_mode_mean_tokens"] and not pool["pooling_mode_lasttoken"]


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_sentence_transformer_needs_no_arguments_and_equals_ettin_embed(exports, arch, tmp_path, monkeypatch, capsys):
    import sys

    from sentence_transformers import SentenceTransformer

    from ettin.cli import main

    st = SentenceTransformer(str(exports[arch]), device="cpu")
    want = st.encode(TEXTS, batch_size=4, convert_to_numpy=True)  # padded batches of mixed lengths
    lm = infer.load(exports[arch], device="cpu")
    got = infer.embed(lm, TEXTS, batch_tokens=40)  # several varlen batches
    assert got.shape == want.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # the command, through a file, normalised
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    monkeypatch.setattr(
        sys,
        "argv",
        ["ettin", "embed", str(exports[arch]), "--input", str(tmp_path / "in.txt")]
        + ["--out", str(tmp_path / "e.npy"), "--normalize", "--device", "cpu"],
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0, capsys.readouterr().err
    normed = st.encode(TEXTS, batch_size=2, normalize_embeddings=True)
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), normed, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_mteb_with_sentence_transformers_scores_what_ettins_harness_scores(exports, arch):
    pytest.importorskip("mteb")
    from sentence_transformers import SentenceTransformer

    from ettin.eval.metrics import mean_scores
    from ettin.eval.mteb_model import EttinMTEBEncoder, evaluate, retrieval_task, task_for
    from ettin.eval.retrieve import evaluate_retrieval

    _, data = task_for("wiki_retrieval", max_queries=20, max_corpus_docs=40)
    ettin_enc = EttinMTEBEncoder(exports[arch], max_length=POSITIONS, name=f"tiny-{arch}")
    ours = mean_scores(evaluate_retrieval(ettin_enc.em, data)["per_query"])["ndcg@10"]
    task = retrieval_task(f"wiki_small_{arch}", data)
    via_ettin = evaluate(ettin_enc, [task])[f"wiki_small_{arch}"]["ndcg_at_10"]
    st = SentenceTransformer(str(exports[arch]), device="cpu")
    via_st = evaluate(st, [retrieval_task(f"wiki_small_{arch}_st", data)])[f"wiki_small_{arch}_st"]["ndcg_at_10"]
    print(f"\n{arch}: ettin harness {ours:.5f}, mteb+ettin {via_ettin:.5f}, mteb+SentenceTransformer {via_st:.5f}")
    assert abs(ours - via_ettin) <= 1e-4 and abs(ours - via_st) <= 1e-4  # MTEB rounds to 5 decimals
    assert len({round(x, 3) for x in ettin_enc.embed(list(data.queries.values()))[:, 0].tolist()}) > 1
