"""Checkpoints as tagged revisions.

Layout under one model's run directory (RUN/encoder or RUN/decoder):

    checkpoints/<tag>/        full training state, enough to continue bit for bit
        model.safetensors     weights (the tied vocabulary projection stored once, as the embedding)
        optimizer.pt          optimizer state keyed by parameter name (tensors and numbers only;
                              read back with torch.load(weights_only=True))
        rng.safetensors       torch RNG states (CPU, and CUDA where used), one set per process
        trainer_state.json    ettin.train.state.TrainState: step, tokens, phase, data-stream position,
                              python/numpy RNG, recipe hash
    hf/<tag>/                 weights-only Hugging Face export of the same step (+ ettin_checkpoint.json)

A tag is the phase's prefix and the optimizer steps taken within that phase: step{N} in pretraining,
ext{N} in extension, decay{N} in decay. Every directory is built under a temporary name and renamed
into place when complete, so a crash, a full disk or a failed write leaves the previous checkpoints as
they were. Retention deletes old full states (never the newest) but keeps every tag's HF export.

Reading tells damage from everything else: a missing, truncated or malformed file (checked against
its format: the safetensors header and offsets, the zip directory and CRCs of optimizer.pt, JSON) is
reported with DAMAGED_FIX; a file that is whole but does not read (another version, a bug) is
reported as that, never as damage.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ettin import faults
from ettin.errors import EttinError
from ettin.io import atomic_dir
from ettin.model import TIED_KEY  # the tying rule lives with the model
from ettin.runs import (  # noqa: F401  (re-exported: the checkpoint API reads runs through these)
    HF_DIR,
    STATE_DIR,
    STATE_FILE,
    TAG_FILE,
    TagInfo,
    is_model_run,
    latest_full_state,
    list_tags,
    make_tag,
    resolve_revision,
)
from ettin.train.state import TrainState

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
EMBEDDING_KEY = "model.embeddings.tok_embeddings.weight"
# --resume has no tag option: it takes the newest full state, so a damaged one is moved out of the way
DAMAGED_FIX = "move this tag's folder out of checkpoints/ to resume from the one before it (`ettin checkpoints RUN`)"


# ----------------------------------------------------------------------------------------- writing


def _weights_for_file(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage; the tied projection is restored from the embedding on load."""
    out = {}
    for k, v in state_dict.items():
        if k == TIED_KEY:
            continue
        out[k] = v.detach().to("cpu").contiguous()
    return out


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(_weights_for_file(state_dict), str(path), metadata={"format": "pt", "ettin": "1"})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    if EMBEDDING_KEY in sd and TIED_KEY not in sd:
        sd[TIED_KEY] = sd[EMBEDDING_KEY]
    return sd


def write_checkpoint(
    arch_dir: Path,
    tag: str,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: TrainState,
) -> Path:
    """Write one full state atomically; on any failure nothing appears under the tag's name."""
    from safetensors.torch import save_file

    target = Path(arch_dir) / STATE_DIR / tag
    with atomic_dir(target, overwrite=True) as tmp:
        save_weights(model_state, tmp / MODEL_FILE)
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        save_file({k: v.contiguous() for k, v in state.rng_tensors().items()}, str(tmp / RNG_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(state.to_dict(), indent=1) + "\n", encoding="utf-8")
        faults.point("checkpoint.write", tag=tag, path=tmp)
    faults.point("checkpoint.written", tag=tag, path=target)
    return target


def write_hf_export(arch_dir: Path, tag: str, model, info: dict[str, Any], tokenizer=None) -> Path:
    """The weights-only Hugging Face directory for a tag (what `ettin.load(..., revision=tag)` opens)."""
    from ettin import hf

    target = Path(arch_dir) / HF_DIR / tag
    with atomic_dir(target, overwrite=True) as tmp:
        hf.save_pretrained(model, tmp, tokenizer=tokenizer)
        (tmp / TAG_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        faults.point("checkpoint.export", tag=tag, path=tmp)
    return target


# ----------------------------------------------------------------------------------------- reading


@dataclass
class FullState:
    path: Path
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    trainer: TrainState


def _damaged(path: Path, what: str) -> EttinError:
    return EttinError(f"cannot be read: damaged ({what})".splitlines()[0], path=path, fix=DAMAGED_FIX)


def _unreadable(path: Path, exc: OSError) -> EttinError:
    """A file that is there but cannot be opened (permissions, I/O): not a damaged checkpoint."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return _damaged(path, "missing")
    return EttinError(f"cannot be read ({exc.strerror or exc})", path=path, fix="check the file's permissions and disk")


def _intact_but_unreadable(path: Path, exc: Exception) -> EttinError:
    """The file passes its format's own integrity check, so the reader failing is no damage."""
    return EttinError(
        f"is intact but cannot be read here ({type(exc).__name__}: {exc})".splitlines()[0][:300],
        path=path,
        fix="it may come from another version of ettin, torch or safetensors; resume with the versions that wrote it",
    )


def _safetensors_damage(path: Path) -> str | None:
    """What is wrong with a safetensors file's layout (header, offsets, size), or None when it is whole."""
    data = path.read_bytes()
    if len(data) < 8:
        return "shorter than its header"
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        return "truncated inside its header"
    try:
        header = json.loads(data[8 : 8 + n])
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "bad header"
    if 8 + n + max(ends, default=0) != len(data):
        return "truncated" if 8 + n + max(ends, default=0) > len(data) else "trailing bytes after its tensors"
    return None


def _read_safetensors(path: Path, loader):
    from safetensors import SafetensorError

    try:
        return loader(path)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except SafetensorError as exc:
        damage = _safetensors_damage(path)
        if damage:
            raise _damaged(path, damage) from None
        raise _intact_but_unreadable(path, exc) from None


def _read_optimizer(path: Path) -> dict[str, Any]:
    import zipfile

    try:
        # weights_only: tensors and plain containers only; a pickle that would run code is refused
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError, ... for a damaged file: look
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, EOFError, OSError):
            raise _damaged(path, "not a complete zip archive") from None
        if bad is not None:
            raise _damaged(path, f"checksum mismatch in {bad}") from None
        if isinstance(exc, pickle.UnpicklingError):
            raise EttinError(
                "holds Python objects besides tensors and numbers; refused without running them "
                "(ettin's trainer writes none, so the file was replaced or altered)",
                path=path,
                fix=DAMAGED_FIX,
            ) from None
        raise _intact_but_unreadable(path, exc) from exc


# the per-parameter moments of the Adam family (StableAdamW keeps these besides its own scalars)
MOMENT_KEYS = ("exp_avg", "exp_avg_sq")


def _few(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _kind(value: Any) -> str:
    """What a value of an optimizer state is, as far as loading it is concerned."""
    if value is None or isinstance(value, bool):
        return "none" if value is None else "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, torch.Tensor):
        return f"{'scalar ' if value.ndim == 0 else ''}tensor of {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


NUMBER_KINDS = ("number", "scalar tensor of")


def _number_problem(key: str, value: Any) -> str | None:
    """Why a hyperparameter or counter cannot be right (StableAdamW divides by 1 - beta**step)."""
    x = float(value)
    if not math.isfinite(x) or x < 0:
        return f"is {x}, not a finite number >= 0"
    if key.startswith("beta") and x >= 1:
        return f"is {x}; a beta must be below 1"
    return None


class _OptimizerCheck:
    """The checks of `check_optimizer_state`, one method per part of the file."""

    def __init__(self, path: Path):
        self.path = path

    def refuse(self, message: str, field: str) -> None:
        raise EttinError(message, path=self.path, field=field, fix=DAMAGED_FIX)

    def group(self, i: int, group: dict, want: list[tuple[str, tuple[int, ...]]], live: dict, groups: list) -> None:
        names = group.get("params")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            self.refuse(f"group {i} does not list its parameters by name", f"param_groups.{i}.params")
        missing = [n for n, _ in want if n not in set(names)]
        if missing:
            self.refuse(
                f"group {i} lacks {len(missing)} of the model's {len(want)} parameters of that group ({_few(missing)})",
                f"param_groups.{i}.params",
            )
        extra = sorted(set(names) - {n for n, _ in want})
        if extra or len(names) != len(want):
            self.refuse(
                f"group {i} names parameters its group of the model does not hold ({_few(extra or names)})",
                f"param_groups.{i}.params",
            )
        for key in sorted(({k for g in groups for k in g} | set(live)) - {"params"}):
            field = f"param_groups.{i}.{key}"
            if key not in group:
                self.refuse(f"group {i} lacks its hyperparameter '{key}'", field)
            value, kind = group[key], _kind(group[key])
            # the kind the optimizer keeps; a key it adds when it first steps (a step counter): the first group's
            expected = _kind(live[key] if key in live else next(g[key] for g in groups if key in g))
            if expected == "none":  # resolved when the optimizer first steps: None, or the flag it chose
                expected = "bool" if kind == "bool" else "none"
            if kind != expected:
                self.refuse(f"group {i}'s '{key}' is {kind}, where the optimizer keeps a {expected}", field)
            others = {repr(g.get(key)) for g in groups if _kind(g.get(key)) == "bool"}
            if kind == "bool" and len(others) > 1:  # one optimizer's flags: the same in every group
                self.refuse(f"group {i}'s '{key}' is {value}, and another group's is not", field)
            if kind.startswith(NUMBER_KINDS) and (problem := _number_problem(key, value)):
                self.refuse(f"group {i}'s '{key}' {problem}", field)
            if not (kind in ("none", "bool") or kind.startswith(NUMBER_KINDS)):
                self.refuse(f"group {i}'s '{key}' is {kind}, not a number or a flag", field)

    def entries(self, state: dict, shapes: dict[str, tuple[int, ...]]) -> None:
        first: dict[str, str] | None = None
        for name, entry in state.items():
            if not isinstance(entry, dict):
                self.refuse(f"the state of {name} is {type(entry).__name__}, not a dict", f"state.{name}")
            lacking = [k for k in MOMENT_KEYS if k not in entry]
            if lacking:
                self.refuse(f"the state of {name} lacks {', '.join(lacking)}", f"state.{name}")
            kinds = {}
            for key, value in entry.items():
                field = f"state.{name}.{key}"
                kinds[key] = _kind(value)
                if isinstance(value, torch.Tensor) and (value.ndim or key in MOMENT_KEYS):
                    if tuple(value.shape) != shapes[name]:
                        self.refuse(
                            f"{key} of {name} has shape {list(value.shape)}, the parameter {list(shapes[name])}", field
                        )
                    if not value.is_floating_point():
                        self.refuse(f"{key} of {name} holds {kinds[key]}, not floating-point numbers", field)
                elif key in MOMENT_KEYS:
                    self.refuse(f"{key} of {name} is {kinds[key]}, not a tensor", field)
                elif not (kinds[key] in ("none", "bool") or kinds[key].startswith(NUMBER_KINDS)):
                    self.refuse(f"{key} of {name} is {kinds[key]}, not a tensor or a number", field)
            first = first or kinds
            differ = sorted(k for k in first.keys() | kinds.keys() if first.get(k) != kinds.get(k))
            if differ:  # every parameter's state has the same entries, of the same kinds
                k = differ[0]
                self.refuse(
                    f"{k} of {name} is {kinds.get(k, 'missing')} where the other parameters' is "
                    f"{first.get(k, 'missing')}",
                    f"state.{name}.{k}",
                )


def check_optimizer_state(path: Path, saved: Any, model: torch.nn.Module, optimizer, *, stepped: bool) -> None:
    """Refuse an optimizer state that does not fit `optimizer` over `model`, before it is loaded.

    `saved` is what `torch.load(weights_only=True)` read (keyed by parameter name, as
    `full_optimizer_state` writes it). Its groups must be the optimizer's, each naming the same
    parameters and holding every hyperparameter the optimizer keeps, of the kind it keeps (a number,
    finite, >= 0, a beta below 1; a flag); after a step (`stepped`) every parameter needs its state,
    the moments in MOMENT_KEYS floating-point tensors shaped like the parameter, and every parameter's
    state the same entries of the same kinds. Otherwise torch would fail later (a KeyError, a division
    by zero), or quietly train the parameters left out with fresh moments.
    """
    check = _OptimizerCheck(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        check.refuse("is not an optimizer state (a dict holding 'state' and 'param_groups')", "state")
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        check.refuse("has no list of parameter groups", "param_groups")
    name_of = {id(p): n for n, p in model.named_parameters()}
    live = [[(name_of[id(p)], tuple(p.shape)) for p in g["params"]] for g in optimizer.param_groups]
    if len(groups) != len(live):
        check.refuse(f"has {len(groups)} parameter groups, the model's optimizer has {len(live)}", "param_groups")
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (group, want, live_group) in enumerate(zip(groups, live, optimizer.param_groups)):
        check.group(i, group, want, live_group, groups)
        shapes.update(want)
    state = saved["state"]
    extra = sorted(str(n) for n in state if n not in shapes)
    if extra:
        check.refuse(f"holds state for parameters the model does not have ({_few(extra)})", "state")
    if stepped:
        missing = [n for n in shapes if n not in state]
        if missing:
            check.refuse(
                f"has no state for {len(missing)} of the model's {len(shapes)} parameters ({_few(missing)}); "
                "resuming would train them with fresh moments",
                "state",
            )
    check.entries(state, shapes)


def read_trainer_state(ckpt_dir: Path, rng_tensors: dict[str, torch.Tensor] | None = None) -> TrainState:
    path = Path(ckpt_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except ValueError as exc:  # bad JSON, or bytes that are not UTF-8
        raise _damaged(path, f"not JSON: {exc}") from None
    return TrainState.from_dict(raw, rng_tensors, path=path)


def load_checkpoint(ckpt_dir: Path) -> FullState:
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    missing = [n for n in (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE) if not (ckpt_dir / n).is_file()]
    if missing:
        raise EttinError(f"incomplete checkpoint (missing {', '.join(missing)})", path=ckpt_dir, fix=DAMAGED_FIX)
    model = _read_safetensors(ckpt_dir / MODEL_FILE, load_weights)
    optimizer = _read_optimizer(ckpt_dir / OPTIMIZER_FILE)
    rng = _read_safetensors(ckpt_dir / RNG_FILE, lambda p: load_file(str(p)))
    return FullState(path=ckpt_dir, model=model, optimizer=optimizer, trainer=read_trainer_state(ckpt_dir, rng))


def _remove_dir(path: Path) -> None:
    """Rename out of sight, then delete: a crash mid-deletion never leaves a half-deleted tag that looks real."""
    if not path.is_dir():
        return
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    faults.point("checkpoint.remove", tag=path.name, path=trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(arch_dir: str | os.PathLike) -> list[str]:
    """Delete what interrupted writes and deletions left (hidden `.TAG.tmp-*`, `.TAG.trash-*`, `.TAG.old-*`).

    Only for the one process that owns the run, before it writes: a leftover of a crashed checkpoint
    write can be as large as the checkpoint itself.
    """
    removed = []
    for sub in (STATE_DIR, HF_DIR):
        root = Path(arch_dir) / sub
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if p.name.startswith(".") and any(m in p.name for m in (".tmp-", ".trash-", ".old-")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(f"{sub}/{p.name}")
    return removed


def apply_retention(arch_dir: str | os.PathLike, keep_last: int | None) -> list[str]:
    """Delete all but the newest `keep_last` full states; HF exports stay. Returns the tags removed."""
    if keep_last is None:
        return []
    states = [t for t in list_tags(arch_dir) if t.full_state]
    removed = []
    for t in states[: max(0, len(states) - keep_last)]:
        _remove_dir(Path(arch_dir) / STATE_DIR / t.tag)
        removed.append(t.tag)
    return removed


def drop_tags_after(arch_dir: str | os.PathLike, step: int) -> list[str]:
    """On resume: tags written after the state being resumed from belong to the abandoned future."""
    removed = []
    for t in list_tags(arch_dir):
        if t.step > step:
            for sub in (STATE_DIR, HF_DIR):
                _remove_dir(Path(arch_dir) / sub / t.tag)
            removed.append(t.tag)
    return removed
