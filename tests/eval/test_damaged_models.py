"""A damaged model is an error, never a score; an eval tokenizer must fit its model (issue 16).

The models are real folders written by `ettin init` (commands.init_model), damaged by rewriting
their model.safetensors with safetensors itself. Loading one (`load_eval_model`) runs a two-token
probe, so `ettin eval` refuses all-NaN weights before it writes anything (tests/test_bad_input.py
holds those cases). Here the same damaged weights are also handed over as an `EvalModel` built by
hand, which skips the probe: then each task kind's own check on the model's outputs is what stops it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support import run_in_process

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = "model.layers.0.attn.Wo.weight"  # NaN here: every hidden state is NaN
HEAD_BIAS = "decoder.bias"  # NaN here: the hidden states are finite, every logit is NaN


@pytest.fixture(scope="module")
def saved(tmp_path_factory, small_tokenizer_dir) -> Path:
    from ettin import commands

    root = tmp_path_factory.mktemp("damaged-models")
    for arch in ("encoder", "decoder"):
        commands.init_model("tiny", arch, root / arch, tokenizer=small_tokenizer_dir, seed=0)
    return root


def damaged(saved: Path, arch: str, where: Path, *names: str) -> Path:
    """A copy of the saved model with the named tensors set to NaN, written by safetensors."""
    from safetensors.torch import load_file, save_file

    out = where / f"{arch}-nan"
    shutil.copytree(saved / arch, out)
    sd = load_file(str(out / "model.safetensors"))
    assert set(names) <= set(sd), sorted(sd)
    for name in names:
        sd[name].fill_(float("nan"))
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def unprobed(model_dir: Path, tokenizer_dir: Path):
    """The folder's model as an EvalModel built by hand (no probe at load)."""
    from ettin import hf
    from ettin.eval.handle import EvalModel
    from ettin.tokenizer import load_tokenizer

    return EvalModel(hf.load_dir(model_dir).eval(), load_tokenizer(tokenizer_dir), "damaged")


KINDS = [  # one task of every kind for each arch, and both kinds of damage
    ("encoder", "sst2", LAYER, "hidden states"),  # classification (embeddings, probe)
    ("encoder", "wiki_retrieval", LAYER, "hidden states"),  # retrieval (embeddings)
    ("encoder", "arc_easy", HEAD_BIAS, "logits"),  # multiple choice (pseudo-log-likelihood)
    ("encoder", "lambada", HEAD_BIAS, "logits"),  # generation (masked filling)
    ("decoder", "wiki_topic", LAYER, "hidden states"),
    ("decoder", "sciq_retrieval", LAYER, "hidden states"),
    ("decoder", "winogrande", HEAD_BIAS, "logits"),
    ("decoder", "lambada", HEAD_BIAS, "logits"),
]


@pytest.mark.parametrize(("arch", "task", "tensor", "what"), KINDS, ids=[f"{a}-{t}" for a, t, _, _ in KINDS])
def test_every_task_kind_stops_on_non_finite_outputs(saved, small_tokenizer_dir, tmp_path, arch, task, tensor, what):
    from ettin.eval.handle import NonFiniteOutput
    from ettin.eval.runner import evaluate_model

    em = unprobed(damaged(saved, arch, tmp_path, tensor), small_tokenizer_dir)
    with pytest.raises(NonFiniteOutput, match=rf"damaged produced non-finite {what} on task {task} \(its weights"):
        evaluate_model(em, tasks=task, out_dir=tmp_path / "o", limit=6)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == []  # no score, no results.json


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_greedy_generation_stops_on_non_finite_logits(saved, small_tokenizer_dir, tmp_path, arch):
    """The decoder generates through model.generate, whose logits are checked at the vocabulary projection."""
    from ettin.eval.handle import NonFiniteOutput
    from ettin.eval.score import greedy_generate

    em = unprobed(damaged(saved, arch, tmp_path, LAYER), small_tokenizer_dir)
    with pytest.raises(NonFiniteOutput, match="non-finite logits"):
        greedy_generate(em, ["Once upon a time"], max_new_tokens=3)
    assert not em.model.decoder._forward_hooks  # the check leaves no hook behind
    good = unprobed(saved / arch, small_tokenizer_dir)
    assert len(greedy_generate(good, ["Once upon a time"], max_new_tokens=3, stop_at_eos=False)[0]) == 3


def test_the_same_tasks_score_the_undamaged_model(saved, small_tokenizer_dir, tmp_path):
    from ettin.eval.runner import evaluate_model

    for arch, tasks in (("encoder", "sst2,arc_easy,lambada"), ("decoder", "wiki_topic,winogrande,lambada")):
        res = evaluate_model(unprobed(saved / arch, small_tokenizer_dir), tasks=tasks, out_dir=tmp_path / arch, limit=6)
        assert res["failed"] == [], res["failed"]


def test_loading_probes_the_model_before_anything_is_written(saved, tmp_path):
    from ettin.eval.handle import NonFiniteOutput
    from ettin.eval.runner import evaluate_model

    for tensor, what in ((LAYER, "hidden states"), (HEAD_BIAS, "logits")):
        model_dir = damaged(saved, "decoder", tmp_path / what.replace(" ", "-"), tensor)
        with pytest.raises(NonFiniteOutput, match=rf"decoder-nan produced non-finite {what} on a two-token probe"):
            evaluate_model(model_dir, tasks="lambada", out_dir=tmp_path / "o", limit=2)
        assert not (tmp_path / "o").exists()


def test_mteb_embeddings_stop_on_non_finite_outputs(saved, small_tokenizer_dir, tmp_path):
    from ettin.eval.handle import NonFiniteOutput
    from ettin.eval.mteb_model import EttinMTEBEncoder, evaluate, task_for

    encoder = EttinMTEBEncoder(unprobed(damaged(saved, "encoder", tmp_path, LAYER), small_tokenizer_dir))
    with pytest.raises(NonFiniteOutput, match="non-finite hidden states"):
        encoder.embed(["a short text", "and another one"])
    task, _ = task_for("wiki_retrieval", max_queries=4, max_corpus_docs=8)
    with pytest.raises(NonFiniteOutput, match="non-finite hidden states"):  # MTEB passes it on (raise_error)
        evaluate(encoder, [task], batch_size=4)


def test_lm_eval_stops_on_non_finite_logits(saved, small_tokenizer_dir, tmp_path):
    from lm_eval.api.instance import Instance

    from ettin.eval.handle import NonFiniteOutput
    from ettin.eval.lm_eval_model import EttinLM

    for arch in ("encoder", "decoder"):
        lm = EttinLM(pretrained=unprobed(damaged(saved, arch, tmp_path / arch, HEAD_BIAS), small_tokenizer_dir))
        with pytest.raises(NonFiniteOutput, match="damaged produced non-finite logits"):
            lm.loglikelihood([Instance("loglikelihood", {}, ("The sky is", " blue"), idx=0)])
        with pytest.raises(NonFiniteOutput, match="damaged produced non-finite logits"):
            lm.generate_until([Instance("generate_until", {}, ("Once", {"until": ["\n"], "max_gen_toks": 3}), idx=0)])


def lm_eval_error(args: list[str]) -> tuple[int, str]:
    """`ettin lm-eval ...`: the exit code and the last line on stderr (lm-eval logs its own lines first)."""
    code, out, err = run_in_process(["lm-eval", *args])
    assert "Traceback" not in err + out, err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


def test_lm_eval_refuses_a_tokenizer_whose_special_ids_differ(saved, tmp_path, small_tokenizer_dir):
    from ettin.tokenizer import train_tokenizer

    other = tmp_path / "other-tok"
    train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, 320, other)
    code, last = lm_eval_error(
        ["--model", "ettin", "--model_args", f"pretrained={saved / 'encoder'},tokenizer={other}"]
        + ["--tasks", "ettin_arc_easy", "--limit", "1", "--device", "cpu"]
    )
    assert code == 2, last
    assert last.startswith(f"error: {other}: does not fit {saved / 'encoder' / 'config.json'}: "), last
    assert "unk_token_id: tokenizer 315, model 1019" in last, last


def test_lm_eval_refuses_nan_weights(saved, tmp_path):
    model_dir = damaged(saved, "decoder", tmp_path, LAYER)
    code, last = lm_eval_error(
        ["--model", "ettin", "--model_args", f"pretrained={model_dir}", "--tasks", "ettin_arc_easy"]
        + ["--limit", "1", "--device", "cpu"]
    )
    assert code == 2, last
    assert last.startswith(f"error: {model_dir}: decoder-nan produced non-finite hidden states on a two-token probe")


def test_eval_accepts_the_model_s_own_tokenizer_given_again(saved, small_tokenizer_dir, tmp_path):
    """The check compares ids, not folders: the same tokenizer passed by --tokenizer is fine."""
    code, out, err = run_in_process(
        ["eval", saved / "encoder", "--tokenizer", small_tokenizer_dir, "--tasks", "sst2", "--limit", "6"]
        + ["--out", tmp_path / "o", "--no-progress"]
    )
    assert code == 0, err + out
    assert (tmp_path / "o" / "sst2.json").is_file()


def test_check_finite_is_exact_where_its_fast_sum_overflows_or_cancels():
    import torch

    from ettin.eval.handle import NonFiniteOutput, check_finite

    big = torch.full((4,), 3e38)  # finite values whose float32 sum overflows: accepted
    assert check_finite(big, "x") is big
    check_finite(torch.full((3,), 60000.0, dtype=torch.float16), "x")
    for values in ([0.0, float("nan")], [1.0, float("inf")], [float("-inf"), 2.0], [float("inf"), float("-inf")]):
        with pytest.raises(NonFiniteOutput, match="the model produced non-finite x"):
            check_finite(torch.tensor(values), "x")
