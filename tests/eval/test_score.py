import pytest
import torch

from ettin.eval import score as S

pytestmark = pytest.mark.usefixtures("one_thread")


def test_split_pair_follows_lm_eval(tiny_decoder):
    em = tiny_decoder
    ctx, cont = S.split_pair(em, "Question: who?\nAnswer: ", "Romeo")  # trailing space moves to the continuation
    assert ctx == em.encode("Question: who?\nAnswer:")
    assert ctx + cont == em.encode("Question: who?\nAnswer: Romeo")
    ctx2, cont2 = S.split_pair(em, "Question: who?\nAnswer:", " Romeo")
    assert (ctx2, cont2) == (ctx, cont)


REQUESTS = [
    ("Question: who loves Juliet?\nAnswer:", " Romeo"),
    ("Question: who loves Juliet?\nAnswer:", " the nurse of Verona"),
    ("To be, or not to", " be"),
    ("O", " Romeo, Romeo, wherefore art thou"),
]


def test_decoder_loglikelihood_equals_a_direct_computation(tiny_decoder):
    em = tiny_decoder
    got = S.loglikelihood(em, REQUESTS)
    for (context, continuation), (ll, greedy) in zip(REQUESTS, got):
        ctx, cont = S.split_pair(em, context, continuation)
        ids = torch.tensor([[em.config.bos_token_id] + ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(em.model(ids).logits[0].float(), -1)
        start = 1 + len(ctx)
        direct = sum(float(logp[start + j - 1, t]) for j, t in enumerate(cont))
        argmax = all(int(logp[start + j - 1].argmax()) == t for j, t in enumerate(cont))
        assert ll == pytest.approx(direct, abs=1e-4)
        assert greedy == argmax
    assert S.loglikelihood(em, REQUESTS) == got  # deterministic


def test_encoder_pseudo_loglikelihood_equals_a_direct_computation(tiny_encoder):
    em = tiny_encoder
    c = em.config
    got = S.pseudo_loglikelihood(em, REQUESTS[:2])
    for (context, continuation), (pll, _) in zip(REQUESTS[:2], got):
        ctx, cont = S.split_pair(em, context, continuation)
        base = [c.cls_token_id] + ctx + cont + [c.sep_token_id]
        total = 0.0
        for j, t in enumerate(cont):
            masked = list(base)
            masked[1 + len(ctx) + j] = c.mask_token_id
            with torch.no_grad():
                logits = em.model(torch.tensor([masked])).logits[0, 1 + len(ctx) + j]
            total += float(torch.log_softmax(logits.float(), -1)[t])
        assert pll == pytest.approx(total, abs=1e-4)


def test_score_requests_dispatches_on_arch(tiny_encoder, tiny_decoder):
    assert S.score_requests(tiny_decoder, REQUESTS[:1]) == S.loglikelihood(tiny_decoder, REQUESTS[:1])
    assert S.score_requests(tiny_encoder, REQUESTS[:1]) == S.pseudo_loglikelihood(tiny_encoder, REQUESTS[:1])
    with pytest.raises(ValueError, match="decoder"):
        S.loglikelihood(tiny_encoder, REQUESTS[:1])
    with pytest.raises(ValueError, match="encoder"):
        S.pseudo_loglikelihood(tiny_decoder, REQUESTS[:1])


def test_long_inputs_lose_context_from_the_left(tiny_decoder):
    em = tiny_decoder
    keep = em.max_length
    try:
        em.max_length = 16
        ((ll, _),) = S.loglikelihood(em, [("word " * 100, " end")])
        ctx, cont = S.split_pair(em, "word " * 100, " end")
        ids = torch.tensor([[em.config.bos_token_id] + ctx[-(15 - len(cont)) :] + cont])
        with torch.no_grad():
            logp = torch.log_softmax(em.model(ids).logits[0].float(), -1)
        n = ids.shape[1]
        direct = sum(float(logp[n - len(cont) + j - 1, t]) for j, t in enumerate(cont))
        assert ll == pytest.approx(direct, abs=1e-4)
    finally:
        em.max_length = keep


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_greedy_matches_equals_greedy_generation(arch, tiny_encoder, tiny_decoder):
    """The teacher-forced LAMBADA check gives the same answer as actually generating."""
    em = tiny_encoder if arch == "encoder" else tiny_decoder
    contexts = ["To be, or not to", "Now is the winter of our", "Friends, Romans,"]
    generated = S.greedy_generate(em, contexts, max_new_tokens=3, stop_at_eos=False)
    assert [len(g) for g in generated] == [3, 3, 3]
    own = [(c, em.tokenizer.decode(g)) for c, g in zip(contexts, generated)]
    # keep only targets that re-tokenize to the generated ids (a decoded string may tokenize differently)
    own = [(c, t) for (c, t), g in zip(own, generated) if S.split_pair(em, c, t)[1] == g]
    assert own, "no generated target round-trips through the tokenizer"
    assert S.greedy_matches(em, own) == [True] * len(own)
    # a target whose first token is not the greedy one fails
    wrong = [(c, em.tokenizer.decode([(g[0] + 1) % 1000])) for c, g in zip(contexts, generated)]
    wrong = [(c, t) for c, t in wrong if S.split_pair(em, c, t)[1][:1] != [g[0] for g in generated][:1]]
    assert S.greedy_matches(em, wrong) == [False] * len(wrong)


def test_encoder_masked_scoring_learns_a_sentence(small_tokenizer, make_tiny):
    """Sanity: after a few masked-LM steps on one sentence, the encoder's pseudo-log-likelihood
    prefers that sentence's ending to a wrong one by a wide margin (untrained, it does not)."""
    from ettin.eval.handle import load_eval_model

    model = make_tiny("encoder", seed=3)
    em = load_eval_model(model, tokenizer=small_tokenizer)
    c = em.config
    context, right, wrong = "Romeo and Juliet were", " star-crossed lovers", " kings of the sea"
    ctx, cont = S.split_pair(em, context, right)
    base = [c.cls_token_id] + ctx + cont + [c.sep_token_id]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    (before_good, _), (before_bad, _) = S.pseudo_loglikelihood(em, [(context, right), (context, wrong)])
    assert before_good < before_bad  # the random model happens to prefer the wrong ending
    model.train()
    for _ in range(60):
        ids = torch.tensor(base)
        labels = torch.full_like(ids, -100)
        pick = torch.rand(len(base), generator=g) < 0.3
        pick[0] = pick[-1] = False
        if not pick.any():
            continue
        labels[pick] = ids[pick]
        ids = ids.masked_fill(pick, c.mask_token_id)
        loss = model(
            ids, cu_seqlens=torch.tensor([0, len(base)], dtype=torch.int32), max_seqlen=len(base), labels=labels
        ).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    (good, _), (bad, _) = S.pseudo_loglikelihood(em, [(context, right), (context, wrong)])
    assert good > bad + 10
