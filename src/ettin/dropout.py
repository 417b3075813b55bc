"""Dropout whose masks depend only on what a token is, never on where the batch put it.

A stateful generator gives a token a different mask when the batch is split differently (other
micro-batches, other ranks), so N processes would not follow the one-process trajectory. Here the
keep/drop decision of element (sequence, position, channel) in layer l is a counter-based hash of
(seed, arch, step, the sequence's index in the global batch, position, l, channel), as the MLM masking
in `ettin.data.masking` is: the same sequence gets the same mask on any micro-batch, rank or device.

Per sequence, a 64-bit key comes from `masking.sequence_keys` (splitmix64); per element, murmur3's
32-bit finaliser on int32 tensors (wrapping multiplies, logical shifts by masking) mixes in the
position, the layer and the channel. Measured on the CPU it costs less than torch's own dropout (the
Bernoulli draw), see docs/training.md.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from ettin.hashing import sequence_keys

_G = -1640531527  # 0x9E3779B9 (the golden ratio) as int32
_M1 = -2048144789  # 0x85EBCA6B
_M2 = -1028477387  # 0xC2B2AE35
_LAYER = 0x27D4EB2F
_BITS = 24  # resolution of the keep decision: p is compared in steps of 2^-24


def _fmix(h: torch.Tensor) -> torch.Tensor:
    """murmur3's finaliser on an int32 tensor (>> is arithmetic on signed ints: mask to make it logical)."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _M1
    h = h ^ ((h >> 13) & 0x7FFFF)
    h = h * _M2
    return h ^ ((h >> 16) & 0xFFFF)


def dropout_seed(seed: int, arch: str) -> int:
    """The dropout stream of one model of a run: independent of the masking stream and of the other arch."""
    return (int(seed) * 0x100000001B3 + zlib.crc32(f"dropout/{arch}".encode())) & ((1 << 64) - 1)


def sequence_dropout_keys(seed: int, step: int, first_index: int, count: int) -> torch.Tensor:
    """int32 [count]: keys of the sequences first_index .. first_index+count-1 of the global batch."""
    k = sequence_keys(seed, step, np.arange(first_index, first_index + count, dtype=np.uint64))
    folded = (k ^ (k >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return torch.from_numpy(folded.astype(np.uint32).view(np.int32).copy())


def token_keys(sequence_keys_: torch.Tensor, lengths: list[int], positions: torch.Tensor) -> torch.Tensor:
    """int32 [N]: one key per token of a flat batch, from its sequence's key and its position."""
    per_token = torch.repeat_interleave(
        sequence_keys_.to(positions.device), torch.tensor(lengths, device=positions.device), output_size=len(positions)
    )
    return _fmix(per_token ^ _fmix(positions.to(torch.int32) * _G + 1))


def keep_mask(keys: torch.Tensor, layer: int, width: int, p: float) -> torch.Tensor:
    """bool [N, width]: True where element (token, channel) of `layer` is kept."""
    layer_keys = _fmix(keys ^ ((layer + 1) * _LAYER))
    channels = torch.arange(width, device=keys.device, dtype=torch.int32) * _G
    h = _fmix(layer_keys[:, None] ^ channels[None, :])
    return ((h >> (32 - _BITS)) & ((1 << _BITS) - 1)) >= round(p * (1 << _BITS))


def hashed_dropout(x: torch.Tensor, keys: torch.Tensor, layer: int, p: float) -> torch.Tensor:
    """x [N, width] with the dropped elements zeroed and the kept ones scaled by 1 / (1 - p)."""
    if p <= 0.0:
        return x
    keep = keep_mask(keys, layer, x.shape[-1], p)
    return torch.where(keep, x * (1.0 / (1.0 - p)), x.new_zeros(()))
