"""One task's result: what was run, and either its `Score` or the error that stopped it.

`TaskResult.to_dict` is the `<task>.json` format (also each entry of `results.json`'s `tasks`), and
`TaskResult.from_dict` reads it back, including files written before this class existed: the keys
and their order are those of docs/evaluation.md, "Output".
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

OK = "ok"
ERROR = "error"

# What the dynamics table keeps of a result: everything but the per-item arrays and the traceback.
PER_ITEM_KEYS = ("item_ids", "per_item")


@dataclass
class Score:
    """What a task measured. `per_item` is the primary metric per item, in `item_ids` order (for
    paired comparisons); `ci` is {low, high, level, method}."""

    metric: str
    value: float
    metrics: dict[str, float]
    n: int
    ci: dict[str, Any]
    chance: float
    chance_rule: str
    method: str
    details: dict[str, Any] = field(default_factory=dict)
    item_ids: list | None = None
    per_item: list[float] | None = None


_SCORE_KEYS = tuple(f.name for f in fields(Score))
_HEADER_KEYS = ("task", "kind", "model", "arch", "suite", "seed", "description", "source", "split")


@dataclass
class TaskResult:
    """One model on one task. Exactly one of `score` (status "ok") and `error` (status "error") is set."""

    task: str
    kind: str
    model: str
    arch: str
    suite: str
    seed: int
    description: str = ""
    source: str = ""
    split: str = ""
    score: Score | None = None
    error: str | None = None
    traceback: str | None = None  # for a failure that is a bug, not the user's input
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.score is not None

    @property
    def status(self) -> str:
        return OK if self.ok else ERROR

    def paired_with(self, other: TaskResult | None) -> bool:
        """Both scored the same items in the same order (so a paired interval of their gap exists)."""
        return (
            other is not None
            and self.ok
            and other.ok
            and self.score.item_ids is not None
            and self.score.item_ids == other.score.item_ids
        )

    def above_chance(self) -> bool:
        """The interval's lower end clears the chance level."""
        return self.ok and self.score.ci["low"] > self.score.chance

    def to_dict(self, *, per_item: bool = True) -> dict:
        """The JSON form; `per_item=False` leaves out the per-item arrays and the traceback."""
        d: dict[str, Any] = {k: getattr(self, k) for k in _HEADER_KEYS}
        d["status"] = self.status
        if self.score is not None:
            d.update({k: getattr(self.score, k) for k in _SCORE_KEYS})
            if not per_item:
                for k in PER_ITEM_KEYS:
                    d.pop(k)
        else:
            d["error"] = self.error or ""
            if self.traceback is not None and per_item:
                d["traceback"] = self.traceback
        d["seconds"] = self.seconds
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TaskResult:
        """Read a `<task>.json` (or a `results.json` entry, with or without its per-item arrays)."""
        score = None
        if d.get("status") == OK:
            score = Score(**{k: d.get(k) for k in _SCORE_KEYS})
            if score.details is None:
                score.details = {}
        return cls(
            **{k: d.get(k, "") for k in _HEADER_KEYS},
            score=score,
            error=None if score is not None else d.get("error", ""),
            traceback=d.get("traceback"),
            seconds=d.get("seconds", 0.0),
        )
