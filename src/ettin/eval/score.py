"""Scoring continuations with either arch, the way the paper compares them.

Decoder (causal LM, as lm-evaluation-harness with a BOS token):
  `loglikelihood`  log p(continuation | [CLS] context), summed over continuation tokens, and
                   whether every continuation token is the argmax (lm-eval's `is_greedy`).
Encoder (masked LM):
  `pseudo_loglikelihood`  for each continuation token in turn, mask it in
                   `[CLS] context continuation [SEP]` and add log p(token); `is_greedy` when every
                   masked token's argmax is the token (Salazar et al. 2020's PLL).
Generation:
  `greedy_generate` decoder: model.generate; encoder: append `n_masks` [MASK] tokens and [SEP],
                   fill the first mask with its argmax, repeat (the paper's forked-harness method).
  `greedy_matches` whether greedy generation reproduces a target exactly (LAMBADA accuracy). It is
                   computed teacher-forced in one pass per item: greedy generation reproduces the
                   target iff at every step the argmax given the target's prefix is the next target
                   token, so the two are equal (a test checks this against `greedy_generate`).

Context and continuation are tokenized as lm-eval does: trailing spaces of the context move to
the continuation, the continuation's ids are those of `context + continuation` past the context's,
and an over-long input loses tokens from the left of the context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ettin.eval.handle import EvalModel, check_finite, finite_logits, hidden_flat, token_batches

DEFAULT_N_MASKS = 4

Progress = Callable[[int], None] | None


def split_pair(em: EvalModel, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = em.encode(context + continuation)
    ctx = em.encode(context) if context else []
    cont = whole[len(ctx) :]
    if not cont:  # a continuation merged into the context's last token: score that token instead
        ctx, cont = whole[:-1], whole[-1:]
    return ctx, cont


def _fit(em: EvalModel, ctx: list[int], cont: list[int], reserve: int) -> tuple[list[int], list[int]]:
    """Drop context tokens from the left (then continuation tokens from the right) to fit max_length."""
    room = em.max_length - reserve
    cont = cont[:room]
    ctx = ctx[max(0, len(ctx) - (room - len(cont))) :] if room - len(cont) > 0 else []
    return ctx, cont


def _selected_logprobs(
    em: EvalModel, seqs: list[list[int]], positions: list[list[int]], targets: list[list[int]]
) -> list[tuple[list[float], list[bool]]]:
    """For each sequence, log-softmax at `positions` gathered at `targets`, and argmax == target.

    Only the selected positions go through the head and vocabulary projection.
    """
    model = em.model
    device = em.device
    h, cu = hidden_flat(model, seqs)
    starts = cu[:-1].tolist()
    flat_pos = torch.tensor(
        [starts[i] + p for i, ps in enumerate(positions) for p in ps], dtype=torch.long, device=device
    )
    flat_tgt = torch.tensor([t for ts in targets for t in ts], dtype=torch.long, device=device)
    logits = check_finite(model.logits_from_hidden(h[flat_pos]).float(), "logits")
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp.gather(1, flat_tgt[:, None]).squeeze(1).tolist()
    greedy = (logits.argmax(-1) == flat_tgt).tolist()
    out, k = [], 0
    for ps in positions:
        out.append((lp[k : k + len(ps)], greedy[k : k + len(ps)]))
        k += len(ps)
    return out


@torch.no_grad()
def loglikelihood(
    em: EvalModel, requests: Sequence[tuple[str, str]], progress: Progress = None
) -> list[tuple[float, bool]]:
    """Decoder: (sum log p(continuation | [CLS] context), is_greedy) per request."""
    if em.arch != "decoder":
        raise ValueError("loglikelihood needs a decoder; use pseudo_loglikelihood for an encoder")
    bos = em.config.bos_token_id
    seqs, spans = [], []
    for context, continuation in requests:
        ctx, cont = _fit(em, *split_pair(em, context, continuation), reserve=1)
        seq = [bos] + ctx + cont
        seqs.append(seq)
        spans.append((len(seq) - len(cont), cont))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(seqs)
    for batch in token_batches([len(s) for s in seqs], em.batch_tokens):
        # the logits at position t predict token t + 1
        positions = [list(range(spans[i][0] - 1, len(seqs[i]) - 1)) for i in batch]
        targets = [spans[i][1] for i in batch]
        for i, (lp, greedy) in zip(batch, _selected_logprobs(em, [seqs[i] for i in batch], positions, targets)):
            results[i] = (float(sum(lp)), bool(all(greedy)))
        if progress:
            progress(len(batch))
    return results


@torch.no_grad()
def pseudo_loglikelihood(
    em: EvalModel, requests: Sequence[tuple[str, str]], progress: Progress = None
) -> list[tuple[float, bool]]:
    """Encoder: (sum over continuation tokens of log p(token | everything else, token masked), all argmax)."""
    if em.arch != "encoder":
        raise ValueError("pseudo_loglikelihood needs an encoder; use loglikelihood for a decoder")
    c = em.config
    # one masked copy per continuation token; copies of one request share a length, so they batch fused
    seqs, owner, pos, tgt = [], [], [], []
    for r, (context, continuation) in enumerate(requests):
        ctx, cont = _fit(em, *split_pair(em, context, continuation), reserve=2)
        base = [c.cls_token_id] + ctx + cont + [c.sep_token_id]
        first = 1 + len(ctx)
        for j, token in enumerate(cont):
            masked = list(base)
            masked[first + j] = c.mask_token_id
            seqs.append(masked)
            owner.append(r)
            pos.append(first + j)
            tgt.append(token)
    sums = [0.0] * len(requests)
    greedy = [True] * len(requests)
    for batch in token_batches([len(s) for s in seqs], em.batch_tokens):
        res = _selected_logprobs(em, [seqs[i] for i in batch], [[pos[i]] for i in batch], [[tgt[i]] for i in batch])
        for i, (lp, g) in zip(batch, res):
            sums[owner[i]] += lp[0]
            greedy[owner[i]] = greedy[owner[i]] and g[0]
        if progress:
            progress(len(batch))
    return [(s, g) for s, g in zip(sums, greedy)]


def score_requests(
    em: EvalModel, requests: Sequence[tuple[str, str]], progress: Progress = None
) -> list[tuple[float, bool]]:
    """Log-likelihood for a decoder, pseudo-log-likelihood for an encoder."""
    if em.arch == "decoder":
        return loglikelihood(em, requests, progress)
    return pseudo_loglikelihood(em, requests, progress)


def _masked_fill_inputs(em: EvalModel, ctx: list[int], filled: list[int], n_masks: int) -> tuple[list[int], int]:
    c = em.config
    room = em.max_length - 2 - n_masks
    prefix = (ctx + filled)[-room:] if room > 0 else []
    return [c.cls_token_id] + prefix + [c.mask_token_id] * n_masks + [c.sep_token_id], 1 + len(prefix)


def _generate(em: EvalModel, context: str, max_new_tokens: int, stop_at_eos: bool) -> list[int]:
    c = em.config
    ctx = em.encode(context)[-(em.max_length - 1 - max_new_tokens) :] if max_new_tokens < em.max_length else []
    ids = torch.tensor([[c.bos_token_id] + ctx], dtype=torch.long, device=em.device)
    gen = em.model.generate(
        ids,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=c.eos_token_id if stop_at_eos else None,
    )
    new = gen[0, ids.shape[1] :].tolist()
    if stop_at_eos and c.eos_token_id in new:
        new = new[: new.index(c.eos_token_id)]
    return new


@torch.no_grad()
def greedy_generate(
    em: EvalModel,
    contexts: Sequence[str],
    max_new_tokens: int,
    n_masks: int = DEFAULT_N_MASKS,
    stop_at_eos: bool = True,
) -> list[list[int]]:
    """New token ids produced greedily after each context (no special tokens in the result).

    Decoder: KV-cached `model.generate` from `[CLS] context`. Encoder: iterative masked filling.
    """
    c = em.config
    out: list[list[int]] = []
    if em.arch == "decoder":
        with finite_logits(em.model):
            return [_generate(em, context, max_new_tokens, stop_at_eos) for context in contexts]
    for context in contexts:
        ctx = em.encode(context)
        filled: list[int] = []
        for _ in range(max_new_tokens):
            seq, p = _masked_fill_inputs(em, ctx, filled, n_masks)
            ids = torch.tensor(seq, dtype=torch.long, device=em.device)
            cu = torch.tensor([0, len(seq)], dtype=torch.int32, device=em.device)
            h = em.model.hidden_states(ids, cu_seqlens=cu, max_seqlen=len(seq))
            token = int(check_finite(em.model.logits_from_hidden(h[p : p + 1]), "logits").argmax(-1))
            if stop_at_eos and token == c.sep_token_id:
                break
            filled.append(token)
        out.append(filled)
    return out


@torch.no_grad()
def greedy_matches(
    em: EvalModel, items: Sequence[tuple[str, str]], n_masks: int = DEFAULT_N_MASKS, progress: Progress = None
) -> list[bool]:
    """Whether greedy generation after each context yields exactly the target's tokens."""
    if em.arch == "decoder":
        return [g for _, g in loglikelihood(em, items, progress)]
    # encoder: step k sees context + target[:k] + [MASK]*n_masks + [SEP] and must predict target[k]
    seqs, owner, pos, tgt = [], [], [], []
    for r, (context, target) in enumerate(items):
        ctx, cont = split_pair(em, context, target)
        for k, token in enumerate(cont):
            seq, p = _masked_fill_inputs(em, ctx, cont[:k], n_masks)
            seqs.append(seq)
            owner.append(r)
            pos.append(p)
            tgt.append(token)
    ok = [True] * len(items)
    for batch in token_batches([len(s) for s in seqs], em.batch_tokens):
        res = _selected_logprobs(em, [seqs[i] for i in batch], [[pos[i]] for i in batch], [[tgt[i]] for i in batch])
        for i, (_, g) in zip(batch, res):
            ok[owner[i]] = ok[owner[i]] and g[0]
        if progress:
            progress(len(batch))
    return ok


def progress_units(em: EvalModel, requests: Sequence[tuple[str, str]]) -> int:
    """How many progress steps scoring these requests reports (sequences, not requests, for encoders)."""
    if em.arch == "decoder":
        return len(requests)
    return sum(len(split_pair(em, c, t)[1]) for c, t in requests)
