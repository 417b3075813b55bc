"""The open data order: every consumed global batch, one Parquet row per sequence.

Columns: `step`, `input_ids` (as in the released Ettin data order), `phase`, `seq` (index in the
batch), `length`, `source`, `doc`, `offset` (provenance) and `batch_hash` (sha256 over the step's
sequences, the same on every row of the step). Layout: `RUN/<arch>/data_order/part-<first step>.parquet`,
each part written atomically and holding whole steps.

Consistency with checkpoints: the trainer calls `flush()` right before it writes a checkpoint, and
after resuming from step S calls `truncate_after(S)`, which removes rows a crashed run recorded past
its last checkpoint; so rows are never duplicated or lost. Parts are named by their first step, so
a truncated part is rewritten in place under the same name.

`plan.json` (optional, written by the trainer through `OrderWriter(..., plan=...)`) holds what is
needed to regenerate the order from the prepared data and the seed (`regenerate_order`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ettin.data.mixture import DataSpec
from ettin.data.stream import PhaseBatches, Sample, TokenStream
from ettin.errors import EttinError
from ettin.io import atomic_path, atomic_write_json

ORDER_DIR = "data_order"
PLAN_FILE = "plan.json"
SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("phase", pa.string()),
        ("seq", pa.int32()),
        ("input_ids", pa.list_(pa.int32())),
        ("length", pa.int32()),
        ("source", pa.string()),
        ("doc", pa.int64()),
        ("offset", pa.int64()),
        ("batch_hash", pa.string()),
    ]
)


def batch_hash(samples: Sequence) -> str:
    """sha256 over the step's sequences (lengths and ids), 32 hex digits."""
    h = hashlib.sha256()
    for s in samples:
        ids = np.asarray(getattr(s, "input_ids", s), dtype="<i4")
        h.update(len(ids).to_bytes(4, "little"))
        h.update(ids.tobytes())
    return h.hexdigest()[:32]


def order_rows(step: int, phase: str, samples: Sequence[Sample]) -> pa.Table:
    lengths = np.fromiter((len(s.input_ids) for s in samples), np.int32, count=len(samples))
    offsets = np.zeros(len(samples) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([np.asarray(s.input_ids, np.int32) for s in samples]) if samples else np.zeros(0, np.int32)
    digest = batch_hash(samples)
    n = len(samples)
    return pa.table(
        [
            pa.array(np.full(n, step, np.int64)),
            pa.array([phase] * n, pa.string()),
            pa.array(np.arange(n, dtype=np.int32)),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
            pa.array(lengths),
            pa.array([s.source for s in samples], pa.string()),
            pa.array(np.fromiter((s.doc for s in samples), np.int64, count=n)),
            pa.array(np.fromiter((s.offset for s in samples), np.int64, count=n)),
            pa.array([digest] * n, pa.string()),
        ],
        schema=SCHEMA,
    )


def resolve_order_dir(path: str | Path, arch: str | None = None) -> Path:
    """Accept a run folder (with `arch`), an arch folder or the data_order folder itself."""
    path = Path(path)
    candidates = ([path / arch / ORDER_DIR] if arch else []) + [path / ORDER_DIR, path]
    for c in candidates:
        if c.is_dir() and (any(c.glob("part-*.parquet")) or c.name == ORDER_DIR):
            return c
    if not path.exists():
        raise EttinError(
            "no such folder", path=path, fix="give a run folder (RUN, RUN/encoder) or its data_order folder"
        )
    where = f" (looked for {path / arch / ORDER_DIR})" if arch else ""
    raise EttinError(f"no recorded data order here{where}", path=path, fix="give a run that trained with ettin")


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def _read_part(part: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(part, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise EttinError(
            f"is not a readable data-order part ({exc})".splitlines()[0],
            path=part,
            fix="the file was damaged; restore it from a copy",
        ) from None


class OrderWriter:
    """Records consumed batches; see the module docstring for how it stays consistent with checkpoints."""

    def __init__(self, folder: str | Path, *, plan: "OrderPlan | dict | None" = None, flush_rows: int = 65536):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flush_rows = flush_rows
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.last_step = max(
            (int(_read_part(p, columns=["step"]).column(0).to_numpy().max()) for p in _parts(self.folder)), default=0
        )
        if plan is not None:
            plan = plan if isinstance(plan, dict) else plan.to_dict()
            atomic_write_json(self.folder / PLAN_FILE, plan)

    def record(self, step: int, phase: str, samples: Sequence[Sample]) -> str:
        """Add one consumed global batch; returns its hash."""
        if step <= self.last_step:
            raise EttinError(
                f"step {step} is already recorded (last {self.last_step})",
                path=self.folder,
                fix="after resuming from a checkpoint at step S, call truncate_after(S) before recording",
            )
        table = order_rows(step, phase, samples)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.last_step = step
        if self._pending_rows >= self.flush_rows:
            self.flush()
        return table.column("batch_hash")[0].as_py() if table.num_rows else batch_hash([])

    def flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        first = int(table.column("step")[0].as_py())
        with atomic_path(self.folder / f"part-{first:010d}.parquet") as tmp:
            pq.write_table(table, tmp)
        self._pending, self._pending_rows = [], 0

    def truncate_after(self, step: int) -> None:
        """Forget every recorded step after `step` (on disk and in memory)."""
        self._pending = [t for t in self._pending if int(t.column("step")[0].as_py()) <= step]
        self._pending_rows = sum(t.num_rows for t in self._pending)
        for part in _parts(self.folder):
            steps = _read_part(part, columns=["step"]).column(0).to_numpy()
            if steps.min() > step:
                part.unlink()
            elif steps.max() > step:
                table = _read_part(part)
                table = table.filter(pc.less_equal(table.column("step"), step))
                with atomic_path(part) as tmp:
                    pq.write_table(table, tmp)
        self.last_step = min(self.last_step, step)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "OrderWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- read


def read_order(
    folder: str | Path,
    step: int | None = None,
    *,
    steps: Iterable[int] | None = None,
    columns: list[str] | None = None,
    arch: str | None = None,
) -> pa.Table:
    """Rows of the recorded order (all, one step, or some steps), sorted by (step, seq)."""
    folder = resolve_order_dir(folder, arch)
    parts = _parts(folder)
    wanted = None if step is None and steps is None else ({step} if step is not None else set(steps))
    cols = None if columns is None else list(dict.fromkeys(["step", "seq", *columns]))
    tables = []
    for part in parts:
        if wanted is not None:
            s = _read_part(part, columns=["step"]).column(0).to_numpy()
            if not wanted.intersection(np.unique(s).tolist()):
                continue
            table = _read_part(part, columns=cols)
            table = table.filter(pc.is_in(table.column("step"), pa.array(sorted(wanted), pa.int64())))
        else:
            table = _read_part(part, columns=cols)
        tables.append(table)
    if not tables:
        return SCHEMA.empty_table() if cols is None else pa.schema([SCHEMA.field(c) for c in cols]).empty_table()
    table = pa.concat_tables(tables).sort_by([("step", "ascending"), ("seq", "ascending")])
    return table


def order_steps(folder: str | Path, *, arch: str | None = None) -> list[dict]:
    """One summary per step: phase, sequences, tokens, hash; raises if a step appears in two parts."""
    folder = resolve_order_dir(folder, arch)
    seen: dict[int, str] = {}
    out: dict[int, dict] = {}
    for part in _parts(folder):
        t = _read_part(part, columns=["step", "phase", "length", "batch_hash"])
        grouped = t.group_by("step").aggregate(
            [("phase", "min"), ("length", "sum"), ("length", "count"), ("batch_hash", "min")]
        )
        for row in grouped.to_pylist():
            s = row["step"]
            if s in seen:
                raise EttinError(f"step {s} is recorded twice ({seen[s]} and {part.name})", path=folder)
            seen[s] = part.name
            out[s] = {
                "step": s,
                "phase": row["phase_min"],
                "sequences": row["length_count"],
                "tokens": row["length_sum"],
                "batch_hash": row["batch_hash_min"],
            }
    return [out[s] for s in sorted(out)]


def _step_digests(folder: Path) -> dict[int, str]:
    """Per step, a digest of everything recorded (ids and provenance); checks each stored batch_hash too."""
    digests: dict[int, str] = {}
    for part in _parts(folder):
        t = _read_part(part).sort_by([("step", "ascending"), ("seq", "ascending")])
        steps = t.column("step").to_numpy()
        bounds = np.flatnonzero(np.diff(steps)) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(steps)]
        ids = t.column("input_ids").to_pylist()
        cols = {c: t.column(c).to_pylist() for c in ("phase", "source", "doc", "offset", "batch_hash")}
        for a, b in zip(starts, ends):
            step = int(steps[a])
            recomputed = batch_hash([np.asarray(x, np.int32) for x in ids[a:b]])
            if recomputed != cols["batch_hash"][a]:
                raise EttinError(
                    f"step {step}: rows do not match their batch_hash", path=part, fix="the order was changed"
                )
            h = hashlib.sha256(recomputed.encode())
            h.update(json.dumps([cols[c][a:b] for c in ("phase", "source", "doc", "offset")]).encode())
            if step in digests:
                raise EttinError(f"step {step} is recorded twice", path=folder)
            digests[step] = h.hexdigest()
    return digests


@dataclass
class OrderComparison:
    identical: bool
    steps_a: int
    steps_b: int
    first_step: int | None = None  # first step where they differ
    first_seq: int | None = None
    reason: str = ""


def compare_orders(a: str | Path, b: str | Path) -> OrderComparison:
    """Whether two recorded orders hold the same rows, and where they first differ."""
    fa, fb = resolve_order_dir(a), resolve_order_dir(b)
    da, db = _step_digests(fa), _step_digests(fb)
    result = OrderComparison(True, len(da), len(db))
    for step in sorted(set(da) | set(db)):
        if step not in da or step not in db:
            missing = fa if step not in da else fb
            result.identical, result.first_step = False, step
            result.reason = f"step {step} is recorded in one order only (missing in {missing})"
            return result
        if da[step] != db[step]:
            ra = read_order(fa, step).to_pylist()
            rb = read_order(fb, step).to_pylist()
            result.identical, result.first_step = False, step
            for i, (x, y) in enumerate(zip(ra, rb)):
                diff = [k for k in ("phase", "input_ids", "source", "doc", "offset") if x[k] != y[k]]
                if diff:
                    result.first_seq = i
                    result.reason = f"step {step}, sequence {i}: {', '.join(diff)} differ"
                    return result
            result.reason = f"step {step}: {len(ra)} sequences vs {len(rb)}"
            return result
    if not da:
        result.identical = False
        result.reason = "no steps recorded"
    return result


# ---------------------------------------------------------------------------------------- regenerate


@dataclass
class PhasePlan:
    """What one phase consumes: enough to regenerate its batches from the prepared data and the seed.

    A phase runs for `steps` steps or until it has consumed `tokens` tokens (shared-sample tokens, as
    `PhaseBatches.tokens_seen` counts them); batch-size warmup counts from the phase's start.
    """

    name: str
    data: dict
    seq_len: int
    steps: int | None = None
    tokens: int | None = None
    batch_size: int | None = None
    batch_tokens: int | None = None
    warmup_tokens: int = 0
    warmup_start: int | None = None
    warmup_shape: str = "steps"

    def __post_init__(self) -> None:
        self.data = DataSpec.from_dict(self.data, where=f"{self.name}.data").to_dict()
        if (self.steps is None) == (self.tokens is None):
            raise EttinError("a phase plan needs exactly one of steps or tokens", field=f"{self.name}.steps")


@dataclass
class OrderPlan:
    seed: int
    phases: list[PhasePlan] = field(default_factory=list)
    data_dir: str | None = None  # overrides each phase's data.dir

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OrderPlan":
        return cls(int(d["seed"]), [PhasePlan(**p) for p in d["phases"]], d.get("data_dir"))


def plan_from_recipe(recipe) -> OrderPlan:
    """The plan of a training recipe (`ettin.recipe`), matching how the trainer opens each phase:
    one `PhaseBatches` per phase, run until the phase's tokens, warmup from `batch_warmup_min`."""
    phases = []
    for ph in recipe.phases:
        data = dict(ph.data)
        data["dir"] = str(Path(data["dir"]).resolve())
        phases.append(
            PhasePlan(
                ph.name,
                data,
                ph.seq_len,
                tokens=ph.tokens,
                batch_size=ph.batch_size,
                warmup_tokens=ph.batch_warmup_tokens,
                warmup_start=ph.batch_warmup_min,
                warmup_shape=ph.batch_warmup_shape,
            )
        )
    return OrderPlan(int(recipe.seed), phases)


def iter_order(
    plan: OrderPlan, *, data_dir: str | Path | None = None, max_steps: int | None = None
) -> Iterator[tuple[int, str, list[Sample]]]:
    """(step, phase, samples) for every step of the plan, steps numbered from 1 across phases."""
    step = 0
    for phase in plan.phases:
        stream = TokenStream(phase.data, data_dir or plan.data_dir, seed=plan.seed, seq_len=phase.seq_len)
        batches = PhaseBatches(
            stream,
            batch_size=phase.batch_size,
            batch_tokens=phase.batch_tokens,
            warmup_tokens=phase.warmup_tokens,
            warmup_start=phase.warmup_start,
            warmup_shape=phase.warmup_shape,
        )
        done = 0
        while (done < phase.steps) if phase.steps is not None else (batches.tokens_seen < phase.tokens):
            if max_steps is not None and step >= max_steps:
                return
            step += 1
            done += 1
            yield step, phase.name, batches.next_batch()


def regenerate_order(
    plan: OrderPlan | dict, *, data_dir: str | Path | None = None, max_steps: int | None = None
) -> pa.Table:
    """The order a run with this plan consumes, as the same rows `OrderWriter` records."""
    plan = plan if isinstance(plan, OrderPlan) else OrderPlan.from_dict(plan)
    tables = [
        order_rows(step, phase, samples)
        for step, phase, samples in iter_order(plan, data_dir=data_dir, max_steps=max_steps)
    ]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def read_plan(folder: str | Path, *, arch: str | None = None) -> OrderPlan:
    folder = resolve_order_dir(folder, arch)
    path = folder / PLAN_FILE
    if not path.is_file():
        raise EttinError(
            "the order has no plan.json, so it cannot be regenerated",
            path=folder,
            fix="record with OrderWriter(..., plan=OrderPlan(...))",
        )
    return OrderPlan.from_dict(json.loads(path.read_text()))
