"""What a full checkpoint holds besides weights and optimizer state: `TrainState`, the one list of it.

`trainer_state.json` is `TrainState.to_dict()` (its keys have not changed since version 1, so older
runs resume); the torch RNG states of every process go to `rng.safetensors` (`rng_tensors()`), the
numpy and Python RNG states into the JSON. Reading validates every field: a missing key or a wrong
type is an error naming the file and the field, never a KeyError deep inside a resume.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ettin.errors import EttinError

STATE_VERSION = 1
# The fields an HF export's ettin_checkpoint.json repeats (what `ettin checkpoints` and `ettin.load` show).
TAG_INFO_FIELDS = ("step", "tokens", "phase", "phase_name", "phase_step", "phase_tokens", "arch", "objective", "loss")
# The fields every model of a pair must agree on when resuming.
PAIR_FIELDS = ("step", "tokens", "phase", "phase_step", "phase_tokens", "data", "order_chain")


@dataclass
class RankRng:
    """One process's random number generators: torch (CPU, CUDA where used) as tensors, numpy and Python."""

    tensors: dict[str, torch.Tensor]  # torch_cpu, torch_cuda{i}, numpy_keys
    numpy: list  # [kind, pos, has_gauss, cached_gaussian]
    python: list  # [version, internal state, gauss_next]

    @classmethod
    def capture(cls) -> RankRng:
        tensors = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"torch_cuda{i}"] = s
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, np.int64))
        version, internal, gauss = random.getstate()
        return cls(tensors, [kind, int(pos), int(has_gauss), float(cached)], [version, list(internal), gauss])

    def restore(self) -> None:
        torch.set_rng_state(self.tensors["torch_cpu"])
        cuda = [self.tensors[k] for k in sorted(self.tensors) if k.startswith("torch_cuda")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
        kind, pos, has_gauss, cached = self.numpy
        np.random.set_state((kind, self.tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = self.python
        random.setstate((version, tuple(internal), gauss))


@dataclass
class TrainState:
    arch: str
    objective: str
    tag: str
    step: int  # global optimizer steps
    tokens: int  # global tokens seen
    phase: int  # index into recipe.phases
    phase_name: str
    phase_step: int
    phase_tokens: int
    loss: float  # of the last step
    data: dict  # the data stream's position (PhaseBatches.state_dict())
    order_chain: str  # running hash over every step's batch hash
    world_size: int
    strategy: str
    tokenizer_fingerprint: str
    recipe_sha256: str
    time: float
    skips: int = 0  # skipped updates in a row (absent in runs from before the guards)
    rng: dict[int, RankRng] = field(default_factory=dict)  # per rank; a rank of another world size has none
    version: int = STATE_VERSION

    def to_dict(self) -> dict[str, Any]:
        """trainer_state.json (the torch RNG tensors go to rng.safetensors: `rng_tensors`)."""
        out: dict[str, Any] = {"version": self.version}
        for name in _FIELDS:
            out[name] = getattr(self, name)
        out["rng"] = {f"rank{i}": {"numpy": r.numpy, "python": r.python} for i, r in sorted(self.rng.items())}
        out["time"] = self.time
        return out

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        return {f"rank{i}.{k}": v for i, r in sorted(self.rng.items()) for k, v in r.tensors.items()}

    def tag_info(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in TAG_INFO_FIELDS}

    @classmethod
    def from_dict(
        cls, raw: Any, rng_tensors: dict[str, torch.Tensor] | None = None, *, path: str | Path = "trainer_state.json"
    ) -> TrainState:
        """Validate a trainer_state.json (and the rng.safetensors tensors that go with it)."""
        if not isinstance(raw, dict):
            raise EttinError("is not a JSON object", path=path, fix=_FIELD_FIX)
        version = raw.get("version")
        if not _is_int(version):
            raise EttinError("holds no version number", path=path, field="version", fix=_FIELD_FIX)
        if version > STATE_VERSION:
            raise EttinError(
                f"was written by a newer ettin (state version {version}; this one reads up to {STATE_VERSION})",
                path=path,
                field="version",
                fix="resume with the ettin version that wrote the run",
            )
        values: dict[str, Any] = {}
        for name, kind in _FIELDS.items():
            if name not in raw:
                if name == "skips":
                    continue
                raise EttinError("missing", path=path, field=name, fix=_FIELD_FIX)
            value = raw[name]
            ok = (
                _is_int(value)
                if kind is int
                else ((_is_int(value) or isinstance(value, float)) if kind is float else isinstance(value, kind))
            )
            if not ok or (kind is int and value < 0):
                raise EttinError(
                    f"must be {'a non-negative integer' if kind is int else _KIND_NAMES[kind]}, not {value!r}"[:200],
                    path=path,
                    field=name,
                    fix=_FIELD_FIX,
                )
            values[name] = float(value) if kind is float else value
        if not (_is_int(raw.get("time")) or isinstance(raw.get("time"), float)):
            raise EttinError("missing or not a number", path=path, field="time", fix=_FIELD_FIX)
        rng = _read_rng(raw.get("rng"), rng_tensors or {}, path)
        return cls(**values, time=float(raw["time"]), rng=rng, version=int(version))


# name -> type of every field trainer_state.json holds besides version, rng and time (in file order)
_FIELDS: dict[str, type] = {
    "arch": str,
    "objective": str,
    "tag": str,
    "step": int,
    "tokens": int,
    "phase": int,
    "phase_name": str,
    "phase_step": int,
    "phase_tokens": int,
    "loss": float,
    "data": dict,
    "order_chain": str,
    "skips": int,
    "world_size": int,
    "strategy": str,
    "tokenizer_fingerprint": str,
    "recipe_sha256": str,
}
_KIND_NAMES = {str: "a string", float: "a number", dict: "a JSON object"}
_FIELD_FIX = "the file was edited or written by an incompatible ettin; resume with the ettin version that wrote the run"


_RNG_TENSORS = ("torch_cpu", "numpy_keys")  # what every rank's RankRng.restore needs


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_rng(raw: Any, tensors: dict[str, torch.Tensor], path: str | Path) -> dict[int, RankRng]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise EttinError("must be a JSON object", path=path, field="rng", fix=_FIELD_FIX)
    out: dict[int, RankRng] = {}
    for key, extra in raw.items():
        rank = key[len("rank") :] if key.startswith("rank") else ""
        ok = rank.isdigit() and isinstance(extra, dict)
        ok = ok and isinstance(extra.get("numpy"), list) and len(extra["numpy"]) == 4
        ok = ok and isinstance(extra.get("python"), list) and len(extra["python"]) == 3
        if not ok:
            raise EttinError(
                "must map rankN to {numpy: [4 values], python: [3 values]}",
                path=path,
                field=f"rng.{key}",
                fix=_FIELD_FIX,
            )
        mine = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{key}.")}
        if mine:
            lacking = [k for k in _RNG_TENSORS if k not in mine]
            if lacking:
                raise EttinError(
                    f"rng.safetensors holds no {', '.join(f'{key}.{k}' for k in lacking)}",
                    path=path,
                    field=f"rng.{key}",
                    fix=_FIELD_FIX,
                )
            out[int(rank)] = RankRng(mine, list(extra["numpy"]), list(extra["python"]))
        elif tensors:
            raise EttinError(
                f"rng.safetensors holds no tensors for {key}", path=path, field=f"rng.{key}", fix=_FIELD_FIX
            )
    return out
