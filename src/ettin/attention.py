"""Attention backends for flat ("varlen") batches and for cached decoding.

Training and unpadded inference hand the model several sequences concatenated into one flat tensor,
described by cumulative lengths. No padding is computed and no token attends across a sequence
boundary. On CUDA with flash-attn installed and half-precision inputs, flash-attn's varlen kernel
runs the whole batch at once (sliding windows included); everywhere else each sequence goes through
PyTorch's scaled_dot_product_attention, with equal-length batches fused into one call.

Window semantics (ettin-spec.md section 2), with w = local_attention // 2 = 64 by default:
  encoder local: |i - j| <= w           decoder local: i - w < j <= i
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # optional GPU kernel
    from flash_attn import flash_attn_varlen_func as _flash_varlen
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _flash_varlen = None


@dataclass
class Varlen:
    """Where each sequence of a flat batch starts and ends.

    `lengths` is kept as a Python list so that slicing per layer costs no device synchronisation.
    """

    cu_seqlens: torch.Tensor  # int32 [B+1]
    lengths: list[int]
    max_seqlen: int
    positions: torch.Tensor  # int64 [N], position of each token inside its sequence

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, max_seqlen: int | None = None) -> "Varlen":
        cu = cu_seqlens.to(torch.int32)
        bounds = cu.tolist()
        lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        if any(n <= 0 for n in lengths):
            raise ValueError("cu_seqlens must be strictly increasing (empty sequences are not allowed)")
        n_tokens = bounds[-1]
        starts = torch.tensor(bounds[:-1], dtype=torch.long, device=cu.device)
        positions = torch.arange(n_tokens, device=cu.device) - torch.repeat_interleave(
            starts, torch.tensor(lengths, device=cu.device), output_size=n_tokens
        )
        return cls(cu, lengths, max(lengths) if max_seqlen is None else int(max_seqlen), positions)

    @classmethod
    def from_lengths(cls, lengths: list[int], device: torch.device | str = "cpu") -> "Varlen":
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
        return cls.from_cu_seqlens(cu.to(device))

    @property
    def equal_lengths(self) -> bool:
        return len(set(self.lengths)) == 1


@functools.lru_cache(maxsize=64)
def window_mask(length: int, half_window: int | None, causal: bool, device: str) -> torch.Tensor | None:
    """Boolean [T, T] mask (True = may attend) or None when no mask is needed."""
    if half_window is None or length <= half_window + (0 if causal else 1):
        return None  # the window covers the whole sequence: plain global/causal attention
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    if causal:
        return (j <= i) & (j > i - half_window)
    return (i - j).abs() <= half_window


def _sdpa(q, k, v, *, causal: bool, half_window: int | None, scale: float):
    """q, k, v [..., H, T, D] for one length T."""
    mask = window_mask(q.shape[-2], half_window, causal, str(q.device))
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seqs: Varlen,
    *,
    causal: bool,
    half_window: int | None,
    scale: float,
) -> torch.Tensor:
    """Attention over a flat batch. q, k, v: [N, H, D] -> [N, H, D]."""
    if _flash_varlen is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        if half_window is None:
            window = (-1, -1)
        else:
            window = (half_window - 1, 0) if causal else (half_window, half_window)
        return _flash_varlen(
            q, k, v, seqs.cu_seqlens, seqs.cu_seqlens, seqs.max_seqlen, seqs.max_seqlen,
            softmax_scale=scale, causal=causal, window_size=window,
        )
    if seqs.equal_lengths:
        b, t = len(seqs.lengths), seqs.lengths[0]
        h, d = q.shape[1], q.shape[2]
        qb, kb, vb = (x.view(b, t, h, d).transpose(1, 2) for x in (q, k, v))
        out = _sdpa(qb, kb, vb, causal=causal, half_window=half_window, scale=scale)
        return out.transpose(1, 2).reshape(-1, h, d)
    outs = []
    for qs, ks, vs in zip(q.split(seqs.lengths), k.split(seqs.lengths), v.split(seqs.lengths)):
        # 4-d inputs: PyTorch's fused CPU kernel takes only those (3-d falls back to the slow math path).
        o = _sdpa(qs.transpose(0, 1)[None], ks.transpose(0, 1)[None], vs.transpose(0, 1)[None],
                  causal=causal, half_window=half_window, scale=scale)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    k_valid: torch.Tensor,
    *,
    half_window: int | None,
    scale: float,
) -> torch.Tensor:
    """Causal attention of new queries against a key/value cache (generation).

    q [B, H, Tq, D]; k, v [B, H, S, D]; q_pos [B, Tq] and k_pos [B, S] are positions inside each
    sequence; k_valid [B, S] marks real (non-padding) cache slots.
    """
    qp = q_pos[:, None, :, None]
    kp = k_pos[:, None, None, :]
    allowed = (kp <= qp) & k_valid[:, None, None, :]
    if half_window is not None:
        allowed = allowed & (kp > qp - half_window)
    # A padding query sees no key; let it see all of them so softmax stays finite (its output is unused).
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
