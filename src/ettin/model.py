"""The ModernBERT encoder and decoder, in one file.

Both archs are the same network; `config.arch` only decides whether attention is bidirectional or
causal and how the loss reads its labels. Module and parameter names equal those of transformers'
`ModernBertForMaskedLM`, so an encoder converts by identity and a decoder by splitting `Wqkv` and
renaming `head` to `lm_head` (see ettin.hf).

Every forward runs on a flat "varlen" batch: a padded batch is unpadded first and its outputs padded
again, so padding is never computed and the padded and varlen paths are one code path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ettin.attention import Varlen, cache_mask, cached_attention, varlen_attention
from ettin.config import ModelConfig, check_memory
from ettin.dropout import hashed_dropout, token_keys

IGNORE_INDEX = -100


@dataclass
class EttinOutput:
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class RotaryTable(nn.Module):
    """cos/sin per position for one theta, computed in float32 exactly as transformers does.

    Returns half the head dim: transformers' tables repeat the same D/2 frequencies twice.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.set_theta(theta)

    def set_theta(self, theta: float) -> None:
        self.theta = float(theta)
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        needed = int(positions.max()) + 1 if positions.numel() else 1
        inv_freq = self.inv_freq.to(positions.device)
        if self._cache is None or self._cache[0].shape[0] < needed or self._cache[0].device != positions.device:
            size = max(needed, 2048)
            freqs = torch.arange(size, device=positions.device).float()[:, None] * inv_freq[None, :]
            self._cache = (freqs.cos(), freqs.sin())
        cos, sin = self._cache
        return cos[positions], sin[positions]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """[x1, x2] -> [x1 cos - sign x2 sin, x2 cos + sign x1 sin] in float32, each half written once."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    o1, o2 = out[..., :d], out[..., d:]
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=sign)
    return out.to(x.dtype)


class _Rotary(torch.autograd.Function):
    """Rotary embedding, `x * cos + rotate_half(x) * sin` as transformers computes it (float32, rounded
    back to x's dtype), in fewer passes; the backward is the opposite rotation, so x is not kept."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0), None, None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D]; cos/sin [..., D/2] broadcastable to x's halves."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Rotary.apply(x, cos, sin)
    return _rotate(x, cos, sin, 1.0)


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tok_embeddings(input_ids))


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.is_global = config.layer_types[layer_idx] == "full_attention"
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.out_drop = nn.Dropout(config.attention_dropout)

    @property
    def half_window(self) -> int | None:
        return None if self.is_global else self.config.half_window

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        qkv = self.Wqkv(x).view(*x.shape[:-1], 3, self.num_heads, self.head_dim)
        # Q and K rotate together: one pass over [..., 2, H, D] with cos/sin broadcast over both and the heads.
        q, k = apply_rotary(qkv[..., :2, :, :], cos[..., None, None, :], sin[..., None, None, :]).unbind(-3)
        return q, k, qkv[..., 2, :, :]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seqs: Varlen) -> torch.Tensor:
        """x [N, hidden] (flat batch)."""
        q, k, v = self._qkv(x, cos, sin)
        out = varlen_attention(
            q, k, v, seqs, causal=self.config.is_causal, half_window=self.half_window, scale=self.head_dim**-0.5
        )
        out = self.Wo(out.reshape(x.shape))
        if self.training and seqs.dropout_keys is not None:
            return hashed_dropout(out, seqs.dropout_keys, self.layer_idx, self.out_drop.p)
        return self.out_drop(out)

    def forward_cached(self, x, cos, sin, cache: "KVCache", layer_idx: int) -> torch.Tensor:
        """x [B, T, hidden] of new tokens; keys and values are appended to the cache."""
        q, k, v = self._qkv(x, cos, sin)
        k_all, v_all = cache.append(layer_idx, k.transpose(1, 2), v.transpose(1, 2))
        out = cached_attention(q.transpose(1, 2), k_all, v_all, cache.mask(self.half_window), scale=self.head_dim**-0.5)
        return self.Wo(out.transpose(1, 2).reshape(x.shape))


class MLP(nn.Module):
    """GeGLU: Wi projects to (input, gate); out = Wo(gelu(input) * gate), exact GELU."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(F.gelu(inp) * gate)


class Layer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        # Layer 0 has no attention norm: the embedding norm stands in.
        self.attn_norm = (
            nn.Identity() if layer_idx == 0 else nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)
        )
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, seqs: Varlen):
        x = x + self.attn(self.attn_norm(x), cos, sin, seqs)
        return x + self.mlp(self.mlp_norm(x))


class Backbone(nn.Module):
    """Embeddings, layers and final norm: what transformers' `ModernBertModel` holds."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)
        self.rotary = nn.ModuleDict(
            {
                "full_attention": RotaryTable(config.head_dim, config.global_rope_theta),
                "sliding_attention": RotaryTable(config.head_dim, config.local_rope_theta),
            }
        )

    def rope(self, positions: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {kind: table(positions) for kind, table in self.rotary.items()}

    def forward(self, input_ids: torch.Tensor, seqs: Varlen) -> torch.Tensor:
        x = self.embeddings(input_ids)
        rope = self.rope(seqs.positions)
        for layer, kind in zip(self.layers, self.config.layer_types):
            x = layer(x, *rope[kind], seqs)
        return self.final_norm(x)


class PredictionHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `h @ weight.T + bias` against labels, for training.

    The forward turns the logits, a slice of rows at a time (small enough to stay in cache), into
    their own gradient (softmax - one-hot) / n, in place: the [n, V] logits are written once and read
    once more by the backward's two matmuls, instead of the half-dozen float32 passes of
    `F.cross_entropy(logits.float(), ...)` and its backward. Same arithmetic, float32 softmax.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, labels, dtype, chunk):
        n = labels.numel()
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            g = torch.addmm(bias.to(dtype), hc, wc.t())
            acc = torch.promote_types(dtype, torch.float32)  # the softmax runs in float32 at least
            total = torch.zeros((), dtype=acc, device=h.device)
            grad_bias = torch.zeros(weight.shape[0], dtype=acc, device=h.device)
            rows = torch.arange(min(chunk, n), device=h.device)
            for i in range(0, n, chunk):
                x = g[i : i + chunk].to(acc)  # a view when g is float32: then the loop works in place
                y = labels[i : i + chunk]
                lse = torch.logsumexp(x, dim=-1, keepdim=True)
                total += (lse.squeeze(1) - x.gather(1, y[:, None]).squeeze(1)).sum()
                x.sub_(lse).exp_()
                x[rows[: len(y)], y] -= 1.0
                x.mul_(1.0 / n)
                grad_bias += x.sum(0)
                if x.dtype != g.dtype:
                    g[i : i + chunk].copy_(x)
        ctx.save_for_backward(hc, wc, g, grad_bias)
        ctx.dtypes = (h.dtype, weight.dtype, bias.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        hc, wc, g, grad_bias = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = (g @ wc).to(h_dtype) * grad_loss
        if ctx.needs_input_grad[1]:
            grad_w = (g.t() @ hc).to(w_dtype) * grad_loss
        if ctx.needs_input_grad[2]:
            grad_b = grad_bias.to(b_dtype) * grad_loss
        return grad_h, grad_w, grad_b, None, None, None


def linear_cross_entropy(h, weight, bias, labels, chunk_elements: int | None = None) -> torch.Tensor:
    """Training loss of the vocabulary projection; every label must be a real class (no -100).

    Slices of `chunk_elements` logits: 4 MB of float32 on CPU (stays in cache), 512 MB on a GPU
    (where each slice costs kernel launches, not cache misses).
    """
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    if chunk_elements is None:
        chunk_elements = 1 << 20 if h.device.type == "cpu" else 1 << 27
    chunk = max(1, chunk_elements // weight.shape[0])
    return _LinearCrossEntropy.apply(h, weight, bias, labels, dtype, chunk)


class KVCache:
    """Keys and values of every layer for a batch being generated, preallocated to the final length."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, config.num_attention_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.positions_all = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.valid_all = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.new_positions: torch.Tensor | None = None

    def start_step(self, positions: torch.Tensor, valid: torch.Tensor) -> None:
        t = positions.shape[1]
        self.positions_all[:, self.length : self.length + t] = positions
        self.valid_all[:, self.length : self.length + t] = valid
        self.new_positions = positions
        self._end = self.length + t
        self._masks: dict = {}

    def mask(self, half_window: int | None) -> torch.Tensor:
        if half_window not in self._masks:
            self._masks[half_window] = cache_mask(self.new_positions, self.positions, self.valid, half_window)
        return self._masks[half_window]

    def end_step(self) -> None:
        self.length = self._end

    @property
    def positions(self) -> torch.Tensor:
        return self.positions_all[:, : self._end]

    @property
    def valid(self) -> torch.Tensor:
        return self.valid_all[:, : self._end]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        self.k[layer][:, :, self.length : self._end] = k
        self.v[layer][:, :, self.length : self._end] = v
        return self.k[layer][:, :, : self._end], self.v[layer][:, :, : self._end]


# The state-dict name of the tied output projection (see EttinModel.tie_head).
TIED_KEY = "decoder.weight"


class EttinModel(nn.Module):
    """A ModernBERT encoder or decoder with its tied prediction head."""

    def __init__(self, config: ModelConfig, *, init: bool = True):
        check_memory(config)  # before any weight is allocated
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.head = PredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.tie_head()
        if init:
            self.reset_parameters()

    # ------------------------------------------------------------------------------------- tying
    def tie_head(self) -> None:
        """The output projection is the token embedding: the one tying rule. Files store the tensor
        once (as the embedding; `TIED_KEY` is left out), so whoever loads weights calls this after."""
        emb = self.model.embeddings.tok_embeddings.weight
        if self.decoder.weight is not emb:
            self.decoder.weight = emb

    @property
    def head_is_tied(self) -> bool:
        return self.decoder.weight.data_ptr() == self.model.embeddings.tok_embeddings.weight.data_ptr()

    # ----------------------------------------------------------------------------------------- init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The spec's initialization: truncated normal cut at +-2 std; scaled output projections."""
        cfg = self.config
        std = cfg.initializer_range
        out_std = std / math.sqrt(2.0 * cfg.num_hidden_layers)
        cut = cfg.initializer_cutoff_factor

        def trunc(weight: torch.Tensor, s: float) -> None:
            nn.init.trunc_normal_(weight, mean=0.0, std=s, a=-cut * s, b=cut * s)

        trunc(self.model.embeddings.tok_embeddings.weight, std)
        for layer in self.model.layers:
            trunc(layer.attn.Wqkv.weight, std)
            trunc(layer.attn.Wo.weight, out_std)
            trunc(layer.mlp.Wi.weight, std)
            trunc(layer.mlp.Wo.weight, out_std)
        trunc(self.head.dense.weight, std)
        nn.init.zeros_(self.decoder.bias)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)

    def set_rope_theta(self, global_theta: float, local_theta: float) -> None:
        """Phase changes (context extension) raise the RoPE bases; weights stay as they are."""
        self.config.global_rope_theta = float(global_theta)
        self.config.local_rope_theta = float(local_theta)
        self.model.rotary["full_attention"].set_theta(global_theta)
        self.model.rotary["sliding_attention"].set_theta(local_theta)

    # -------------------------------------------------------------------------------------- forward
    def _as_varlen(self, input_ids, attention_mask, cu_seqlens, max_seqlen):
        """Returns (flat ids, Varlen, indices of real tokens in the padded layout or None)."""
        if cu_seqlens is not None:
            ids = input_ids.reshape(-1)
            return ids, Varlen.from_cu_seqlens(cu_seqlens.to(ids.device), max_seqlen), None
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        b, t = input_ids.shape
        if attention_mask is None:
            return input_ids.reshape(-1), Varlen.from_lengths([t] * b, input_ids.device), None
        mask = attention_mask.to(torch.bool)
        lengths = mask.sum(1).tolist()
        if any(n == 0 for n in lengths):
            raise ValueError("every row of attention_mask needs at least one real token")
        index = mask.reshape(-1).nonzero().squeeze(1)
        return input_ids.reshape(-1)[index], Varlen.from_lengths(lengths, input_ids.device), index

    @staticmethod
    def _repad(x: torch.Tensor, index: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
        if index is None:
            return x.view(*shape, -1)
        out = x.new_zeros(shape[0] * shape[1], x.shape[-1])
        out[index] = x
        return out.view(*shape, -1)

    def hidden_states(self, input_ids, attention_mask=None, *, cu_seqlens=None, max_seqlen=None) -> torch.Tensor:
        """Final-norm output without the head: [B, T, hidden] (padded input) or [N, hidden] (varlen)."""
        ids, seqs, index = self._as_varlen(input_ids, attention_mask, cu_seqlens, max_seqlen)
        h = self.model(ids, seqs)
        if cu_seqlens is not None:
            return h
        shape = input_ids.shape if input_ids.dim() == 2 else (1, input_ids.shape[0])
        return self._repad(h, index, tuple(shape))

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.head(h))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = True,
        dropout_keys: torch.Tensor | None = None,
    ) -> EttinOutput:
        """Padded ([B, T] + attention_mask) or varlen ([N] + cu_seqlens) input.

        With labels (-100 = ignore), the encoder runs its head only where there are labels (sparse
        prediction) and returns logits [M, V] for those positions; the decoder's labels are the
        already aligned next tokens and it returns logits for every position.
        `dropout_keys` (int32 [B], `ettin.dropout.sequence_dropout_keys`) make training dropout a function
        of each sequence's identity, not of the batch split; without them dropout uses torch's generator.
        """
        ids, seqs, index = self._as_varlen(input_ids, attention_mask, cu_seqlens, max_seqlen)
        if dropout_keys is not None and self.training and self.config.attention_dropout > 0:
            if len(dropout_keys) != len(seqs.lengths):
                raise ValueError(f"dropout_keys has {len(dropout_keys)} keys for {len(seqs.lengths)} sequences")
            seqs.dropout_keys = token_keys(dropout_keys, seqs.lengths, seqs.positions)
        h = self.model(ids, seqs)
        flat_labels = None
        if labels is not None:
            flat_labels = labels.reshape(-1) if index is None else labels.reshape(-1)[index]
        if labels is not None and (not self.config.is_causal or not return_logits):
            selected = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
            h, flat_labels = h[selected], flat_labels[selected]
            if not return_logits and torch.is_grad_enabled() and flat_labels.numel():
                loss = linear_cross_entropy(self.head(h), self.decoder.weight, self.decoder.bias, flat_labels)
                return EttinOutput(loss=loss)
            logits = self.logits_from_hidden(h)
            loss = F.cross_entropy(logits.float(), flat_labels) if flat_labels.numel() else logits.sum() * 0.0
            return EttinOutput(logits=logits if return_logits else None, loss=loss)
        logits = self.logits_from_hidden(h)
        loss = None
        if flat_labels is not None:
            loss = F.cross_entropy(logits.float(), flat_labels, ignore_index=IGNORE_INDEX)
        if cu_seqlens is None:
            shape = input_ids.shape if input_ids.dim() == 2 else (1, input_ids.shape[0])
            logits = self._repad(logits, index, tuple(shape))
        return EttinOutput(logits=logits, loss=loss)

    # ------------------------------------------------------------------------------------- generate
    def _cached_step(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run new tokens [B, T] through the model against the cache; returns last-position logits."""
        x = self.model.embeddings(ids)
        rope = self.model.rope(cache.new_positions)
        for i, (layer, kind) in enumerate(zip(self.model.layers, self.config.layer_types)):
            x = x + layer.attn.forward_cached(layer.attn_norm(x), *rope[kind], cache, i)
            x = x + layer.mlp(layer.mlp_norm(x))
        cache.end_step()
        return self.logits_from_hidden(self.model.final_norm(x[:, -1]))

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        streamer=None,
    ) -> torch.Tensor:
        """Decoder generation with a KV cache. Prompts may be left-padded; finished rows get padding.
        `streamer` (as transformers' streamers): put(prompt ids [B, T]), put(new tokens [B]) per step, end().

        Returns [B, T + n] with n <= max_new_tokens (fewer when every row has stopped).
        """
        if not self.config.is_causal:
            raise ValueError("generate() needs a decoder; encoders fill [MASK] tokens instead (ettin.eval)")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        b, t = input_ids.shape
        device = input_ids.device
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        eos_t = torch.tensor(eos, device=device, dtype=torch.long)
        pad = self.config.pad_token_id if pad_token_id is None else pad_token_id
        dtype = next(self.parameters()).dtype
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        cache_dtype = (
            torch.promote_types(dtype, torch.float32) if device.type == "cpu" else dtype
        )  # see cached_attention
        cache = KVCache(self.config, b, t + max_new_tokens, device, cache_dtype)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        cache.start_step(positions, mask)
        logits = self._cached_step(input_ids, cache)
        next_pos = positions[:, -1] + 1
        out = [input_ids]
        if streamer is not None:
            streamer.put(input_ids.cpu())
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            token = self._choose(logits.float(), do_sample, temperature, top_k, top_p, generator)
            token = torch.where(done, torch.full_like(token, pad), token)
            out.append(token[:, None])
            if streamer is not None:
                streamer.put(token.cpu())
            if eos:
                done = done | torch.isin(token, eos_t)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            cache.start_step(next_pos[:, None], torch.ones(b, 1, dtype=torch.bool, device=device))
            logits = self._cached_step(token[:, None], cache)
            next_pos = next_pos + 1
        if streamer is not None:
            streamer.end()
        return torch.cat(out, dim=1)

    @staticmethod
    def _choose(logits, do_sample, temperature, top_k, top_p, generator) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        logits = logits / max(temperature, 1e-5)
        if top_k is not None and top_k > 0:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    def num_parameters(self, *, with_head: bool = True) -> int:
        params = {id(p): p for p in (self.parameters() if with_head else self.model.parameters())}
        return sum(p.numel() for p in params.values())
