"""The Ray engine of `ettin data prepare` (`--engine ray`): the same shards as the local engine, on a cluster.

The bytes are equal by construction, because both engines run the same pure steps: the same file
reader (`file_documents`, or `iter_documents` for a source read as a whole), the same encoder
(`_encode`), the same shard cuts (`ShardCutter`), the same shard writer (`_write_shard`) and the same
manifest (`_finish`). Only the order of work differs:

1. read + tokenize, a Ray Data pipeline (`read_dataset`): the files of a text/JSONL/Parquet source
   (a folder, a single file, or object-store URLs) are read by `ray.data.read_binary_files` (pyarrow
   file systems: local paths, s3://, gs://), one row and one read task per file; any other source kind
   (an HF dataset saved to disk, a built-in corpus, MDS text) is one row of `ray.data.from_items`, read
   by its ettin reader inside the task. The pipeline's map parses each file's bytes with ettin's reader,
   tokenizes them and writes the tokens, lengths, byte counts and origins to `.<name>.partial/blocks/`
   and then a small marker; its output is one small row per read unit (the marker, or a user error);
2. plan, on the driver: the shard cuts from the units' lengths in source order (cheap: 8 bytes a document);
3. write, one Ray task per shard: the shard's documents are sliced out of the (memory-mapped) blocks and
   written by `_write_shard`, which marks a finished shard with its own JSON after its files.

Resumable: a rerun with the same key keeps every unit and shard whose marker and files are intact (the
finished units are left out of the dataset before it is built) and does only the rest. Fault tolerant:
Ray Data's tasks and the shard tasks run with `max_retries`, so a worker or node that dies is retried by
Ray; every file is written to a temporary name and renamed, so a failed task never leaves a half-written
file under a finished name. The output folder must be one path that the driver and every node can write
(a shared file system); this is checked on every node before work starts.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ettin.data.shard_writer import (
    DEFAULT_BATCH_CHARS,
    PrepareResult,
    Progress,
    ShardCutter,
    _encode,
    _finish,
    _open_staging,
    _prepare_key,
    _Tokenizer,
    _up_to_date,
    _write_shard,
    is_url,
)
from ettin.data.shards import token_dtype, verify_files
from ettin.data.sources import (
    TEXT_SUFFIXES,
    SourceReport,
    SourceSpec,
    file_documents,
    gunzip,
    iter_documents,
    source_files,
    source_fingerprint,
)
from ettin.errors import EttinError
from ettin.io import atomic_write_json

MAX_RETRIES = 3
_LISTED = 5  # as many bad files / lines as a source report lists (sources._MAX_LISTED)
# tests: "shard=N:exit" / "unit=N:exit" kill the worker writing shard N / reading unit N once (Ray retries
# it), "shard=N:raise" fails the task; several faults are separated by commas
FAULT_ENV = "ETTIN_RAY_FAULT"


def import_ray():
    """Ray, or one clear line saying how to get it."""
    try:
        import ray
    except ImportError:
        raise EttinError(
            "the Ray engine needs Ray, which is not installed",
            field="--engine",
            fix="pip install 'ettin[ray]' (make setup installs it), or use --engine local",
        ) from None
    return ray


def _check_address(address: str) -> None:
    """Fail fast, in one line, when nothing listens at a HOST:PORT address (ray.init would wait long)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EttinError(
            f"cannot read Ray address '{address}'", field="--ray-address", fix="write HOST:PORT, e.g. 10.0.0.1:6379"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise EttinError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc})",
            field="--ray-address",
            fix="start one with `ray start --head` and pass the address it prints, or leave --ray-address out "
            "to run Ray on this machine",
        ) from None


@contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None) -> Iterator:
    """Connected Ray: the running session if there is one, else `address`, else a Ray started here."""
    ray = import_ray()
    if address:
        _check_address(address)
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_address(address)
    try:
        ray.init(
            address=address or None,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EttinError(
            f"cannot connect to Ray at {address or 'this machine'} ({str(exc).splitlines()[0]})",
            field="--ray-address",
            fix="check the address printed by `ray start --head`",
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------
# Read units: what one task reads


@dataclass(frozen=True)
class Unit:
    """What one read task reads: one file of a text/JSONL/Parquet source (`rel` set), else the whole source."""

    index: int
    spec: SourceSpec
    nbytes: int
    rel: str | None = None  # the file's name in origins (relative to the source folder)
    where: str = ""  # the file as errors and the report name it: its path as the local engine names it, or URL
    read_path: str = ""  # the path Ray Data reads: absolute local path, or the path in the object store


_URL_KINDS = {"text": TEXT_SUFFIXES, "jsonl": (".jsonl", ".jsonl.gz", ".json"), "parquet": (".parquet",)}


def _url_fs(url: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(url)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for unknown schemes and bad buckets
        raise EttinError(
            f"cannot open the URL ({str(exc).splitlines()[0]})",
            path=url,
            field="source",
            fix="check the URL and the credentials of the store (the usual AWS_* / GOOGLE_* settings)",
        ) from None


URL_TIMEOUT_S = 30.0


def url_files(spec: SourceSpec, timeout: float = URL_TIMEOUT_S) -> list[tuple[str, str, int]]:
    """(URL, path relative to the source, size) of each file an object-store source reads, sorted.

    Listing runs in a daemon thread with a time limit: a store that cannot be reached (no network, a
    wrong endpoint) gives one line instead of pyarrow's long retries."""
    import threading

    box: dict = {}

    def run() -> None:
        try:
            box["files"] = _list_url(spec)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise EttinError(
            f"no answer from the store within {timeout:.0f} s",
            path=spec.path,
            field="source",
            fix="check the URL, the network and the store's credentials on this machine",
        )
    if "error" in box:
        raise box["error"]
    return box["files"]


def _list_url(spec: SourceSpec) -> list[tuple[str, str, int]]:
    import pyarrow.fs as pafs

    if spec.kind not in _URL_KINDS:
        raise EttinError(
            f"a '{spec.kind}' source cannot be read from a URL",
            path=spec.path,
            field="source",
            fix=f"use kind {', '.join(_URL_KINDS)}, or copy the files to a shared folder",
        )
    fs, root = _url_fs(spec.path)
    scheme = spec.path.split("://", 1)[0]
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            return [(spec.path, info.base_name, info.size)]
        if info.type != pafs.FileType.Directory:
            raise EttinError("no such file or folder", path=spec.path, field="source", fix="check the URL")
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as exc:
        raise EttinError(
            f"cannot list the URL ({str(exc).splitlines()[0]})", path=spec.path, field="source", fix="check the URL"
        ) from None
    files = []
    for f in found:
        rel = f.path[len(root.rstrip("/")) + 1 :]
        if f.type == pafs.FileType.File and not any(part.startswith(".") for part in rel.split("/")):
            if f.base_name.endswith(_URL_KINDS[spec.kind]):
                files.append((f"{scheme}://{f.path}" if scheme != "file" else f"file://{f.path}", rel, f.size))
    if not files:
        raise EttinError(
            f"folder has no {' / '.join(_URL_KINDS[spec.kind])} files",
            path=spec.path,
            field="source",
            fix="point at a folder with text to read",
        )
    return sorted(files, key=lambda x: x[1])


def url_fingerprint(spec: SourceSpec, files: list[tuple[str, str, int]]) -> str:
    """As `source_fingerprint` for a local folder: sha256 over the spec and each file's name, size and content."""
    h = hashlib.sha256(json.dumps({k: v for k, v in spec.to_dict().items() if k != "name"}, sort_keys=True).encode())
    for url, rel, size in files:
        h.update(rel.encode() + b"\0" + str(size).encode() + b"\0")
        fs, path = _url_fs(url)
        with fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def read_units(spec: SourceSpec) -> list[Unit]:
    """One unit per file of a text/JSONL/Parquet source (read in parallel by Ray Data), else the whole source."""
    if is_url(spec.path):
        return [
            Unit(i, spec, size, rel, url, url.split("://", 1)[1]) for i, (url, rel, size) in enumerate(url_files(spec))
        ]
    files = source_files(spec)
    base = Path(spec.path)
    if spec.kind in ("text", "jsonl", "parquet"):
        return [
            Unit(
                i,
                spec,
                f.stat().st_size,
                f.name if base.is_file() else str(f.relative_to(base)),
                str(f),
                str(f.absolute()),
            )
            for i, f in enumerate(files)
        ]
    return [Unit(0, spec, sum(f.stat().st_size for f in files))]


def merge_reports(reports: list[dict]) -> dict:
    """The report of a whole source from its units' reports, in source order (lists capped as one reader would)."""
    total = SourceReport().to_dict()
    for r in reports:
        for k, v in r.items():
            total[k] = total[k] + v if isinstance(v, int) else (total[k] + v)[:_LISTED]
    return total


def _block_names(index: int) -> dict[str, str]:
    stem = f"unit-{index:05d}"
    return {
        "tokens": f"{stem}.tokens.npy",
        "lengths": f"{stem}.lengths.npy",
        "bytes": f"{stem}.bytes.npy",
        "origins": f"{stem}.origins.parquet",
    }


def _unit_done(blocks: Path, index: int) -> dict | None:
    marker = blocks / f"unit-{index:05d}.json"
    try:
        entry = json.loads(marker.read_text())
        for name, size in entry["files"].items():
            if (blocks / name).stat().st_size != size:
                return None
        return entry
    except (OSError, json.JSONDecodeError, KeyError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# Task bodies (run in Ray workers; plain functions so they can be tested without Ray)

_BACKENDS: dict[str, object] = {}


@contextmanager
def _atomic_in(path: Path) -> Iterator[Path]:
    """As ettin.io.atomic_path, but never creating the folder: a task still running after its run was
    discarded (the staging removed) fails instead of bringing the folder back."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json_in(path: Path, obj) -> None:
    with _atomic_in(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def _backend(fingerprint: str, tokenizer_json):
    """The tokenizer of this worker process, built once from its JSON (a string, or a Ray object holding it)."""
    if fingerprint not in _BACKENDS:
        from tokenizers import Tokenizer

        if not isinstance(tokenizer_json, str):
            import ray

            tokenizer_json = ray.get(tokenizer_json)
        _BACKENDS[fingerprint] = Tokenizer.from_str(tokenizer_json)
    return _BACKENDS[fingerprint]


def tokenize_row(
    row: dict,
    *,
    units: dict,
    blocks: str,
    fingerprint: str,
    tokenizer_json,
    dtype: str,
    batch_chars: int,
    fault: str,
) -> dict:
    """The map of the read pipeline: one row of Ray Data (a file's path and bytes, or a unit's index)
    parsed by ettin's reader and tokenized into block files plus a marker. Returns the marker as JSON, or
    the user error (an EttinError: bad bytes, malformed lines) as one line for the driver to raise."""
    unit = units[row["path"]] if "path" in row else units[int(row["unit"])]
    _fault(Path(blocks).parent, f"unit={unit.index}", fault)
    report = SourceReport()
    try:
        if unit.rel is None:
            docs = iter_documents(unit.spec, report)
        else:
            docs = file_documents(unit.spec, bytes(row["bytes"]), unit.where, unit.rel, report)
        entry = tokenize_unit(unit, docs, report, blocks, fingerprint, tokenizer_json, dtype, batch_chars)
    except EttinError as exc:
        return {"unit": unit.index, "entry": "", "error": str(exc)}
    return {"unit": unit.index, "entry": json.dumps(entry), "error": ""}


def tokenize_unit(
    unit: Unit,
    docs: Iterator,
    report: SourceReport,
    blocks: str,
    fingerprint: str,
    tokenizer_json,
    dtype: str,
    batch_chars: int,
) -> dict:
    """Tokenize one unit's documents into block files plus a marker; returns the marker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blocks_dir = Path(blocks)
    backend = _backend(fingerprint, tokenizer_json)
    tokens: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    origins: list[str] = []
    text_bytes: list[int] = []
    texts: list[str] = []
    chars = 0

    def encode() -> None:
        text_bytes.extend(len(t.encode("utf-8")) for t in texts)
        flat, lens = _encode(backend, texts, np.dtype(dtype))
        tokens.append(flat)
        lengths.append(lens)
        texts.clear()

    for doc in docs:
        origins.append(doc.origin)
        texts.append(doc.text)
        chars += len(doc.text)
        if chars >= batch_chars:
            encode()
            chars = 0
    if texts:
        encode()
    arrays = {
        "tokens": np.concatenate(tokens) if tokens else np.zeros(0, np.dtype(dtype)),
        "lengths": np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
        "bytes": np.asarray(text_bytes, np.int64),
    }
    names = _block_names(unit.index)
    files = {}
    for kind, arr in arrays.items():
        with _atomic_in(blocks_dir / names[kind]) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            files[names[kind]] = tmp.stat().st_size
    with _atomic_in(blocks_dir / names["origins"]) as tmp:
        pq.write_table(pa.table({"origin": pa.array(origins, pa.string())}), tmp)
        files[names["origins"]] = tmp.stat().st_size
    entry = {
        "unit": unit.index,
        "documents": len(origins),
        "tokens": int(len(arrays["tokens"])),
        "report": report.to_dict(),
        "files": files,
    }
    _write_json_in(blocks_dir / f"unit-{unit.index:05d}.json", entry)
    return entry


def _fault(staging: Path, where: str, fault: str) -> None:
    """The test hook of FAULT_ENV: a worker that dies once (Ray retries it) or a task that fails."""
    for one in filter(None, fault.split(",")):
        at, _, mode = one.partition(":")
        if at != where:
            continue
        if mode == "exit":
            flag = staging / f".fault-{where.replace('=', '-')}"
            if not flag.exists():
                flag.touch()
                os._exit(1)
        elif mode == "raise":
            raise RuntimeError(f"injected fault in {where} ({FAULT_ENV})")


def write_shard_task(staging: str, index: int, first_doc: int, pieces: list[tuple[int, int, int]], fault: str) -> dict:
    """Slice a shard's documents out of the blocks (unit, first, end) and write it with `_write_shard`."""
    import pyarrow.parquet as pq

    staging_dir = Path(staging)
    blocks = staging_dir / "blocks"
    _fault(staging_dir, f"shard={index}", fault)
    tokens, lengths, origins = [], [], []
    text_bytes = 0
    for unit, a, z in pieces:
        names = _block_names(unit)
        lens = np.load(blocks / names["lengths"])
        cum = np.concatenate([[0], np.cumsum(lens)])
        toks = np.load(blocks / names["tokens"], mmap_mode="r")
        tokens.append(np.asarray(toks[cum[a] : cum[z]]))
        lengths.append(lens[a:z])
        text_bytes += int(np.load(blocks / names["bytes"])[a:z].sum())
        origins.extend(pq.read_table(blocks / names["origins"]).column("origin").to_pylist()[a:z])
    lens = np.concatenate(lengths)
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    return _write_shard(staging_dir, index, np.concatenate(tokens), offsets, origins, first_doc, text_bytes)


def probe_task(out_dir: str, name: str) -> str:
    """Write a probe file where the driver will look for it; returns this node's address."""
    import ray

    try:
        atomic_write_json(Path(out_dir) / name, {"node": ray.util.get_node_ip_address()})
    except OSError as exc:
        return f"error: {exc.strerror or exc}"
    return ray.util.get_node_ip_address()


# ---------------------------------------------------------------------------------------------
# The driver


def read_dataset(units: list[Unit], args: dict, max_retries: int = MAX_RETRIES):
    """The read step as a Ray Data pipeline: a `ray.data.Dataset` of one small row per unit in `units`.

    The files of a text/JSONL/Parquet source are read by `ray.data.read_binary_files` (one read task per
    file; .gz is decompressed by pyarrow, as the local engine's gzip does), and the fused map
    `tokenize_row` parses their bytes with ettin's reader and tokenizes them; a unit read as a whole
    (another source kind) is one row of `ray.data.from_items`. `args`: the rest of `tokenize_row`'s
    keywords. Nothing runs until the dataset is iterated."""
    import warnings

    import ray.data

    by_key = {u.read_path: u for u in units} if units[0].rel is not None else {u.index: u for u in units}
    if units[0].rel is not None:
        if is_url(units[0].spec.path):
            fs, _ = _url_fs(units[0].spec.path)
        else:
            import pyarrow.fs as pafs

            fs = pafs.LocalFileSystem()
        ds = ray.data.read_binary_files(
            [u.read_path for u in units], include_paths=True, filesystem=fs, override_num_blocks=len(units)
        )
    else:
        ds = ray.data.from_items([{"unit": u.index} for u in units])
    with warnings.catch_warnings():
        # Ray Data takes Ray's task options (max_retries) as **ray_remote_args, which it marks deprecated
        # in favour of named parameters that do not include max_retries yet; the warning would print.
        warnings.simplefilter("ignore")
        return ds.map(tokenize_row, fn_kwargs={"units": by_key, **args}, max_retries=max_retries)


def _rows(ds) -> Iterator[dict]:
    """The rows of a dataset as they finish; anything but a user error is a task failure (_InfraError).
    Leaving early (a user error) stops the pipeline: the generator's close shuts Ray Data's executor down."""
    rows = iter(ds.iter_rows())
    try:
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except EttinError:
                raise
            except Exception as exc:  # a task that failed after its retries, a file gone since the listing
                text = str(exc).strip()
                raise _InfraError(text.splitlines()[-1] if text else type(exc).__name__) from None
            yield row
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


@contextmanager
def quiet_ray_data() -> Iterator[None]:
    """Ray Data without progress bars and with its log on file only (the session's logs/ray-data/), so
    that the terminal shows ettin's one-line errors and progress; the settings are restored after."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = {
        k: getattr(ctx, k) for k in ("enable_progress_bars", "enable_operator_progress_bars", "verbose_stats_logs")
    }
    for k in saved:
        setattr(ctx, k, False)
    consoles = [h for h in logging.getLogger("ray.data").handlers if "File" not in type(h).__name__]
    levels = [h.level for h in consoles]
    for h in consoles:
        h.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        for h, level in zip(consoles, levels):
            h.setLevel(level)


def _get(ray, refs: list) -> list:
    """Results in order; the first user error (EttinError) is raised as itself, after the rest is cancelled."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None)
        # A user error discards the run: stop every task. Otherwise the other tasks finish (their work is
        # kept for the rerun; cancelling a running task would interrupt it mid-write).
        if isinstance(cause, EttinError):
            for ref in refs:
                ray.cancel(ref)  # a running task gets KeyboardInterrupt: its temporary files are removed
        for ref in refs:  # every task over (and its error retrieved, so Ray does not log it later)
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                pass
        if isinstance(cause, EttinError):
            raise EttinError(str(cause)) from None
        raise _InfraError(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__) from None


def check_gzip_units(units: list[Unit]) -> None:
    """After a failed read: the first damaged .gz input among `units`, as the local engine reports it.

    Ray Data decompresses .gz files inside its read task (pyarrow), and a damaged one fails that task with
    pyarrow's message and no file name; only on failure, each unfinished .gz unit is read again here."""
    for u in units:
        if u.rel is None or not u.read_path.endswith(".gz"):
            continue
        if is_url(u.spec.path):
            fs, _ = _url_fs(u.spec.path)
            with fs.open_input_stream(u.read_path, compression=None) as f:
                raw = f.read()
        else:
            raw = Path(u.read_path).read_bytes()
        gunzip(raw, u.where)


class _InfraError(Exception):
    """A task that failed for a reason other than the input (after Ray's retries): the staging is kept."""


def check_workers_can_write(ray, out_dir: Path) -> None:
    """Every alive node writes a probe into `out_dir` and the driver must see each one: a shared, writable path."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=MAX_RETRIES)(probe_task)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    names = [f".ettin-probe-{uuid.uuid4().hex}.json" for _ in nodes]
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            str(out_dir), name
        )
        for n, name in zip(nodes, names)
    ]
    answers = ray.get(refs)
    try:
        for node, answer, name in zip(nodes, answers, names):
            where = node.get("NodeManagerAddress", "?")
            if answer.startswith("error:"):
                raise EttinError(
                    f"Ray workers on {where} cannot write the output folder ({answer[7:]})",
                    path=out_dir,
                    field="--out",
                    fix="use a folder every node can write (a shared file system mounted at the same path)",
                )
            if not (out_dir / name).is_file():
                raise EttinError(
                    f"what Ray workers on {where} write there does not reach this machine (not a shared folder)",
                    path=out_dir,
                    field="--out",
                    fix="use a shared file system mounted at the same path on every node",
                )
    finally:
        for name in names:
            (out_dir / name).unlink(missing_ok=True)


def _kept_shards(staging: Path, plan: list[dict]) -> dict[int, dict]:
    """Shards of an interrupted run (either engine) whose marker, files and place in the plan are intact."""
    kept = {}
    for want in plan:
        marker = staging / f"shard-{want['index']:05d}.json"
        try:
            entry = json.loads(marker.read_text())
            verify_files(staging, {"shards": [entry]})
        except (OSError, json.JSONDecodeError, EttinError, KeyError, TypeError):
            continue
        if all(entry.get(k) == v for k, v in want.items() if k != "pieces"):
            kept[want["index"]] = entry
    return kept


def _remove_tree(path: Path) -> None:
    """rmtree that also wins against a last write of a task that is still winding down."""
    for _ in range(10):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.2)


def _remove_temporaries(folder: Path) -> None:
    for p in folder.glob(".*.tmp"):
        p.unlink(missing_ok=True)


def prepare_source_ray(
    ray,
    spec: SourceSpec,
    tok: _Tokenizer,
    out_dir: Path,
    *,
    shard_tokens: int,
    batch_chars: int = DEFAULT_BATCH_CHARS,
    verify: bool = False,
    progress: Progress | None = None,
    max_retries: int = MAX_RETRIES,
) -> PrepareResult:
    """One source with Ray: read and tokenize units with Ray Data, cut shards on the driver, write shards in tasks."""
    t0 = time.perf_counter()
    units = read_units(spec)
    total_bytes = sum(u.nbytes for u in units)
    if is_url(spec.path):
        fingerprint = url_fingerprint(spec, [(u.where, u.rel, u.nbytes) for u in units])
    else:
        fingerprint = source_fingerprint(spec)
    key = _prepare_key(fingerprint, tok, shard_tokens)
    final = out_dir / spec.name
    if (result := _up_to_date(spec, final, key, verify, t0)) is not None:
        if progress:
            progress(spec.name, total_bytes, total_bytes)
        return result
    staging, created = _open_staging(spec, out_dir, key)
    blocks = staging / "blocks"
    blocks.mkdir(exist_ok=True)
    _remove_temporaries(staging)
    _remove_temporaries(blocks)
    dtype = token_dtype(tok.vocab_size)
    resumed = False
    try:
        # 1. read and tokenize: a Ray Data pipeline over the units not finished before (read_dataset)
        entries: dict[int, dict] = {}
        for u in units:
            if (e := _unit_done(blocks, u.index)) is not None:
                entries[u.index] = e
        resumed = bool(entries)
        todo = [u for u in units if u.index not in entries]
        if todo:
            args = {
                "blocks": str(blocks),
                "fingerprint": tok.fingerprint,
                "tokenizer_json": ray.put(tok.backend.to_str()),
                "dtype": dtype.str,
                "batch_chars": batch_chars,
                "fault": os.environ.get(FAULT_ENV, ""),
            }
            done_bytes = sum(u.nbytes for u in units if u.index in entries)
            with quiet_ray_data(), closing(_rows(read_dataset(todo, args, max_retries))) as rows:
                try:
                    for row in rows:
                        if row["error"]:
                            raise EttinError(row["error"])
                        entry = json.loads(row["entry"])
                        entries[entry["unit"]] = entry
                        done_bytes += units[entry["unit"]].nbytes
                        if progress:
                            progress(spec.name, min(done_bytes, total_bytes) // 2, total_bytes)
                except _InfraError:
                    check_gzip_units([u for u in todo if u.index not in entries])
                    raise
            if missing := [u.index for u in todo if u.index not in entries]:  # never expected: a lost row
                raise _InfraError(f"Ray Data returned no result for read unit(s) {missing[:5]}")
        # 2. plan: the same cuts as the local engine, from the lengths in source order
        cutter = ShardCutter(shard_tokens)
        unit_first = []
        cuts: list[int] = []
        for u in units:
            unit_first.append(cutter.next_doc)
            cuts += cutter.feed(np.load(blocks / _block_names(u.index)["lengths"]))
        cuts += cutter.close()
        unit_first.append(cutter.next_doc)
        plan = []
        start = 0
        for index, end in enumerate(cuts):
            pieces = []
            u = bisect.bisect_right(unit_first, start) - 1
            while u < len(units) and unit_first[u] < end:
                a, z = max(start, unit_first[u]), min(end, unit_first[u + 1])
                if a < z:
                    pieces.append((u, a - unit_first[u], z - unit_first[u]))
                u += 1
            plan.append({"index": index, "first_doc": start, "documents": end - start, "pieces": pieces})
            start = end
        # 3. write the shards not finished before
        kept = _kept_shards(staging, plan)
        resumed = resumed or bool(kept)
        todo_shards = [p for p in plan if p["index"] not in kept]
        fault = os.environ.get(FAULT_ENV, "")
        if todo_shards:
            task = ray.remote(max_retries=max_retries)(write_shard_task)
            refs = [task.remote(str(staging), p["index"], p["first_doc"], p["pieces"], fault) for p in todo_shards]
            for p, entry in zip(todo_shards, _get(ray, refs)):
                kept[p["index"]] = entry
        shards = [kept[p["index"]] for p in plan]
        report = merge_reports([entries[u.index]["report"] for u in units])
        for p in blocks.iterdir():
            p.unlink()
        blocks.rmdir()
        for p in staging.glob(".fault-*"):
            p.unlink()
        n_files = len(units) if is_url(spec.path) else len(source_files(spec))
        manifest = _finish(spec, tok, key, shard_tokens, staging, final, shards, report, n_files, fingerprint)
    except EttinError:
        if created or resumed:
            _remove_tree(staging)
        raise
    except _InfraError as exc:
        raise EttinError(
            f"a Ray task failed after {max_retries} retries ({exc}); finished work is kept in {staging}",
            path=spec.path or spec.name,
            fix="rerun the same command to continue where it stopped",
        ) from None
    if progress:
        progress(spec.name, total_bytes, total_bytes)
    return PrepareResult(
        spec.name,
        final,
        "resumed" if resumed else "prepared",
        manifest["documents"],
        manifest["tokens"],
        manifest["text_bytes"],
        len(shards),
        time.perf_counter() - t0,
        manifest["report"],
    )


__all__ = [
    "FAULT_ENV",
    "MAX_RETRIES",
    "Unit",
    "check_workers_can_write",
    "import_ray",
    "merge_reports",
    "prepare_source_ray",
    "quiet_ray_data",
    "ray_cluster",
    "read_dataset",
    "read_units",
]
