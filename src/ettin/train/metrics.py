"""Seeing a run: metrics as JSONL and TensorBoard events, and a progress bar per phase.

One `metrics.jsonl` per model (RUN/<arch>/metrics.jsonl), one JSON object per line: training steps
carry `kind: "train"`, held-out evaluations `kind: "eval"`. On resume, lines after the resumed step are
dropped (they belong to the abandoned future) and TensorBoard is told to purge them too.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ettin.io import atomic_write_text

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line after a crash
            continue
    return out


class MetricsLog:
    """Append-only metrics for one model; rank 0 only."""

    def __init__(self, arch_dir: Path, *, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(arch_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL is enough
                SummaryWriter = None
            if SummaryWriter is not None:
                purge = None if resume_step is None else resume_step + 1
                self._tb = SummaryWriter(str(Path(arch_dir) / TB_DIR), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            kind = record.get("kind", "train")
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key in ("step", "time", "phase") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if isinstance(value, float) and not math.isfinite(value):
                    continue
                self._tb.add_scalar(f"{kind}/{key}", value, step)

    def flush(self) -> None:
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _short(n: float) -> str:
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


class PhaseProgress:
    """A rich progress bar per phase: tokens, tokens/s, loss per model, learning rate, ETA."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        self._task = None
        self._total = 0

    def __enter__(self) -> "PhaseProgress":
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=16),
                TextColumn("{task.fields[done]} tok"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[stats]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(compact=True),
                refresh_per_second=4,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_phase(self, description: str, total: int, completed: int = 0) -> None:
        if self._progress is None:
            return
        self._total = total
        self._task = self._progress.add_task(
            description,
            total=total,
            completed=completed,
            rate="",
            stats="",
            done=f"{_short(completed)}/{_short(total)}",
        )

    def update(self, completed: int, tokens_per_s: float, losses: dict[str, float], lr: float) -> None:
        if self._progress is None or self._task is None:
            return
        stats = " ".join(f"{k[:3]} {v:.3f}" for k, v in losses.items()) + f" lr {lr:.1e}"
        self._progress.update(
            self._task,
            completed=completed,
            rate=f"{_short(tokens_per_s)}/s",
            stats=stats,
            done=f"{_short(completed)}/{_short(self._total)}",
        )

    def print(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)


def throughput_table(stats, title: str = "throughput (tokens of the shared stream per second, per model)"):
    """A rich table of `TrainResult.stats`: steps, tokens, seconds and tokens/s per model and phase."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("model", "phase", "steps", "tokens", "seconds", "tokens/s"):
        table.add_column(col, justify="left" if col in ("model", "phase") else "right")
    for s in stats:
        table.add_row(s.arch, s.phase, str(s.steps), f"{s.tokens:,}", f"{s.seconds:.1f}", f"{s.tokens_per_s:,.0f}")
    return table
