"""Held-out loss during training: the recipe's eval data, the same sequences at every evaluation of a
phase (masked with step 0, so the numbers are comparable), summed over ranks. Not `ettin eval`."""

from __future__ import annotations

import torch

from ettin.recipe import Phase
from ettin.train.context import RunContext
from ettin.train.distributed import rank_slice


class HeldOutLoss:
    def __init__(self, run: RunContext):
        self.run = run
        self._samples: dict[int, list] = {}  # by sequence length

    def samples(self, phase: Phase) -> list:
        from ettin.data.stream import TokenStream

        key = phase.seq_len
        if key not in self._samples:
            r = self.run.recipe
            stream = TokenStream(
                r.eval.data, seed=r.seed, seq_len=phase.seq_len, tokenizer_fingerprint=self.run.fingerprint
            )
            self._samples[key] = stream.next_batch(batch_size_sequences=r.eval.sequences)
        return self._samples[key]

    @torch.no_grad()
    def __call__(self, phase: Phase, step: int, tokens: int) -> dict[str, float]:
        """Each member's mean loss per label token on the held-out sequences (logged as kind "eval")."""
        from ettin.data.masking import make_inputs

        run, r, ctx = self.run, self.run.recipe, self.run.dist
        device = ctx.device
        samples = self.samples(phase)
        s, e = rank_slice(len(samples), ctx.rank, ctx.world_size)
        out: dict[str, float] = {}
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=r.precision == "bf16")
        for m in run.members:
            m.wrapped.eval()
            loss_sum, labels = 0.0, 0
            for a in range(s, e, r.micro_batch_size):
                b = min(a + r.micro_batch_size, e)
                batch = make_inputs(
                    samples[a:b],
                    m.objective,
                    special_ids=run.special_ids,
                    vocab_size=run.vocab_size,
                    mask_rate=r.eval.mask_rate,
                    seed=r.seed,
                    step=0,
                    first_index=a,
                )
                if not batch.num_label_tokens:
                    continue
                batch = batch.to(device)
                with autocast:
                    res = m.wrapped(
                        batch.input_ids,
                        cu_seqlens=batch.cu_seqlens,
                        max_seqlen=batch.max_seqlen,
                        labels=batch.labels,
                        return_logits=False,
                    )
                loss_sum += float(res.loss) * batch.num_label_tokens
                labels += batch.num_label_tokens
            m.wrapped.train()
            total, count = ctx.all_reduce_sum([loss_sum, float(labels)])
            out[m.arch] = total / count if count else float("nan")
            if ctx.is_main:
                m.metrics.log(
                    {
                        "kind": "eval",
                        "step": step,
                        "tokens": tokens,
                        "phase": phase.name,
                        "eval_loss": out[m.arch],
                        "eval_label_tokens": int(count),
                    }
                )
        return out
