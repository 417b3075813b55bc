"""`ettin data prepare`: tokenize sources into memory-mapped shards plus a manifest.

Idempotent: the manifest records a key (source content hash, tokenizer fingerprint, options), and a
second run with the same key only checks the files. Safe to interrupt: work happens in a hidden
`.<name>.partial/` folder where each finished shard is marked by a small JSON written after its files;
a rerun with the same key keeps the finished shards and continues after them; the folder becomes
`<name>/` by a rename after the manifest is written. A user error (bad bytes, bad JSON lines, empty
corpus, tokenizer clash) removes what this run started, so nothing half-written is left behind.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ettin.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    read_manifest,
    sha256_file,
    shard_file_names,
    token_dtype,
    verify_files,
)
from ettin.data.sources import SourceReport, SourceSpec, as_spec, iter_documents, source_files, source_fingerprint
from ettin.errors import EttinError
from ettin.io import atomic_path, atomic_write_json, replace_dir
from ettin.lock import LOCK_FILE, FolderLock

DEFAULT_SHARD_TOKENS = 1 << 25
DEFAULT_BATCH_CHARS = 1 << 20
Progress = Callable[[str, int, int], None]  # (source name, bytes done, bytes total)


@dataclass
class PrepareResult:
    name: str
    folder: Path
    status: str  # "prepared", "resumed" or "up to date"
    documents: int
    tokens: int
    text_bytes: int
    shards: int
    seconds: float
    report: dict = field(default_factory=dict)


@dataclass
class _Tokenizer:
    """What prepare needs from a tokenizer, in a form worker processes can rebuild."""

    backend: object  # tokenizers.Tokenizer
    fingerprint: str
    vocab_size: int
    special_ids: dict
    path: str

    @classmethod
    def load(cls, tokenizer) -> "_Tokenizer":
        from ettin.tokenizer import load_tokenizer, special_token_ids, tokenizer_fingerprint

        path = ""
        if isinstance(tokenizer, (str, os.PathLike)):
            path = str(tokenizer)
            tokenizer = load_tokenizer(tokenizer)
        return cls(
            backend=tokenizer.backend_tokenizer,
            fingerprint=tokenizer_fingerprint(tokenizer),
            vocab_size=len(tokenizer),
            special_ids=special_token_ids(tokenizer),
            path=path,
        )


def _encode(backend, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, count=len(encodings))
    flat = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype, count=int(lengths.sum()))
    return flat, lengths


_WORKER_BACKEND = None


def _worker_init(tokenizer_json: str) -> None:
    global _WORKER_BACKEND
    from tokenizers import Tokenizer

    _WORKER_BACKEND = Tokenizer.from_str(tokenizer_json)


def _worker_encode(texts: list[str], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    return _encode(_WORKER_BACKEND, texts, np.dtype(dtype))


def _encoded_batches(batches: Iterable[list[str]], tok: _Tokenizer, dtype: np.dtype, workers: int) -> Iterator:
    """(texts, tokens, lengths) per batch, in order; with workers > 1, batches are encoded ahead in processes."""
    if workers <= 1:
        for texts in batches:
            yield texts, *_encode(tok.backend, texts, dtype)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_worker_init, initargs=(tok.backend.to_str(),)
    ) as pool:
        pending: deque = deque()
        for texts in batches:
            pending.append((texts, pool.submit(_worker_encode, texts, dtype.str)))
            if len(pending) >= 2 * workers:
                texts0, fut = pending.popleft()
                yield texts0, *fut.result()
        while pending:
            texts0, fut = pending.popleft()
            yield texts0, *fut.result()


def _prepare_key(source_fp: str, tok: _Tokenizer, shard_tokens: int) -> str:
    blob = json.dumps(
        {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "source": source_fp,
            "tokenizer": tok.fingerprint,
            "shard_tokens": shard_tokens,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _write_shard(
    staging: Path,
    index: int,
    tokens: np.ndarray,
    offsets: np.ndarray,
    origins: list[str],
    first_doc: int,
    text_bytes: int,
) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = shard_file_names(index)
    entry: dict = {
        "index": index,
        "first_doc": first_doc,
        "documents": len(origins),
        "num_tokens": int(len(tokens)),
        "text_bytes": text_bytes,
    }
    writers = {
        "tokens": lambda p: np.save(p, tokens, allow_pickle=False),
        "docs": lambda p: np.save(p, offsets, allow_pickle=False),
        "origins": lambda p: pq.write_table(pa.table({"origin": pa.array(origins, pa.string())}), p),
    }
    for kind, write in writers.items():
        with atomic_path(staging / names[kind]) as tmp:
            with open(tmp, "wb") as f:
                write(f)
            entry[kind] = {"file": names[kind], "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
    from ettin import faults  # a test hook (crash trials, full-disk tests); costs nothing unless armed

    faults.point("prepare.write_shard", index=index, path=staging / names["tokens"])
    atomic_write_json(staging / f"shard-{index:05d}.json", entry)
    return entry


def _finished_shards(staging: Path) -> list[dict]:
    """Shards of an interrupted run whose marker and files are intact, in order; the rest is removed."""
    done: list[dict] = []
    while (marker := staging / f"shard-{len(done):05d}.json").is_file():
        try:
            entry = json.loads(marker.read_text())
            verify_files(staging, {"shards": [entry]})
        except (json.JSONDecodeError, EttinError, KeyError):
            break
        done.append(entry)
    keep = {MANIFEST, "plan.json"} | {f"shard-{e['index']:05d}.json" for e in done}
    keep |= {e[k]["file"] for e in done for k in ("tokens", "docs", "origins")}
    for p in staging.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return done


def _swap_into_place(staging: Path, final: Path) -> None:
    for p in staging.glob("shard-*.json"):
        p.unlink()
    (staging / "plan.json").unlink(missing_ok=True)
    replace_dir(staging, final)


def _check_dir_tokenizer(out_dir: Path, names: set[str], tok: _Tokenizer, overwrite: bool) -> None:
    if not out_dir.is_dir() or overwrite:
        return
    for manifest_path in sorted(out_dir.glob(f"*/{MANIFEST}")):
        try:
            fp = json.loads(manifest_path.read_text())["tokenizer"]["fingerprint"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if fp != tok.fingerprint:
            raise EttinError(
                f"'{manifest_path.parent.name}' here was prepared with another tokenizer ({fp[:12]}, now {tok.fingerprint[:12]})",
                path=out_dir,
                field="tokenizer",
                fix="prepare into another folder, or pass --overwrite to replace sources of the same name",
            )


def prepare_source(
    spec: SourceSpec,
    tok: _Tokenizer,
    out_dir: Path,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_chars: int = DEFAULT_BATCH_CHARS,
    workers: int = 1,
    verify: bool = False,
    progress: Progress | None = None,
) -> PrepareResult:
    if spec.kind == "mds":  # pre-tokenized MDS: ids are copied as they are (ettin.data.mds)
        from ettin.data.mds import MDSFolder, ids_column, prepare_mds_ids

        if ids_column(MDSFolder.open(spec.path), spec.field) is not None:
            return prepare_mds_ids(spec, tok, out_dir, shard_tokens=shard_tokens, verify=verify, progress=progress)
    if spec.kind == "replay":  # a released batch-order folder (ettin.data.order)
        from ettin.data.order import prepare_replay

        return prepare_replay(spec, tok, out_dir, shard_tokens=shard_tokens, verify=verify, progress=progress)
    t0 = time.perf_counter()
    files = source_files(spec)
    total_bytes = sum(f.stat().st_size for f in files)
    key = _prepare_key(source_fingerprint(spec), tok, shard_tokens)
    final = out_dir / spec.name
    for stale in out_dir.glob(f".{spec.name}.old-*"):  # left by a crash during the final swap
        shutil.rmtree(stale, ignore_errors=True)
    if (final / MANIFEST).is_file():
        try:
            manifest = read_manifest(final)
        except EttinError:
            manifest = {}
        if manifest.get("key") == key:
            verify_files(final, manifest, sha256=verify)
            if progress:
                progress(spec.name, total_bytes, total_bytes)
            return PrepareResult(
                spec.name,
                final,
                "up to date",
                manifest["documents"],
                manifest["tokens"],
                manifest["text_bytes"],
                len(manifest["shards"]),
                time.perf_counter() - t0,
                manifest["report"],
            )

    staging = out_dir / f".{spec.name}.partial"
    created = not staging.exists()
    try:
        plan = json.loads((staging / "plan.json").read_text()) if (staging / "plan.json").is_file() else {}
    except json.JSONDecodeError:
        plan = {}
    if plan.get("key") != key:
        shutil.rmtree(staging, ignore_errors=True)
        created = True
        staging.mkdir(parents=True)
        atomic_write_json(staging / "plan.json", {"key": key, "source": spec.to_dict()})
    done = _finished_shards(staging)
    status = "resumed" if done else "prepared"
    dtype = token_dtype(tok.vocab_size)
    try:
        report = SourceReport()
        skip_docs = sum(e["documents"] for e in done)
        doc_index = 0
        bytes_done = 0

        def batches() -> Iterator[list[str]]:
            nonlocal doc_index
            texts: list[str] = []
            chars = 0
            for doc in iter_documents(spec, report):
                doc_index += 1
                if doc_index <= skip_docs:
                    continue
                origins_all.append(doc.origin)
                texts.append(doc.text)
                chars += len(doc.text)
                if chars >= batch_chars:
                    yield texts
                    texts, chars = [], 0
            if texts:
                yield texts

        origins_all: list[str] = []
        buf_tokens: list[np.ndarray] = []
        buf_lengths: list[np.ndarray] = []
        buf_count = buf_docs = buf_bytes = 0
        first_doc = skip_docs
        shards = list(done)

        def flush() -> None:
            nonlocal buf_tokens, buf_lengths, buf_count, buf_docs, buf_bytes, first_doc
            lengths = np.concatenate(buf_lengths)
            offsets = np.zeros(len(lengths) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            origins = origins_all[:buf_docs]
            del origins_all[:buf_docs]
            shards.append(
                _write_shard(staging, len(shards), np.concatenate(buf_tokens), offsets, origins, first_doc, buf_bytes)
            )
            first_doc += buf_docs
            buf_tokens, buf_lengths, buf_count, buf_docs, buf_bytes = [], [], 0, 0, 0

        for texts, flat, lengths in _encoded_batches(batches(), tok, dtype, workers):
            text_bytes = np.fromiter((len(t.encode("utf-8")) for t in texts), np.int64, count=len(texts))
            bytes_done += int(text_bytes.sum())
            cum = np.cumsum(lengths)
            i = 0
            # Documents never straddle shards: a shard closes when the next document would not fit.
            while i < len(lengths):
                base = int(cum[i - 1]) if i else 0
                stop = int(np.searchsorted(cum - base, shard_tokens - buf_count, side="right"))
                if stop == i and buf_count == 0:
                    stop = i + 1  # one document longer than a shard gets a shard of its own
                if stop > i:
                    n = int(cum[stop - 1]) - base
                    buf_tokens.append(flat[base : base + n])
                    buf_lengths.append(lengths[i:stop])
                    buf_bytes += int(text_bytes[i:stop].sum())
                    buf_count += n
                    buf_docs += stop - i
                    i = stop
                if buf_count >= shard_tokens or i < len(lengths):
                    flush()
            if progress:
                progress(spec.name, min(bytes_done, total_bytes), total_bytes)
        if buf_docs:
            flush()
        documents = sum(e["documents"] for e in shards)
        tokens = sum(e["num_tokens"] for e in shards)
        if documents == 0 or tokens == 0:
            raise EttinError(
                f"no text to prepare ({report.empty_documents} empty document(s) in {len(files)} file(s))",
                path=spec.path or spec.name,
                field="source",
                fix="point the source at files with text",
            )
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": spec.name,
            "key": key,
            "source": spec.to_dict(),
            "source_fingerprint": source_fingerprint(spec),
            "tokenizer": {
                "fingerprint": tok.fingerprint,
                "vocab_size": tok.vocab_size,
                "special_ids": tok.special_ids,
                "path": tok.path,
            },
            "dtype": dtype.name,
            "shard_tokens": shard_tokens,
            "documents": documents,
            "tokens": tokens,
            "text_bytes": sum(e["text_bytes"] for e in shards),
            "report": report.to_dict(),
            "shards": shards,
        }
        atomic_write_json(staging / MANIFEST, manifest)
        _swap_into_place(staging, final)
    except EttinError:
        if created or status == "resumed":
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if progress:
        progress(spec.name, total_bytes, total_bytes)
    return PrepareResult(
        spec.name,
        final,
        status,
        documents,
        tokens,
        manifest["text_bytes"],
        len(shards),
        time.perf_counter() - t0,
        report.to_dict(),
    )


def prepare(
    sources: Iterable,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_chars: int = DEFAULT_BATCH_CHARS,
    workers: int = 1,
    verify: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> list[PrepareResult]:
    """Prepare each source into `out_dir/<name>/`; see the module docstring for the guarantees."""
    specs = [as_spec(s) for s in sources]
    if not specs:
        raise EttinError("no sources given", field="source", fix="name at least one, e.g. --source wiki")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise EttinError(
            f"two sources share a name ({', '.join(names)})", field="source", fix="name them: NAME=KIND:PATH"
        )
    for name, value, high in (("shard_tokens", shard_tokens, 1 << 40), ("workers", workers, 1024)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise EttinError(f"{value!r} is not a whole number from 1 to {high:,}", field=name.replace("_", "-"))
    for spec in specs:
        source_files(spec)  # every path checked before anything is written
    tok = _Tokenizer.load(tokenizer)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EttinError("is a file, not a folder", path=out_dir, field="--out", fix="choose a folder for the data")
    _check_dir_tokenizer(out_dir, set(names), tok, overwrite)
    _check_targets(out_dir, specs)
    made_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out_dir, what="data folder").acquire()  # one prepare at a time per folder (ettin.lock)
    results = []
    try:
        for spec in specs:
            results.append(
                prepare_source(
                    spec,
                    tok,
                    out_dir,
                    shard_tokens=shard_tokens,
                    batch_chars=batch_chars,
                    workers=workers,
                    verify=verify,
                    progress=progress,
                )
            )
    except EttinError:
        lock.release()
        if made_dir and all(p.name == LOCK_FILE for p in out_dir.iterdir()):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        lock.release()
    return results


def _check_targets(out_dir: Path, specs: list[SourceSpec]) -> None:
    """A source's folder is replaced only when it is a prepared source: a user's folder of the same
    name is never renamed or removed."""
    for spec in specs:
        final = out_dir / spec.name
        if final.exists() and not (final / MANIFEST).is_file() and (not final.is_dir() or any(final.iterdir())):
            raise EttinError(
                f"holds something that is not a prepared source (no {MANIFEST}); ettin replaces only its own folders",
                path=final,
                field="--source",
                fix="name the source differently (NAME=KIND:PATH) or choose another --out",
            )
