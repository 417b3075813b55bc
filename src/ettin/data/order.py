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
import os
import re
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


def order_coverage_gap(folder: str | Path, last_step: int) -> str | None:
    """What is missing for the parts in `folder` to record every step 1..last_step, or None.

    A resumed run appends after its checkpoint's step, so a deleted or damaged part would be a silent
    hole in the record of what the model saw; this reads only the step column."""
    folder = Path(folder)
    if last_step <= 0:
        return None
    parts = _parts(folder) if folder.is_dir() else []
    if not parts:
        return "no data_order parts at all"
    seen = np.unique(np.concatenate([_read_part(p, columns=["step"]).column(0).to_numpy() for p in parts]))
    seen = seen[(seen >= 1) & (seen <= last_step)]
    if len(seen) == last_step:
        return None
    missing = np.setdiff1d(np.arange(1, last_step + 1), seen)
    runs_ = np.split(missing, np.flatnonzero(np.diff(missing) != 1) + 1)
    shown = ", ".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs_[:5])
    more = f" and {len(runs_) - 5} more ranges" if len(runs_) > 5 else ""
    return f"{len(missing)} step(s) missing ({shown}{more})"


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


# ---------------------------------------------------------------------------------------- the released layout

RELEASE_LAYOUT = "ettin-release"
_CKPT_RE = re.compile(r"^checkpoint_(\d{6,})$")
_FILE_RE = re.compile(r"^steps_(\d{6,})_to_(\d{6,})\.parquet$")
RELEASE_BATCHES_PER_FILE = 300  # bert24's OptimizedDataSaver default


@dataclass(frozen=True)
class ReleaseFile:
    checkpoint: str
    path: Path
    first_step: int
    last_step: int


def release_files(folder: str | Path) -> list[ReleaseFile]:
    """The Parquet files of a folder in the layout of jhu-clsp/ettin-data-order (bert24's data saver):
    `checkpoint_NNNNNN/steps_AAAAAA_to_BBBBBB.parquet`; a single checkpoint folder works too."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EttinError("no such folder", path=folder, fix="give the folder holding checkpoint_NNNNNN/ folders")
    dirs = [folder] if _CKPT_RE.match(folder.name) else sorted(d for d in folder.iterdir() if _CKPT_RE.match(d.name))
    files = []
    for d in dirs:
        for p in sorted(d.glob("*.parquet")):
            m = _FILE_RE.match(p.name)
            if not m:
                raise EttinError(
                    f"{p.name} is not named steps_A_to_B.parquet", path=p, fix="keep the released file names"
                )
            files.append(ReleaseFile(d.name, p, int(m.group(1)), int(m.group(2))))
    if not files:
        other = "an ettin data order (part-*.parquet)" if any(folder.rglob("part-*.parquet")) else "no such files"
        raise EttinError(
            f"not the ettin-release layout (checkpoint_NNNNNN/steps_A_to_B.parquet): {other}",
            path=folder,
            field="layout",
            fix="give a folder of jhu-clsp/ettin-data-order, or read an ettin run with `ettin data order RUN`",
        )
    return sorted(files, key=lambda f: (f.first_step, f.path.name))


def _read_release(f: ReleaseFile) -> pa.Table:
    try:
        pf = pq.ParquetFile(f.path)
    except (pa.ArrowException, OSError) as exc:
        raise EttinError(f"is not a readable Parquet file ({exc})".splitlines()[0], path=f.path) from None
    names = pf.schema_arrow.names
    if "input_ids" not in names or "step" not in names:
        raise EttinError(
            f"has columns {', '.join(names)}, not input_ids and step (the released layout)",
            path=f.path,
            field="layout",
        )
    ids_type = pf.schema_arrow.field("input_ids").type
    if not (pa.types.is_list(ids_type) or pa.types.is_large_list(ids_type)) or not pa.types.is_integer(
        ids_type.value_type
    ):
        raise EttinError(f"input_ids is {ids_type}, not a list of integers", path=f.path, field="layout")
    return pf.read(columns=["input_ids", "step"])


def release_sequence_length(f: ReleaseFile) -> int | None:
    meta = pq.read_schema(f.path).metadata or {}
    raw = meta.get(b"sequence_length")
    return int(raw) if raw is not None else None


def release_summary(folder: str | Path) -> list[dict]:
    """Per checkpoint folder: files, steps (first, last, count), rows, ids, sequence_length values."""
    out: dict[str, dict] = {}
    for f in release_files(folder):
        t = _read_release(f)
        steps = t.column("step").to_numpy()
        row = out.setdefault(
            f.checkpoint,
            {"checkpoint": f.checkpoint, "files": 0, "rows": 0, "ids": 0, "steps": set(), "sequence_length": set()},
        )
        row["files"] += 1
        row["rows"] += t.num_rows
        row["ids"] += int(pc.sum(pc.list_value_length(t.column("input_ids"))).as_py() or 0)
        row["steps"].update(np.unique(steps).tolist())
        sl = release_sequence_length(f)
        if sl is not None:
            row["sequence_length"].add(sl)
    result = []
    for row in out.values():
        steps = sorted(row.pop("steps"))
        row["sequence_length"] = sorted(row["sequence_length"])
        row.update(num_steps=len(steps), first_step=steps[0] if steps else None, last_step=steps[-1] if steps else None)
        result.append(row)
    return result


def release_step(folder: str | Path, step: int) -> list[list[int]]:
    """The rows (sequences as fed to the model) of one step, in file order."""
    rows: list[list[int]] = []
    for f in release_files(folder):
        if f.first_step <= step <= f.last_step:
            t = _read_release(f)
            t = t.filter(pc.equal(t.column("step"), pa.scalar(step, t.schema.field("step").type)))
            rows.extend(t.column("input_ids").to_pylist())
    return rows


def iter_release_steps(folder: str | Path) -> Iterator[tuple[int, list[list[int]]]]:
    """(step, rows) in step order; raises if a step is split over files that are not adjacent."""
    seen: set[int] = set()
    current, acc = None, []
    for f in release_files(folder):
        t = _read_release(f)
        steps = t.column("step").to_numpy()
        ids = t.column("input_ids")
        order = np.argsort(steps, kind="stable")
        for i in order.tolist():
            s = int(steps[i])
            if s != current:
                if current is not None:
                    yield current, acc
                if s in seen:
                    raise EttinError(f"step {s} appears in two places", path=f.path, field="layout")
                seen.add(s)
                current, acc = s, []
            acc.append(ids[i].as_py())
    if current is not None:
        yield current, acc


def _run_pad_id(order_dir: Path) -> int | None:
    """The pad id of the tokenizer the run's data was prepared with (from plan.json and the manifest)."""
    from ettin.data.shards import read_manifest

    try:
        plan = read_plan(order_dir)
        ph = plan.phases[0]
        spec = DataSpec.from_dict(ph.data)
        base = Path(plan.data_dir or spec.dir)
        return read_manifest(base / spec.sources[0])["tokenizer"]["special_ids"].get("pad_token_id")
    except (EttinError, OSError, KeyError, IndexError):
        return None


def export_release(
    run: str | Path,
    out: str | Path,
    *,
    arch: str | None = None,
    pad_id: int | None = None,
    checkpoint_steps: list[int] | None = None,
    batches_per_file: int = RELEASE_BATCHES_PER_FILE,
) -> dict:
    """Write a run's recorded order in the released layout (one folder per checkpoint interval, zstd
    Parquet with `input_ids` list<uint16> padded to the phase's seq_len, `step` uint64 and the
    file metadata `sequence_length`). Checkpoint intervals come from the run's tags unless given.
    The output folder must not exist; it appears whole (written beside it, then renamed)."""
    import shutil

    from ettin.runs import list_tags

    folder = resolve_order_dir(run, arch)
    out = Path(out)
    if out.exists():
        raise EttinError("exists", path=out, fix="choose a new folder")
    if pad_id is None:
        pad_id = _run_pad_id(folder)
    if pad_id is None:
        raise EttinError("cannot tell the run's pad id", path=folder, field="--pad-id", fix="pass --pad-id")
    if checkpoint_steps is None:
        checkpoint_steps = sorted({t.step for t in list_tags(folder.parent)})
    bounds = sorted(set(checkpoint_steps))
    summary = order_steps(folder)
    try:  # rows are padded to their phase's seq_len, as the model was fed (bert24 pads to max_seq_len)
        phase_len = {p.name: p.seq_len for p in read_plan(folder).phases}
    except (EttinError, OSError, KeyError, TypeError):
        phase_len = {}
    step_phase = {s["step"]: s["phase"] for s in summary}
    if not summary:
        raise EttinError("no steps recorded", path=folder)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    written: dict[str, int] = {}
    try:

        def ckpt_of(step: int) -> int:
            return 1 + int(np.searchsorted(np.asarray(bounds, np.int64), step, side="left")) if bounds else 1

        groups: dict[int, list[int]] = {}
        for s in summary:
            groups.setdefault(ckpt_of(s["step"]), []).append(s["step"])
        for ck, steps in sorted(groups.items()):
            d = staging / f"checkpoint_{ck:06d}"
            d.mkdir()
            for i in range(0, len(steps), batches_per_file):
                chunk = steps[i : i + batches_per_file]
                t = read_order(folder, steps=chunk, columns=["input_ids"])
                rows = t.column("input_ids").to_pylist()
                width = max([len(r) for r in rows] + [phase_len.get(step_phase[s], 0) for s in chunk])
                mat = np.full((len(rows), width), pad_id, np.int64)
                for j, r in enumerate(rows):
                    mat[j, : len(r)] = r
                if mat.size and (mat.max() > 65535 or mat.min() < 0):
                    raise EttinError(
                        f"ids up to {int(mat.max())} do not fit the layout's uint16", path=folder, field="layout"
                    )
                values = pa.array(mat.reshape(-1).astype(np.uint16))
                offsets = pa.array(np.arange(0, mat.size + 1, max(width, 1), dtype=np.int32)[: len(rows) + 1])
                table = pa.Table.from_arrays(
                    [
                        pa.ListArray.from_arrays(offsets, values),
                        pa.array(t.column("step").to_numpy().astype(np.uint64)),
                    ],
                    names=["input_ids", "step"],
                    metadata={b"sequence_length": str(width).encode()},
                )
                name = f"steps_{chunk[0]:06d}_to_{chunk[-1]:06d}.parquet"
                pq.write_table(table, d / name, compression="zstd", use_dictionary=False)
                written[d.name] = written.get(d.name, 0) + len(rows)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written
