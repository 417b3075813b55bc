"""The layout of a training run's folder, and the questions asked of it (no torch).

    RUN/                          a run: recipe.yaml plus one folder per trained arch
        recipe.yaml
        encoder/ decoder/         a *model run*: one model's tags
            checkpoints/<tag>/    full training state (trainer_state.json, weights, optimizer, rng)
            hf/<tag>/             weights-only Hugging Face export of the same step (+ ettin_checkpoint.json)

A tag is the phase's prefix and the optimizer steps taken within that phase: step{N} in pretraining,
ext{N} in extension, decay{N} in decay. Every other module asks this one what a folder is.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ettin.errors import EttinError

RECIPE_FILE = "recipe.yaml"
STATE_DIR = "checkpoints"
HF_DIR = "hf"
STATE_FILE = "trainer_state.json"
TAG_FILE = "ettin_checkpoint.json"
ARCH_DIRS = ("encoder", "decoder")
TAG_RE = re.compile(r"^[A-Za-z][A-Za-z_-]*[0-9]+$")


def make_tag(prefix: str, phase_step: int) -> str:
    return f"{prefix}{phase_step}"


def is_model_run(path: str | os.PathLike) -> bool:
    """One model's training run (RUN/encoder or RUN/decoder): it has checkpoints/ or hf/."""
    path = Path(path)
    return (path / HF_DIR).is_dir() or (path / STATE_DIR).is_dir()


def is_model_dir(path: str | os.PathLike) -> bool:
    """A Hugging Face model folder (config.json), as opposed to a run."""
    return (Path(path) / "config.json").is_file()


def is_run_dir(path: str | os.PathLike) -> bool:
    """A training run's folder: a model run, or a run holding one per arch (never a model folder)."""
    path = Path(path)
    if is_model_dir(path):
        return False
    return is_model_run(path) or any((path / a).is_dir() for a in ARCH_DIRS)


def model_runs(path: str | os.PathLike) -> list[Path]:
    """The model runs `path` stands for: itself when it is one, else its encoder/ and decoder/ that are."""
    path = Path(path)
    if is_model_run(path):
        return [path]
    return [path / a for a in ARCH_DIRS if is_model_run(path / a)]


@dataclass
class TagInfo:
    tag: str
    step: int  # global optimizer step
    tokens: int  # global tokens seen
    phase: int
    phase_name: str
    phase_step: int
    full_state: bool
    hf: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _tag_record(d: Path, name: str) -> dict | None:
    """The tag's record, or None when it is unreadable or lacks the fields a tag needs (never trusted then)."""
    try:
        rec = json.loads((d / name).read_text(encoding="utf-8"))
        for key in ("step", "tokens", "phase", "phase_step"):
            int(rec[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rec


def list_tags(model_run: str | os.PathLike) -> list[TagInfo]:
    """Every tag of a model run, oldest first, with where its files are."""
    model_run = Path(model_run)
    found: dict[str, TagInfo] = {}
    for sub, name, is_state in ((HF_DIR, TAG_FILE, False), (STATE_DIR, STATE_FILE, True)):
        root = model_run / sub
        if not root.is_dir():
            continue
        for d in root.iterdir():
            if not d.is_dir() or not TAG_RE.match(d.name):
                continue
            rec = _tag_record(d, name)
            if rec is None:
                continue
            info = found.get(d.name) or TagInfo(
                tag=d.name,
                step=int(rec["step"]),
                tokens=int(rec["tokens"]),
                phase=int(rec["phase"]),
                phase_name=str(rec.get("phase_name", "")),
                phase_step=int(rec["phase_step"]),
                full_state=False,
                hf=False,
            )
            if is_state:
                info.full_state = True
            else:
                info.hf = (d / "config.json").is_file()
            found[d.name] = info
    return sorted(found.values(), key=lambda t: (t.step, t.tag))


def exported_tags(model_run: str | os.PathLike) -> list[TagInfo]:
    return [t for t in list_tags(model_run) if t.hf]


def latest_full_state(model_run: str | os.PathLike) -> Path | None:
    states = [t for t in list_tags(model_run) if t.full_state]
    return Path(model_run) / STATE_DIR / states[-1].tag if states else None


def available(model_run: str | os.PathLike) -> str:
    """The fix text that lists the tags one can ask for."""
    tags = [t.tag for t in exported_tags(model_run)]
    if not tags:
        return "this run has no exported checkpoints yet"
    shown = tags if len(tags) <= 12 else tags[:4] + ["..."] + tags[-7:]
    return f"available: {', '.join(shown)} ({len(tags)} tags; `ettin checkpoints RUN` lists them)"


def resolve_revision(model_run: str | os.PathLike, tag: str | None = None) -> Path:
    """The HF folder of a tag (the latest tag when None). A pure lookup: nothing is written."""
    model_run = Path(model_run)
    if not is_model_run(model_run):
        hint = ""
        if any((model_run / a).is_dir() for a in ARCH_DIRS):
            hint = f"; give the model's folder, e.g. {model_run / 'encoder'}"
        raise EttinError(f"is not a model's training run (no {HF_DIR}/ or {STATE_DIR}/){hint}", path=model_run)
    exported = exported_tags(model_run)
    if tag is None:
        if not exported:
            raise EttinError(
                "has no exported checkpoints yet",
                path=model_run,
                fix="train until the first checkpoint interval, or pass a tag",
            )
        return model_run / HF_DIR / exported[-1].tag
    if any(t.tag == tag for t in exported):
        return model_run / HF_DIR / tag
    raise EttinError(f"no revision '{tag}'", path=model_run, fix=available(model_run))
