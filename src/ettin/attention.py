"""Attention backends for flat ("varlen") batches and for cached decoding.

Training and unpadded inference hand the model several sequences concatenated into one flat tensor,
described by cumulative lengths. No padding is computed and no token attends across a sequence
boundary. Backends (`backend_for`, chosen per call from the device and dtype, and `ETTIN_ATTENTION`):

  torch-varlen  CUDA, fp16/bf16: torch's own flash kernel for flat batches,
                `torch.nn.attention.varlen.varlen_attn` (windows included; nothing to install)
  flash-attn    CUDA, fp16/bf16, only when asked for (ETTIN_ATTENTION=flash-attn): flash-attn's varlen
  sdpa          everywhere else: PyTorch's scaled_dot_product_attention per sequence (equal lengths
                fused), or block-local attention when the window makes that cheaper; on CPU without
                gradients (inference) sequences of similar length share one padded, masked call

ETTIN_ATTENTION=auto (the default) takes torch-varlen where it runs, else sdpa. Asking for a backend
that cannot run here is an error naming the reason (a broken flash-attn install is reported, never
silently replaced).

Window semantics (ettin-spec.md section 2), with w = local_attention // 2 = 64 by default:
  encoder local: |i - j| <= w           decoder local: i - w < j <= i
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ettin.errors import EttinError

BACKENDS = ("auto", "torch-varlen", "flash-attn", "sdpa")
ENV = "ETTIN_ATTENTION"


@functools.cache
def _torch_varlen():
    """(varlen_attn, takes window_size) or None when this torch has no native varlen attention."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn, "window_size" in params


@functools.cache
def _flash_attn():
    """flash-attn's varlen function; an installed but broken flash-attn is an error that says why."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ModuleNotFoundError as exc:
        if exc.name != "flash_attn":
            raise EttinError(f"flash-attn is installed but cannot be imported: {exc}", field=ENV) from None
        raise EttinError(
            "flash-attn is not installed", field=ENV, fix="pip install flash-attn, or use ETTIN_ATTENTION=auto"
        ) from None
    except ImportError as exc:  # typically a build for another torch or CUDA
        raise EttinError(
            f"flash-attn is installed but cannot be imported: {exc}",
            field=ENV,
            fix="reinstall flash-attn for this torch and CUDA, or use ETTIN_ATTENTION=auto",
        ) from None
    return flash_attn_varlen_func


def requested_backend() -> str:
    name = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise EttinError(f"{ENV}={name!r} is not a backend", field=ENV, fix=f"use one of {', '.join(BACKENDS)}")
    return name


def backend_for(device: torch.device | str, dtype: torch.dtype, windowed: bool = True) -> str:
    """The backend that runs attention for inputs on `device` in `dtype` (what the bench and runs record)."""
    name = requested_backend()
    half = dtype in (torch.float16, torch.bfloat16)
    cuda = torch.device(device).type == "cuda"
    if name == "sdpa":
        return "sdpa"
    if name == "flash-attn":
        _flash_attn()
        if not (cuda and half):
            raise EttinError(f"flash-attn needs CUDA and fp16/bf16 inputs (here: {device}, {dtype})", field=ENV)
        return "flash-attn"
    native = _torch_varlen()
    usable = native is not None and cuda and half and (native[1] or not windowed)
    if name == "torch-varlen" and not usable:
        why = "this torch has no torch.nn.attention.varlen" if native is None else f"inputs on {device} in {dtype}"
        if native is not None and not native[1] and windowed:
            why = "this torch's varlen_attn has no window_size"
        raise EttinError(f"torch-varlen cannot run here ({why})", field=ENV, fix="use ETTIN_ATTENTION=auto")
    return "torch-varlen" if usable else "sdpa"


def window_size(half_window: int | None, causal: bool) -> tuple[int, int]:
    """(left, right) keys each query may see, flash-attn's convention; -1 is unlimited.

    Encoder local: |i - j| <= w, so (w, w). Decoder local: i - w < j <= i, so (w - 1, 0)."""
    if half_window is None:
        return (-1, 0) if causal else (-1, -1)
    return (half_window - 1, 0) if causal else (half_window, half_window)


@dataclass
class Varlen:
    """Where each sequence of a flat batch starts and ends.

    `lengths` is kept as a Python list so that slicing per layer costs no device synchronisation.
    """

    cu_seqlens: torch.Tensor  # int32 [B+1]
    lengths: list[int]
    max_seqlen: int
    positions: torch.Tensor  # int64 [N], position of each token inside its sequence
    dropout_keys: torch.Tensor | None = None  # int32 [N], per-token dropout keys (ettin.dropout) in training
    _masks: dict = field(default_factory=dict, repr=False, compare=False)  # block masks, built once per batch

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

    def padded_groups(self) -> list["PaddedGroup"]:
        """The sequences grouped by length for padded attention (see `grouped_attention`), cached per batch."""
        if "groups" not in self._masks:
            self._masks["groups"] = _padded_groups(self.lengths, self.cu_seqlens.device)
        return self._masks["groups"]

    def block_mask(self, half_window: int, causal: bool, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """[nb, 1, w, K] mask of the block-local layout (see `local_attention`), cached per batch.

        Boolean, or additive (0 / -inf) in a float dtype: PyTorch's CPU kernel runs faster on the latter.
        """
        key = (half_window, causal, dtype)
        if key not in self._masks:
            mask = _block_mask(self.lengths, self.positions, half_window, causal)
            if dtype != torch.bool:
                mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
            self._masks[key] = mask
        return self._masks[key]


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


@functools.lru_cache(maxsize=64)
def _additive_window_mask(length: int, half_window: int | None, causal: bool, device: str, dtype: torch.dtype):
    """`window_mask` as 0 / -inf: PyTorch's CPU kernel runs faster on an additive mask than a boolean one."""
    mask = window_mask(length, half_window, causal, device)
    return (
        None if mask is None else torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, float("-inf"))
    )


def _sdpa(q, k, v, *, causal: bool, half_window: int | None, scale: float):
    """q, k, v [..., H, T, D] for one length T."""
    if q.device.type == "cpu":
        mask = _additive_window_mask(q.shape[-2], half_window, causal, str(q.device), q.dtype)
    else:
        mask = window_mask(q.shape[-2], half_window, causal, str(q.device))
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# Padding a group may cost at most this much more attention work (sum of T^2) than its sequences alone.
GROUP_SLACK = 1.25


@dataclass
class PaddedGroup:
    """Sequences of similar length, right-padded to `length` for one attention call."""

    tokens: torch.Tensor  # int64 [n]: their tokens' rows in the flat batch, sequence after sequence
    gather: torch.Tensor  # int64 [b * length]: flat row of each padded slot (padding: its sequence's first token)
    real: torch.Tensor  # int64 [n]: the padded slots that hold `tokens`, in the same order
    valid: torch.Tensor  # bool [b, length]: real (not padding) slots
    size: int  # b
    length: int
    _masks: dict = field(default_factory=dict, repr=False, compare=False)

    def mask(self, half_window: int | None, causal: bool, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive [b, 1, T, T] (or [b, 1, 1, T]) mask: the window, and for encoders no padded key.

        Under a causal mask no real query sees a padded key (they come after it), so causal global
        attention needs none. A padding query that would see no key at all sees every key instead
        (its output is dropped), so no row is all -inf."""
        key = (half_window, causal, dtype)
        if key not in self._masks:
            window = window_mask(self.length, half_window, causal, str(self.valid.device))
            if window is None and causal:
                allowed = None
            elif window is None:
                allowed = self.valid[:, None, None, :]
            else:
                allowed = window[None, None] if causal else window[None, None] & self.valid[:, None, None, :]
                allowed = allowed | ~allowed.any(-1, keepdim=True)
            self._masks[key] = (
                None
                if allowed is None
                else torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
                    ~allowed, float("-inf")
                )
            )
        return self._masks[key]


def _padded_groups(lengths: list[int], device: torch.device | str) -> list[PaddedGroup]:
    """Sequences sorted by length (longest first) and cut into groups whose padded attention work
    stays within GROUP_SLACK of their own."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    groups, members, work = [], [], 0
    for i in order + [None]:
        if members and (
            i is None or (len(members) + 1) * lengths[members[0]] ** 2 > GROUP_SLACK * (work + lengths[i] ** 2)
        ):
            t = lengths[members[0]]
            gather = torch.tensor([starts[j] for j in members])[:, None].repeat(1, t)
            valid = torch.zeros((len(members), t), dtype=torch.bool)
            for row, j in enumerate(members):
                gather[row, : lengths[j]] += torch.arange(lengths[j])
                valid[row, : lengths[j]] = True
            flat_valid = valid.reshape(-1)
            gather = gather.reshape(-1)
            groups.append(
                PaddedGroup(
                    tokens=gather[flat_valid].to(device),
                    gather=gather.to(device),
                    real=flat_valid.nonzero().squeeze(1).to(device),
                    valid=valid.to(device),
                    size=len(members),
                    length=t,
                )
            )
            members, work = [], 0
        if i is not None:
            members.append(i)
            work += lengths[i] ** 2
    return groups


def grouped_attention(q, k, v, seqs: Varlen, *, causal: bool, half_window: int | None, scale: float) -> torch.Tensor:
    """Attention over a flat batch with sequences of similar length padded into one call per group
    (`Varlen.padded_groups`); padded slots repeat a real token (finite values), padded keys are masked
    out and padded queries dropped, so each real query sees exactly its own sequence's keys. Far fewer,
    larger kernel calls than one per sequence: on a CPU each call is a parallel region whose threads
    must meet, which costs more than the arithmetic for short texts, worst on a busy machine.
    q, k, v: [N, H, D] -> [N, H, D]."""
    n, h, d = q.shape
    out = torch.empty_like(q)
    for g in seqs.padded_groups():
        qb, kb, vb = (x[g.gather].view(g.size, g.length, h, d).transpose(1, 2) for x in (q, k, v))
        mask = g.mask(half_window, causal, q.dtype)
        if mask is None:
            o = F.scaled_dot_product_attention(qb, kb, vb, is_causal=causal, scale=scale)
        else:
            o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
        out[g.tokens] = o.transpose(1, 2).reshape(-1, h, d)[g.real]
    return out


def _block_mask(lengths: list[int], positions: torch.Tensor, w: int, causal: bool) -> torch.Tensor:
    device = positions.device
    n = positions.numel()
    nb = math.ceil(n / w)
    seq = torch.full((nb * w,), -1, dtype=torch.int32, device=device)  # padding queries: sequence -1
    seq[:n] = torch.repeat_interleave(
        torch.arange(len(lengths), device=device, dtype=torch.int32),
        torch.tensor(lengths, device=device),
        output_size=n,
    )
    pos = torch.arange(nb * w, device=device, dtype=torch.int32)  # padding queries see only themselves
    pos[:n] = positions
    after = 0 if causal else w
    key_seq = F.pad(seq, (w, after), value=-2).unfold(0, 2 * w + after, w)  # [nb, K]; -2: matches nothing
    key_pos = F.pad(pos, (w, after)).unfold(0, 2 * w + after, w)
    same = seq.view(nb, w, 1) == key_seq[:, None, :]
    dist = pos.view(nb, w, 1) - key_pos[:, None, :]
    near = (dist >= 0) & (dist < w) if causal else dist.abs() <= w
    return (same & near)[:, None]


def local_attention(q, k, v, seqs: Varlen, *, causal: bool, half_window: int, scale: float) -> torch.Tensor:
    """Sliding-window attention over the whole flat batch in one call, without computing T x T.

    The flat batch is cut into blocks of w = half_window queries; block b's queries can only see
    keys in blocks b-1..b+1 (b-1..b when causal), so each block attends to 3w (2w) gathered keys
    under a mask that also keeps sequences apart. Cost grows with N * 3w instead of sum(T^2).
    q, k, v: [N, H, D] -> [N, H, D].
    """
    n, h, d = q.shape
    w = half_window
    nb = -(-n // w)
    pad = nb * w - n
    mask = seqs.block_mask(w, causal, q.dtype if q.device.type == "cpu" else torch.bool)
    qb = F.pad(q, (0, 0, 0, 0, 0, pad)).view(nb, w, h, d).transpose(1, 2)

    def neighbours(x):  # [nb, h, 3w (2w), d]: the key blocks b-1, b (and b+1) next to each query block b
        x = F.pad(x, (0, 0, 0, 0, w, pad + (0 if causal else w))).view(-1, w, h, d)
        parts = [x[:nb], x[1 : nb + 1]] + ([] if causal else [x[2:]])
        return torch.cat(parts, dim=1).transpose(1, 2)

    out = F.scaled_dot_product_attention(qb, neighbours(k), neighbours(v), attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(nb * w, h, d)[:n]


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
    if q.is_cuda:
        backend = backend_for(q.device, q.dtype, half_window is not None)
        if backend == "torch-varlen":
            varlen_attn, windowed = _torch_varlen()
            cu, m = seqs.cu_seqlens, seqs.max_seqlen
            if windowed:
                return varlen_attn(q, k, v, cu, cu, m, m, scale=scale, window_size=window_size(half_window, causal))
            return varlen_attn(q, k, v, cu, cu, m, m, is_causal=causal)  # an older torch: global layers, 1/sqrt(D)
        if backend == "flash-attn":
            return _flash_attn()(
                q,
                k,
                v,
                seqs.cu_seqlens,
                seqs.cu_seqlens,
                seqs.max_seqlen,
                seqs.max_seqlen,
                softmax_scale=scale,
                causal=causal,
                window_size=window_size(half_window, causal),
            )
    if half_window is not None and max(seqs.lengths) > half_window + (0 if causal else 1):
        # Block-local attention computes (2 or 3) x w keys per query; masked full attention sum(T^2).
        keys_per_query = (2 if causal else 3) * half_window
        if sum(n * n for n in seqs.lengths) > keys_per_query * sum(seqs.lengths):
            return local_attention(q, k, v, seqs, causal=causal, half_window=half_window, scale=scale)
    if seqs.equal_lengths:
        b, t = len(seqs.lengths), seqs.lengths[0]
        h, d = q.shape[1], q.shape[2]
        qb, kb, vb = (x.view(b, t, h, d).transpose(1, 2) for x in (q, k, v))
        out = _sdpa(qb, kb, vb, causal=causal, half_window=half_window, scale=scale)
        return out.transpose(1, 2).reshape(-1, h, d)
    if q.device.type == "cpu" and not torch.is_grad_enabled():
        return grouped_attention(q, k, v, seqs, causal=causal, half_window=half_window, scale=scale)
    outs = []
    for qs, ks, vs in zip(q.split(seqs.lengths), k.split(seqs.lengths), v.split(seqs.lengths)):
        # 4-d inputs: PyTorch's fused CPU kernel takes only those (3-d falls back to the slow math path).
        o = _sdpa(
            qs.transpose(0, 1)[None],
            ks.transpose(0, 1)[None],
            vs.transpose(0, 1)[None],
            causal=causal,
            half_window=half_window,
            scale=scale,
        )
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


def cache_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor, half_window: int | None
) -> torch.Tensor:
    """[B, 1, Tq, S] mask for new queries against a key/value cache (generation).

    q_pos [B, Tq] and k_pos [B, S] are positions inside each sequence; k_valid [B, S] marks real
    (non-padding) cache slots. One mask serves every layer of a kind, so it is built once per step.
    """
    qp = q_pos[:, None, :, None]
    kp = k_pos[:, None, None, :]
    allowed = (kp <= qp) & k_valid[:, None, None, :]
    if half_window is not None:
        allowed = allowed & (kp > qp - half_window)
    # A padding query sees no key; let it see all of them so softmax stays finite (its output is unused).
    return allowed | ~allowed.any(-1, keepdim=True)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float):
    """Causal attention of new queries q [B, H, Tq, D] against a cache k, v [B, H, S, D].

    The cache may be wider than q: on CPU it holds float32 (values rounded to the compute dtype first),
    because PyTorch's fused CPU kernel is 3-4x slower in bfloat16 for a few queries. Autocast would cast
    the cache back down on every call, so it is off here; the result comes back in q's dtype.
    """
    with torch.autocast(q.device.type, enabled=False):
        out = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask, scale=scale)
    return out.to(q.dtype)
