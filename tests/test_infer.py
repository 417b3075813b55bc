"""fill-mask, generate and embed: against transformers on the same export, through the command, and
the inputs a user gets wrong (one `error:` line, exit 2, nothing written)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from ettin import hf, infer
from ettin.cli import main
from ettin.config import config_for_size
from ettin.model import EttinModel

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["To be, or not to be", "O Romeo, Romeo! wherefore art thou Romeo? Deny thy father", "Now"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, small_tokenizer_dir):
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for arch in ("encoder", "decoder"):
        torch.manual_seed(1)
        model = EttinModel(config_for_size("tiny", arch, vocab_size=1024))
        out[arch] = hf.save_pretrained(model, root / arch, tokenizer=small_tokenizer_dir)
    return out


def run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["ettin", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


# ----------------------------------------------------------------------------------------- fill-mask


@pytest.mark.parametrize("text", ["To be or not to [MASK], that is the question.", "To [MASK] or not to [MASK]"])
def test_fill_mask_equals_the_transformers_pipeline(exports, text, monkeypatch, capsys):
    from transformers import pipeline

    want = pipeline("fill-mask", model=str(exports["encoder"]), device="cpu")(text, top_k=4)
    want = [want] if isinstance(want[0], dict) else want
    got = infer.fill_mask(infer.load(exports["encoder"], device="cpu"), text, top_k=4)
    assert [[(r["token"], r["token_str"], r["sequence"]) for r in row] for row in got] == [
        [(r["token"], r["token_str"], r["sequence"]) for r in row] for row in want
    ]
    np.testing.assert_allclose(
        [[r["score"] for r in row] for row in got], [[r["score"] for r in row] for row in want], rtol=1e-5
    )
    code, out, _ = run(monkeypatch, capsys, "fill-mask", exports["encoder"], text, "--top-k", "4", "--json")
    assert code == 0
    printed = json.loads(out)
    assert (printed if len(got) > 1 else [printed]) == got
    code, out, _ = run(monkeypatch, capsys, "fill-mask", exports["encoder"], text, "--top-k", "2")
    assert (
        code == 0
        and got[0][0]["sequence"] in out
        and len(out.strip().splitlines()) == 2 * len(got) + (len(got) > 1) * len(got)
    )


# ------------------------------------------------------------------------------------------ generate


def test_greedy_generate_equals_transformers_on_a_left_padded_batch(exports, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exports["decoder"])  # pads on the left, as the export says
    ref = AutoModelForCausalLM.from_pretrained(exports["decoder"])
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    assert (batch["attention_mask"][:, 0] == 0).any()  # some rows are padded
    with torch.no_grad():
        ids = ref.generate(**batch, max_new_tokens=16, do_sample=False)
    want = [tok.decode(row[batch["input_ids"].shape[1] :], skip_special_tokens=True) for row in ids]
    lm = infer.load(exports["decoder"], device="cpu")
    got = infer.generate(lm, PROMPTS, max_new_tokens=16, batch_size=3)
    assert [g[0] for g in got] == want
    assert infer.generate(lm, PROMPTS, max_new_tokens=16, batch_size=1) == got  # batching changes nothing
    # the command: prompts from a file, JSONL out, in input order
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    code, _, err = run(
        monkeypatch, capsys, "generate", exports["decoder"], "--prompts", tmp_path / "p.txt",
        "--max-new-tokens", "16", "--out", tmp_path / "g.jsonl",
    )  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS and [r["completions"] for r in rows] == [[w] for w in want]


def test_streaming_prints_the_completion_as_it_comes(exports, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = infer.load(exports["decoder"], device="cpu")
    (want,) = infer.generate(lm, [PROMPTS[1]], max_new_tokens=20)
    seen = []

    class Out:
        def write(self, s):
            seen.append(s)

        def flush(self):
            pass

    streamer = infer.TokenStreamer(lm.tokenizer, Out())
    infer.generate(lm, [PROMPTS[1]], max_new_tokens=20, streamer=streamer)
    assert "".join(seen) == want[0] and len(seen) > 1  # piece by piece
    # the same streamer works under transformers' generate
    tok = AutoTokenizer.from_pretrained(exports["decoder"])
    seen.clear()
    ref = AutoModelForCausalLM.from_pretrained(exports["decoder"])
    ref.generate(**tok(PROMPTS[1], return_tensors="pt"), max_new_tokens=20, do_sample=False,
                 streamer=infer.TokenStreamer(tok, Out()))  # fmt: skip
    assert "".join(seen) == want[0]
    code, out, _ = run(monkeypatch, capsys, "generate", exports["decoder"], PROMPTS[1], "--max-new-tokens", "20")
    assert code == 0 and out == PROMPTS[1] + want[0] + "\n"


def test_sampling_is_seeded(exports, monkeypatch, capsys):
    lm = infer.load(exports["decoder"], device="cpu")
    s = infer.Sampling(do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=3)
    a = infer.generate(lm, PROMPTS[:2], max_new_tokens=12, sampling=s, num_return_sequences=3)
    assert a == infer.generate(lm, PROMPTS[:2], max_new_tokens=12, sampling=s, num_return_sequences=3)
    assert [len(x) for x in a] == [3, 3] and len(set(a[0])) > 1
    s2 = infer.Sampling(do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=4)
    assert infer.generate(lm, PROMPTS[:2], max_new_tokens=12, sampling=s2, num_return_sequences=3) != a
    args = ("generate", exports["decoder"], PROMPTS[0], "--max-new-tokens", "12", "--temperature", "1.5", "--top-k",
            "50", "--top-p", "0.95", "--seed", "3", "--num-return-sequences", "3")  # fmt: skip
    code, out, _ = run(monkeypatch, capsys, *args)
    alone = infer.generate(lm, PROMPTS[:1], max_new_tokens=12, sampling=s, num_return_sequences=3)[0]
    assert code == 0 and json.loads(out)["completions"] == alone  # the draws follow the batch, not the prompt alone


# --------------------------------------------------------------------------------------------- embed


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_embed_reads_every_input_kind_and_writes_both_outputs(exports, arch, tmp_path, monkeypatch, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["To be, or not to be", "", "Whether 'tis nobler in the mind to suffer " * 5, "O"]
    lm = infer.load(exports[arch], device="cpu")
    want = infer.embed(lm, texts, batch_tokens=1 << 20)
    np.testing.assert_allclose(infer.embed(lm, texts, batch_tokens=8), want, rtol=0, atol=1e-5)  # one per batch
    # the pooled vector is the arch's: mean over [CLS] text [SEP], or the last token of [CLS] text
    ids = infer.model_inputs(lm, texts[:1])[0]
    with torch.no_grad():
        h = lm.model.hidden_states(torch.tensor([ids]))[0]
    np.testing.assert_allclose(want[0], (h.mean(0) if arch == "encoder" else h[-1]).numpy(), rtol=0, atol=1e-5)
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts)))
    pq.write_table(pa.table({"id": list(range(len(texts))), "body": texts}), tmp_path / "t.parquet")
    for src, field in (("t.txt", None), ("t.jsonl", "body"), ("t.parquet", "body")):
        for dst in ("e.npy", "e.parquet"):
            out = tmp_path / f"{src}.{dst}"
            args = ["embed", exports[arch], "--input", tmp_path / src, "--out", out, "--batch-tokens", "16"]
            code, stdout, err = run(monkeypatch, capsys, *args, *(["--field", field] if field else []))
            assert code == 0, err
            assert f"{len(texts)} x 64" in stdout
            np.testing.assert_allclose(infer.read_embeddings(out), want, rtol=0, atol=1e-5)


def test_a_run_folder_with_revision_is_a_model(exports, tmp_path, monkeypatch, capsys):
    import shutil

    run_dir = tmp_path / "run" / "encoder"
    for tag, step in (("step10", 10), ("ext5", 15)):
        shutil.copytree(exports["encoder"], run_dir / "hf" / tag)
        rec = {"step": step, "tokens": step * 100, "phase": 0 if tag.startswith("step") else 1, "phase_step": step}
        (run_dir / "hf" / tag / "ettin_checkpoint.json").write_text(json.dumps(rec))
    code, out, _ = run(monkeypatch, capsys, "fill-mask", run_dir, "To [MASK]", "--revision", "step10", "--json")
    assert code == 0 and json.loads(out) == infer.fill_mask(infer.load(exports["encoder"]), "To [MASK]")[0]
    code, _, err = run(monkeypatch, capsys, "fill-mask", run_dir, "To [MASK]", "--revision", "decay9")
    assert code == 2 and "no revision 'decay9'" in err and "step10" in err


# ----------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_error_line_exit_2_and_nothing_written(exports, tmp_path, monkeypatch, capsys):
    enc, dec = exports["encoder"], exports["decoder"]
    good = tmp_path / "good.txt"
    good.write_text("a text\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "wrong.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "exists.npy").write_bytes(b"keep")
    out = tmp_path / "new.npy"
    cases = [
        (("fill-mask", enc, "no mask in this text"), "has no [MASK] token"),
        (("fill-mask", dec, "To be [MASK]"), "is a decoder; fill-mask needs an encoder: a decoder's causal mask"),
        (("generate", enc, "To be"), "is an encoder; generate needs a decoder"),
        (("embed", enc, "--input", tmp_path / "wrong.jsonl", "--out", out), "field 'text': line 1 has no such field"),
        (("embed", enc, "--input", tmp_path / "wrong.jsonl", "--field", "b", "--out", out), "(its fields: body)"),
        (("embed", enc, "--input", tmp_path / "empty.txt", "--out", out), "is empty"),
        (
            ("embed", enc, "--input", good, "--out", tmp_path / "exists.npy"),
            "exists (choose another name, or pass --overwrite",
        ),
        (("embed", enc, "--input", good, "--out", tmp_path / "e.csv"), "unsupported output type '.csv'"),
        (("embed", enc, "--input", tmp_path / "missing.txt", "--out", out), "no such file"),
        (("embed", dec, "--input", good, "--out", out, "--pooling", "mean"), "mean pooling of a decoder"),
        (("generate", dec, "To be", "--num-return-sequences", "2"), "needs sampling"),
        (("generate", dec, "To be", "--prompts", good), "not both"),
        (("generate", dec, "--prompts", tmp_path / "empty.txt"), "is empty"),
        (("fill-mask", tmp_path / "nowhere", "To [MASK]"), "no such model folder"),
    ]
    for args, message in cases:
        code, stdout, err = run(monkeypatch, capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2, (args, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)
        assert not out.exists() and (tmp_path / "exists.npy").read_bytes() == b"keep"
    # --overwrite replaces it
    code, _, err = run(
        monkeypatch, capsys, "embed", enc, "--input", good, "--out", tmp_path / "exists.npy", "--overwrite"
    )
    assert code == 0, err and np.load(tmp_path / "exists.npy").shape == (1, 64)
