"""Kill training and data preparation with SIGKILL, resume, and check that nothing was lost or faked.

    .venv/bin/python scripts/crash_trials.py --trials 20            # random kills, prints a summary
    .venv/bin/python -m ettin.reliability.crash_trials --trials 5 --seed 7 --keep --workdir /tmp/crash

A trial trains a tiny encoder-decoder pair (CPU, fp32, attention dropout on, a checkpoint every two or
so steps, retention on) in a child process, kills it one or more times, resumes it each time with
`ettin train --resume` (or starts it again when the kill came before the run existed), and at the end
compares every checkpoint, every export, the data order and the losses with an uninterrupted run: they
must be bitwise identical. After every kill the run folder is scanned: every checkpoint the loader
trusts (listed by `ettin checkpoints`) must load, every listed export must open with `ettin.load`.
Data-preparation trials do the same to `ettin data prepare` (a rerun must give the same manifest and
bytes, a prepared folder that exists must verify).

Kill moments come from a named fault point inside the child (ettin.faults: inside a checkpoint write
after the files are written but before the rename, between the full state and its export, inside a
tag's deletion, inside a data-order write, between a shard's files and its done-marker, inside the
manifest write, before the prepared folder is renamed into place) or from a timer at a random time; `--slow` widens the checkpoint writes so random kills land inside them more often. The
child kills itself with SIGKILL, which is what an external `kill -9` at that instruction would do: no
`finally`, no atexit, no flush.

The same module is the child: `python -m ettin.reliability.crash_trials child --fault POINT:N [--slow S]
-- ETTIN ARGS...` runs the `ettin` command line in-process with the kill armed. The tests
(tests/test_crash.py, tests/test_guards.py) import it; scripts/crash_trials.py is its entry point.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

KILLED = -signal.SIGKILL

# ------------------------------------------------------------------------------------- the child

# Fault points (ettin.faults) a random trial may kill at; the same entries, with :N, name chosen kills.
TRAIN_POINTS = (
    "train.step",
    "checkpoint.write",
    "checkpoint.written",
    "checkpoint.export",
    "checkpoint.remove",
    "io.file_rename[path=*/data_order/part-*]",
)
PREPARE_POINTS = ("prepare.write_shard", "io.file_rename[path=*/manifest.json]", "io.dir_rename")


def _die(**_) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _remove_then_die(path, **_) -> None:
    """The worst order a deletion can take: the weights gone, the state file still there, then the kill."""
    (Path(path) / "model.safetensors").unlink(missing_ok=True)
    _die()


def install_faults(fault: str | None, slow: float = 0.0) -> None:
    """Arm one kill: POINT[[KEY=PATTERN]]:N dies at the N-th hit of that fault point (ettin.faults.POINTS),
    time:T after T seconds from now; `slow` sleeps inside every checkpoint and export write first.

    At checkpoint.remove the weights of the tag being deleted are removed before the kill.
    """
    from ettin import faults

    timing = os.environ.get("ETTIN_CRASH_TIMING")
    if timing:  # how long the work itself takes, for choosing random kill times
        import atexit

        t0 = time.monotonic()
        atexit.register(lambda: Path(timing).write_text(f"{time.monotonic() - t0:.3f}"))
    if slow:
        for name in ("checkpoint.write", "checkpoint.export"):
            faults.arm_now(name, f"sleep:{slow}")
    if not fault:
        return
    if fault.startswith("time:"):
        import threading

        t = threading.Timer(float(fault[len("time:") :]), _die)
        t.daemon = True
        t.start()
        return
    name, at, where, action = faults.parse_entry(fault)
    if at is None or action is not None:
        raise SystemExit(f"crash_trials: a kill is POINT[[KEY=PATTERN]]:N, not {fault!r}")
    faults.arm_now(name, _remove_then_die if name == "checkpoint.remove" else _die, at=at, **where)


def child_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m ettin.reliability.crash_trials child")
    p.add_argument("--fault", default=None)
    p.add_argument("--slow", type=float, default=0.0)
    p.add_argument("ettin_args", nargs=argparse.REMAINDER)
    ns = p.parse_args(argv)
    args = ns.ettin_args[1:] if ns.ettin_args[:1] == ["--"] else ns.ettin_args
    import torch

    import ettin.data.prepare  # noqa: F401  (imported before the clock starts: kills land in the work)
    import ettin.train.trainer  # noqa: F401
    from ettin.cli import main

    torch.set_num_threads(1)  # the same reduction order in every process, so runs can be compared bit for bit
    install_faults(ns.fault, ns.slow)
    sys.argv = ["ettin", *args]
    main()


# ------------------------------------------------------------------------------------ the parent


def child_env() -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONHASHSEED="0",
        NO_COLOR="1",
        COLUMNS="200",
    )


def run_child(
    args: list[str],
    *,
    fault: str | None = None,
    slow: float = 0.0,
    cwd: Path | None = None,
    timeout: float = 600,
    timing: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run `ettin ARGS` in a child with the fault armed; with `timing`, the child writes there how many
    seconds its work took (from the start of training or preparation to the exit)."""
    cmd = [sys.executable, "-m", "ettin.reliability.crash_trials", "child"]
    if fault:
        cmd += ["--fault", fault]
    if slow:
        cmd += ["--slow", str(slow)]
    cmd += ["--", *map(str, args)]
    env = child_env() | ({"ETTIN_CRASH_TIMING": str(timing)} if timing else {})
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def make_assets(root: Path, tokenizer: Path | None = None) -> dict[str, Path]:
    """A tokenizer (trained here unless given), a small wiki corpus as JSONL, its prepared data."""
    from ettin.data.prepare import prepare
    from ettin.data.sources import builtin_texts

    root.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        from ettin.tokenizer import train_tokenizer

        tokenizer = root / "tokenizer"
        if not (tokenizer / "tokenizer.json").is_file():
            train_tokenizer(itertools.islice(builtin_texts("shakespeare"), 4), 1024, tokenizer)
    corpus = root / "wiki.jsonl"
    if not corpus.is_file():
        with open(corpus, "w", encoding="utf-8") as f:
            for text in itertools.islice(builtin_texts("wiki"), 120):
                f.write(json.dumps({"text": text}) + "\n")
    data = root / "data"
    prepare([f"wiki=jsonl:{corpus}"], tokenizer, data)
    return {"tokenizer": tokenizer, "corpus": corpus, "data": data}


def write_recipe(path: Path, tokenizer: Path, data: Path) -> Path:
    """A tiny pair, two phases, about a dozen steps, a checkpoint every second step or so, keep the last 2."""
    import yaml

    recipe = {
        "name": "crash-trial",
        "model": {"size": "tiny", "max_position_embeddings": 64, "attention_dropout": 0.1},
        "tokenizer": str(tokenizer),
        "data_dir": str(data),
        "seed": 3,
        "precision": "fp32",
        "micro_batch_size": 2,
        "optimizer": {"lr": 3e-3, "weight_decay": 3e-4},
        "checkpoint": {"every_tokens": 256, "keep_last": 2},
        "phases": [
            {
                "name": "pretrain",
                "tokens": 1100,
                "seq_len": 32,
                "batch_size": 4,
                "batch_warmup_tokens": 128,
                "batch_warmup_min": 2,
                "lr": {"warmup_tokens": 256},
                "data": {"mixture": {"wiki": 1}},
            },
            {
                "name": "decay",
                "tokens": 400,
                "seq_len": 48,
                "batch_size": 3,
                "mask_rate": 0.15,
                "lr": {"schedule": "1-sqrt", "start": 1.0, "end": 0.02},
                "rope": {"global_theta": 160000, "local_theta": 160000},
                "data": {"mixture": {"wiki": 1}},
            },
        ],
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def train_args(recipe: Path, run: Path) -> list[str]:
    args = ["train", str(recipe), "--out", str(run), "--no-progress", "--device", "cpu"]
    return args + (["--resume"] if (run / "recipe.yaml").is_file() else [])


def prepare_args(assets: dict[str, Path], out: Path) -> list[str]:
    return [
        "data",
        "prepare",
        "--source",
        f"wiki=jsonl:{assets['corpus']}",
        "--tokenizer",
        str(assets["tokenizer"]),
        "--out",
        str(out),
        "--shard-tokens",
        "2000",
    ]


# --------------------------------------------------------------------------------------- checks


def scan_run(run: Path) -> list[str]:
    """Everything in the run folder that looks complete (the loader trusts it) must load."""
    import ettin
    from ettin.errors import EttinError
    from ettin.train import checkpoint as ck

    problems = []
    for arch in ("encoder", "decoder"):
        arch_dir = run / arch
        if not arch_dir.is_dir():
            continue
        for t in ck.list_tags(arch_dir):
            if t.full_state:
                try:
                    state = ck.load_checkpoint(arch_dir / ck.STATE_DIR / t.tag)
                    if not state.model:
                        problems.append(f"{arch}/{t.tag}: full state loads empty")
                except EttinError as exc:
                    problems.append(f"{arch}/{t.tag}: listed as a full state but does not load: {exc}")
            if t.hf:
                try:
                    ettin.load(arch_dir / ck.HF_DIR / t.tag)
                except EttinError as exc:
                    problems.append(f"{arch}/{t.tag}: listed as an export but does not load: {exc}")
        if (arch_dir / "data_order").is_dir():
            from ettin.data.order import read_order

            try:
                read_order(arch_dir / "data_order")
            except EttinError as exc:
                problems.append(f"{arch}: data order unreadable: {exc}")
    return problems


def scan_data(data: Path) -> list[str]:
    """A prepared source that exists (has its manifest) must verify, hashes included."""
    from ettin.data.shards import MANIFEST, PreparedSource
    from ettin.errors import EttinError

    problems = []
    for manifest in sorted(data.glob(f"*/{MANIFEST}")):
        try:
            PreparedSource.open(manifest.parent, verify=True)
        except EttinError as exc:
            problems.append(f"{manifest.parent.name}: has a manifest but does not verify: {exc}")
    return problems


def _same(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN == NaN for this purpose
    return a == b


def compare_runs(run: Path, reference: Path) -> list[str]:
    """Every difference between a run and the uninterrupted reference (empty: bitwise identical)."""
    from ettin.data.order import read_order
    from ettin.errors import EttinError
    from ettin.train import checkpoint as ck
    from ettin.train.metrics import read_metrics

    diffs = []
    for arch in ("encoder", "decoder"):
        a, b = run / arch, reference / arch
        tags_a = [(t.tag, t.full_state, t.hf) for t in ck.list_tags(a)]
        tags_b = [(t.tag, t.full_state, t.hf) for t in ck.list_tags(b)]
        if tags_a != tags_b:
            diffs.append(f"{arch}: tags {tags_a} != reference {tags_b}")
            continue
        for tag, full, hf in tags_a:
            if full:
                try:
                    sa = ck.load_checkpoint(a / ck.STATE_DIR / tag)
                except EttinError as exc:
                    diffs.append(f"{arch}/{tag}: does not load: {exc}")
                    continue
                sb = ck.load_checkpoint(b / ck.STATE_DIR / tag)
                for part in ("model", "optimizer"):
                    if not _same(getattr(sa, part), getattr(sb, part)):
                        diffs.append(f"{arch}/{tag}: {part} differs")
                # The torch RNG decides dropout and is compared. Python's and numpy's global RNGs decide
                # nothing in training and are seeded by the OS in each process, so two uninterrupted
                # runs already differ there: they are left out.
                rng_a, rng_b = sa.trainer.rng_tensors(), sb.trainer.rng_tensors()
                torch_rng = [k for k in rng_b if "torch" in k]
                if not _same({k: rng_a.get(k) for k in torch_rng}, {k: rng_b[k] for k in torch_rng}):
                    diffs.append(f"{arch}/{tag}: torch RNG state differs")
                ta = {k: v for k, v in sa.trainer.to_dict().items() if k not in ("time", "rng")}
                tb = {k: v for k, v in sb.trainer.to_dict().items() if k not in ("time", "rng")}
                if not _same(ta, tb):
                    diffs.append(
                        f"{arch}/{tag}: trainer state differs: "
                        + ", ".join(k for k in ta.keys() | tb.keys() if not _same(ta.get(k), tb.get(k)))
                    )
            if hf:
                fa = sorted(
                    str(p.relative_to(a / ck.HF_DIR / tag)) for p in (a / ck.HF_DIR / tag).rglob("*") if p.is_file()
                )
                fb = sorted(
                    str(p.relative_to(b / ck.HF_DIR / tag)) for p in (b / ck.HF_DIR / tag).rglob("*") if p.is_file()
                )
                if fa != fb:
                    diffs.append(f"{arch}/hf/{tag}: files {fa} != {fb}")
                    continue
                for name in fa:
                    if (a / ck.HF_DIR / tag / name).read_bytes() != (b / ck.HF_DIR / tag / name).read_bytes():
                        diffs.append(f"{arch}/hf/{tag}/{name}: bytes differ")
        if not read_order(a / "data_order").equals(read_order(b / "data_order")):
            diffs.append(f"{arch}: data order differs")
        keys = ("kind", "step", "phase", "tokens", "loss", "lr", "batch_size", "batch_tokens", "eval_loss")
        ma = [{k: r.get(k) for k in keys} for r in read_metrics(a)]
        mb = [{k: r.get(k) for k in keys} for r in read_metrics(b)]
        if ma != mb:
            diffs.append(f"{arch}: metrics (losses, lr, tokens per step) differ")
    return diffs


def compare_data(data: Path, reference: Path) -> list[str]:
    diffs = []
    names_a = sorted(p.name for p in data.iterdir())
    names_b = sorted(p.name for p in reference.iterdir())
    if names_a != names_b:
        return [f"entries {names_a} != reference {names_b}"]
    for src in names_a:
        fa = sorted(p.name for p in (data / src).iterdir())
        fb = sorted(p.name for p in (reference / src).iterdir())
        if fa != fb:
            diffs.append(f"{src}: files {fa} != reference {fb}")
            continue
        for name in fa:
            if (data / src / name).read_bytes() != (reference / src / name).read_bytes():
                diffs.append(f"{src}/{name}: bytes differ")
    return diffs


def leftovers(root: Path) -> list[str]:
    """Hidden temporary entries (a write that a kill interrupted): harmless, but they show where kills landed."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if ".tmp" in p.name or ".partial" in p.name)


# --------------------------------------------------------------------------------------- trials


@dataclass
class Trial:
    kind: str  # "train" or "prepare"
    faults: list[str]
    slow: float = 0.0
    launches: int = 0
    kills: int = 0
    landed_in_write: int = 0  # kills after which a temporary write was found
    problems: list[str] = field(default_factory=list)  # after a kill: something looks complete and is not
    diffs: list[str] = field(default_factory=list)  # at the end: differences from the reference
    errors: list[str] = field(default_factory=list)  # a launch that failed other than by the kill
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.problems or self.diffs or self.errors)


def _tail(text: str, n: int = 1500) -> str:
    return text[-n:].strip()


def _run_trial(trial: Trial, target: Path, args, scan, compare, *, slow: float, max_launches: int) -> Trial:
    """Kill at each of the trial's faults in turn, then finish and compare. `args()` is the command of the
    next launch, asked each time (a training run that exists is resumed)."""
    t0 = time.perf_counter()
    for fault in [*trial.faults, None][:max_launches]:
        proc = run_child(args(), fault=fault, slow=slow if fault else 0.0)
        trial.launches += 1
        if proc.returncode == KILLED and fault:
            trial.kills += 1
            if target.exists() and leftovers(target):
                trial.landed_in_write += 1
            trial.problems += [f"after kill at {fault}: {p}" for p in scan()]
        elif proc.returncode != 0:
            trial.errors.append(
                f"launch {trial.launches} ({fault or 'no fault'}) exit {proc.returncode}: {_tail(proc.stderr)}"
            )
            break
    if not trial.errors:
        trial.diffs = compare()
    trial.seconds = time.perf_counter() - t0
    return trial


def run_train_trial(
    workdir: Path, recipe: Path, reference: Path, faults: list[str], *, slow: float = 0.0, max_launches: int = 12
) -> Trial:
    """Kill at each fault in turn (resuming in between), then finish and compare with the reference."""
    run = workdir / "run"
    return _run_trial(
        Trial("train", list(faults), slow),
        run,
        lambda: train_args(recipe, run),
        lambda: scan_run(run),
        lambda: compare_runs(run, reference),
        slow=slow,
        max_launches=max_launches,
    )


def run_prepare_trial(workdir: Path, assets: dict[str, Path], reference: Path, faults: list[str]) -> Trial:
    out = workdir / "data"
    return _run_trial(
        Trial("prepare", list(faults)),
        out,
        lambda: prepare_args(assets, out),
        lambda: scan_data(out) if out.exists() else [],
        lambda: compare_data(out, reference),
        slow=0.0,
        max_launches=len(faults) + 1,
    )


def random_train_faults(rng: random.Random, duration: float) -> tuple[list[str], float]:
    """One to three kills: mostly at a random time, sometimes at a random named point."""
    faults = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.6:
            faults.append(f"time:{rng.uniform(0.0, duration):.2f}")
        else:
            point = rng.choice(TRAIN_POINTS)
            faults.append(f"{point}:{rng.randint(1, 8 if point != 'train.step' else 14)}")
    return faults, rng.choice([0.0, 0.0, 0.3])


def random_prepare_faults(rng: random.Random, duration: float) -> list[str]:
    faults = []
    for _ in range(rng.randint(1, 2)):
        if rng.random() < 0.5:
            faults.append(f"time:{rng.uniform(0.0, duration):.2f}")
        else:
            point = rng.choice(PREPARE_POINTS)
            faults.append(f"{point}:{rng.randint(1, 6) if point == 'prepare.write_shard' else 1}")
    return faults


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        child_main(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20, help="random training trials")
    p.add_argument("--prepare-trials", type=int, default=None, help="random data-preparation trials (default trials/4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="where to work (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    ns = p.parse_args(argv)
    work = ns.workdir or Path(tempfile.mkdtemp(prefix="ettin-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(ns.seed)
    print(f"work folder: {work}")
    assets = make_assets(work / "assets")
    recipe = write_recipe(work / "recipe.yaml", assets["tokenizer"], assets["data"])

    reference = work / "reference"
    shutil.rmtree(reference, ignore_errors=True)  # always from the code as it is now
    seconds = {}
    for kind, args in (
        ("training", train_args(recipe, reference / "run")),
        ("prepare", prepare_args(assets, reference / "data")),
    ):
        proc = run_child(args, timing=work / f"{kind}.seconds")
        if proc.returncode != 0:
            print(f"the uninterrupted {kind} failed:\n{proc.stderr}")
            return 1
        seconds[kind] = float((work / f"{kind}.seconds").read_text())
    train_s, prep_s = seconds["training"], seconds["prepare"]
    print(f"reference: training {train_s:.1f}s, prepare {prep_s:.1f}s (after start-up; random kills fall in this span)")

    trials: list[Trial] = []
    n_prep = ns.prepare_trials if ns.prepare_trials is not None else max(1, ns.trials // 4)
    plan = [("train", i) for i in range(ns.trials)] + [("prepare", i) for i in range(n_prep)]
    for kind, i in plan:
        tdir = work / f"{kind}-{i:03d}"
        shutil.rmtree(tdir, ignore_errors=True)
        tdir.mkdir()
        if kind == "train":
            faults, slow = random_train_faults(rng, train_s)
            trial = run_train_trial(tdir, recipe, reference / "run", faults, slow=slow)
        else:
            trial = run_prepare_trial(tdir, assets, reference / "data", random_prepare_faults(rng, prep_s))
        trials.append(trial)
        status = "ok" if trial.ok else "FAIL"
        print(
            f"{kind} {i:3d}: {status}  faults {', '.join(trial.faults)}{' slow' if trial.slow else ''}; "
            f"{trial.kills} kill(s), {trial.landed_in_write} inside a write, {trial.launches} launches, {trial.seconds:.0f}s"
        )
        for line in trial.problems + trial.diffs + trial.errors:
            print(f"    {line}")
        if trial.ok and not ns.keep:
            shutil.rmtree(tdir, ignore_errors=True)

    for kind in ("train", "prepare"):
        ts = [t for t in trials if t.kind == kind]
        if not ts:
            continue
        print(
            f"{kind}: {sum(t.ok for t in ts)}/{len(ts)} trials ok; {sum(t.kills for t in ts)} kills "
            f"({sum(t.landed_in_write for t in ts)} found a write in progress), {sum(t.launches for t in ts)} launches; "
            f"{sum(len(t.problems) for t in ts)} false-complete finds, {sum(bool(t.diffs) for t in ts)} runs not identical, "
            f"{sum(bool(t.errors) for t in ts)} failed launches"
        )
    if not ns.keep and all(t.ok for t in trials):
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(t.ok for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
