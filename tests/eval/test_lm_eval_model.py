"""The lm-evaluation-harness adapter (`--model ettin`) against lm-eval's own `hf` model.

A tiny random decoder exported as a Hugging Face folder is scored by both on the same requests:
log-likelihoods must agree to 1e-4 and is_greedy exactly. Encoders have no `hf` counterpart, so
their pseudo-log-likelihood and mask filling are checked against the model called directly.
"""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance  # noqa: E402

from ettin import hf  # noqa: E402
from ettin.config import config_for_size  # noqa: E402
from ettin.eval.lm_eval_model import EttinLM, local_task_manager  # noqa: E402
from ettin.model import EttinModel  # noqa: E402

PARITY_ITEMS = 20  # ARC-Easy questions (about 80 requests)
TOL = 1e-4


def _export(arch: str, tokenizer_dir, out_dir, seed: int = 0):
    torch.manual_seed(seed)
    model = EttinModel(config_for_size("tiny", arch=arch, vocab_size=1024))
    hf.save_pretrained(model, out_dir, tokenizer=tokenizer_dir)
    return out_dir


@pytest.fixture(scope="module")
def decoder_dir(small_tokenizer_dir, tmp_path_factory):
    return _export("decoder", small_tokenizer_dir, tmp_path_factory.mktemp("lm_eval") / "decoder")


@pytest.fixture(scope="module")
def encoder_dir(small_tokenizer_dir, tmp_path_factory):
    return _export("encoder", small_tokenizer_dir, tmp_path_factory.mktemp("lm_eval") / "encoder", seed=1)


@pytest.fixture(scope="module")
def arc_requests():
    from ettin.eval.tasks import get_task

    items = get_task("arc_easy").load()[:PARITY_ITEMS]
    return [Instance("loglikelihood", {}, r, idx=i) for it in items for i, r in enumerate(it.requests)]


def _hflm(path, **kw):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(path), device="cpu", batch_size=16, **kw)


def test_ettin_is_registered_next_to_the_builtin_models():
    from lm_eval.api.registry import get_model

    assert get_model("ettin") is EttinLM
    # registering ours must not hide lm-eval's lazily registered models
    assert get_model("hf").__name__ == "HFLM"


def test_decoder_loglikelihoods_match_lm_eval_hf(decoder_dir, arc_requests):
    ours = EttinLM(pretrained=str(decoder_dir), device="cpu").loglikelihood(arc_requests)
    # add_bos_token=True: lm-eval's hf model then puts [CLS] before each text and nothing after it,
    # which is what ettin does by default (the paper's "BOS added").
    theirs = _hflm(decoder_dir, add_bos_token=True).loglikelihood(arc_requests)
    diffs = [abs(a[0] - b[0]) for a, b in zip(ours, theirs)]
    print(f"\n{len(diffs)} requests, max |loglik diff| = {max(diffs):.2e}")
    assert max(diffs) <= TOL
    assert [a[1] for a in ours] == [b[1] for b in theirs]


def test_lm_eval_hf_default_tokenization_matches_ettin(decoder_dir, arc_requests):
    """Decoder exports carry a `[CLS] $A` template, so `--model hf` needs no extra arguments."""
    ours = EttinLM(pretrained=str(decoder_dir), device="cpu").loglikelihood(arc_requests[:8])
    theirs = _hflm(decoder_dir).loglikelihood(arc_requests[:8])
    assert max(abs(a[0] - b[0]) for a, b in zip(ours, theirs)) <= TOL


def test_decoder_rolling_and_generation_match_lm_eval_hf(decoder_dir):
    texts = ["To be, or not to be, that is the question.", "Now is the winter of our discontent"]
    rolling = [Instance("loglikelihood_rolling", {}, (t,), idx=0) for t in texts]
    gen = [
        Instance("generate_until", {}, (t, {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}), idx=0)
        for t in texts
    ]
    ours_lm = EttinLM(pretrained=str(decoder_dir), device="cpu")
    hf_lm = _hflm(decoder_dir, add_bos_token=True)
    ours, theirs = ours_lm.loglikelihood_rolling(rolling), hf_lm.loglikelihood_rolling(rolling)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= TOL
    assert ours_lm.generate_until(gen) == hf_lm.generate_until(gen)


def test_encoder_pseudo_loglikelihood_is_the_masked_scores(encoder_dir):
    lm = EttinLM(pretrained=str(encoder_dir), device="cpu")
    context, continuation = "Question: What is the sun?\nAnswer:", " a star"
    [(score, greedy)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), idx=0)])

    tok, cfg = lm.tokenizer, lm.config
    whole = tok.encode(context + continuation, add_special_tokens=False)
    cont = whole[len(tok.encode(context, add_special_tokens=False)) :]
    seq = [cfg.cls_token_id] + whole + [cfg.sep_token_id]
    expected, all_argmax = 0.0, True
    for p in range(len(seq) - 1 - len(cont), len(seq) - 1):
        masked = torch.tensor([seq])
        masked[0, p] = cfg.mask_token_id
        with torch.no_grad():
            logp = lm.model(masked).logits[0, p].float().log_softmax(-1)
        expected += float(logp[seq[p]])
        all_argmax &= int(logp.argmax()) == seq[p]
    assert score == pytest.approx(expected, abs=TOL)
    assert greedy == all_argmax

    # a text that fits one window: its rolling score is the PLL of the whole text
    [rolling] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (context + continuation,), idx=0)])
    [(whole, _)] = lm.loglikelihood([Instance("loglikelihood", {}, ("", context + continuation), idx=0)])
    assert rolling == pytest.approx(whole, abs=TOL) and rolling < 0


def test_encoder_generation_fills_masks_one_at_a_time(encoder_dir):
    lm = EttinLM(pretrained=str(encoder_dir), device="cpu", mask_slots=3)
    context = "Question: Who wrote Hamlet?\nAnswer:"
    [text] = lm.generate_until([Instance("generate_until", {}, (context, {"until": ["\n"], "max_gen_toks": 5}), idx=0)])

    tok, cfg = lm.tokenizer, lm.config
    ids = tok.encode(context, add_special_tokens=False)
    filled = []
    for _ in range(5):
        seq = torch.tensor([[cfg.cls_token_id] + ids + filled + [cfg.mask_token_id] * 3 + [cfg.sep_token_id]])
        with torch.no_grad():
            token = int(lm.model(seq).logits[0, 1 + len(ids) + len(filled)].argmax())
        if token == cfg.sep_token_id:
            break
        filled.append(token)
    expected = tok.decode(filled, skip_special_tokens=True).split("\n")[0]
    assert text == expected


def test_local_tasks_run_under_ettin_and_lm_eval_hf(decoder_dir, tmp_path):
    import lm_eval

    tasks = local_task_manager(tmp_path / "tasks")
    # (an encoder through lm-eval end to end: test_lm_eval_cli.py)
    for model in ("ettin", "hf"):
        out = lm_eval.simple_evaluate(
            model=model,
            model_args=f"pretrained={decoder_dir}",
            tasks=["ettin_arc_easy", "ettin_lambada"],
            task_manager=tasks,
            limit=2,
            device="cpu",
            batch_size=8,
        )
        res = out["results"]
        assert 0.0 <= res["ettin_arc_easy"]["acc,none"] <= 1.0, model
        assert res["ettin_lambada"]["acc,none"] in (0.0, 0.5, 1.0), model


LOCAL_SIZES = {
    "ettin_arc_easy": 570,
    "ettin_arc_challenge": 299,
    "ettin_hellaswag": 10042,
    "ettin_openbookqa": 500,
    "ettin_piqa": 1838,
    "ettin_sciq": 1000,
    "ettin_social_iqa": 1954,
    "ettin_triviaqa": 7993,
    "ettin_winogrande": 1267,
    "ettin_lambada": 5153,
}
# local lm-eval task -> the same benchmark in ettin's own task registry
SAME_TASK = {
    "ettin_arc_easy": "arc_easy",
    "ettin_arc_challenge": "arc_challenge",
    "ettin_piqa": "piqa",
    "ettin_sciq": "sciq",
    "ettin_hellaswag": "hellaswag",
    "ettin_openbookqa": "openbookqa",
    "ettin_winogrande": "winogrande",
    "ettin_lambada": "lambada",
}


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
    tm = local_task_manager(tmp_path_factory.mktemp("local_tasks"))
    return tm.load_task_or_group(list(LOCAL_SIZES))


def test_every_local_task_loads_the_installed_data(local_tasks):
    assert {name: len(list(task.eval_docs)) for name, task in local_tasks.items()} == LOCAL_SIZES


def test_local_tasks_ask_what_ettin_eval_asks(local_tasks):
    """lm-eval builds, from its own YAMLs, exactly the (context, continuation) requests that
    ettin's task registry builds, so `ettin eval` and lm-eval score the same strings."""
    from ettin.eval.tasks import get_task

    for name, ours_name in SAME_TASK.items():
        task = local_tasks[name]
        task.build_all_requests(limit=20, rank=0, world_size=1)
        by_doc: dict[int, list] = {}
        for inst in task.instances:
            by_doc.setdefault(inst.doc_id, []).append(tuple(inst.args))
        theirs = [by_doc[i] for i in sorted(by_doc)]
        ours = [
            list(it.requests) if hasattr(it, "requests") else [(it.context, it.target)]
            for it in get_task(ours_name).load()[:20]
        ]
        assert ours == theirs, name
