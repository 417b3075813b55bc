"""`ettin data prepare`: tokenize sources into memory-mapped shards plus a manifest.

Idempotent: the manifest records a key (source content hash, tokenizer fingerprint, options), and a
second run with the same key only checks the files. Safe to interrupt: work happens in a hidden
`.<name>.partial/` folder where each finished shard is marked by a small JSON written after its files;
a rerun with the same key keeps the finished shards and continues after them; the folder becomes
`<name>/` by a rename after the manifest is written. A user error (bad bytes, bad JSON lines, empty
corpus, tokenizer clash) removes what this run started, so nothing half-written is left behind.

Two engines, one result: the local engine here (`prepare_source`) and the Ray engine
(`ettin.data.ray_engine`, which reads through Ray Data) share the pure steps (one file's documents from
`sources.file_documents`, which `iter_documents` calls too; `_encode`; the shard cuts of `ShardCutter`;
`_write_shard`; the manifest of `_finish`), so they write the same bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ettin.data.shard_writer import (  # noqa: F401  (re-exported: the names prepare has always had)
    DEFAULT_BATCH_CHARS,
    DEFAULT_SHARD_TOKENS,
    PrepareResult,
    Progress,
    ShardCutter,
    _check_dir_tokenizer,
    _encode,
    _finish,
    _finished_shards,
    _open_staging,
    _prepare_key,
    _Tokenizer,
    _up_to_date,
    _write_shard,
    is_url,
)
from ettin.data.shards import (
    MANIFEST,
    token_dtype,
)
from ettin.data.sources import SourceReport, SourceSpec, as_spec, iter_documents, source_files, source_fingerprint
from ettin.errors import EttinError
from ettin.lock import LOCK_FILE, FolderLock

ENGINES = ("local", "ray")
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


def _token_ids(spec: SourceSpec) -> bool:
    """A source that arrives as token ids (MDS input_ids, a replayed order folder): prepared by copying."""
    if spec.kind == "replay":
        return True
    if spec.kind == "mds":
        from ettin.data.mds import MDSFolder, ids_column

        return ids_column(MDSFolder.open(spec.path), spec.field) is not None
    return False


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
    """The local engine: read, tokenize (in `workers` processes) and write shards in order on this machine."""
    if _token_ids(spec):  # MDS input_ids or a released order folder: ids copied (ettin.data.pretokenized)
        from ettin.data.pretokenized import prepare_mds_ids, prepare_replay

        how = prepare_replay if spec.kind == "replay" else prepare_mds_ids
        return how(spec, tok, out_dir, shard_tokens=shard_tokens, verify=verify, progress=progress)
    t0 = time.perf_counter()
    files = source_files(spec)
    total_bytes = sum(f.stat().st_size for f in files)
    fingerprint = source_fingerprint(spec)
    key = _prepare_key(fingerprint, tok, shard_tokens)
    final = out_dir / spec.name
    if (result := _up_to_date(spec, final, key, verify, t0)) is not None:
        if progress:
            progress(spec.name, total_bytes, total_bytes)
        return result
    staging, created = _open_staging(spec, out_dir, key)
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
        buf_docs = buf_bytes = 0
        first_doc = skip_docs
        shards = list(done)
        cutter = ShardCutter(shard_tokens, first_doc=skip_docs)

        def flush() -> None:
            nonlocal buf_tokens, buf_lengths, buf_docs, buf_bytes, first_doc
            lengths = np.concatenate(buf_lengths)
            offsets = np.zeros(len(lengths) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            origins = origins_all[:buf_docs]
            del origins_all[:buf_docs]
            shards.append(
                _write_shard(staging, len(shards), np.concatenate(buf_tokens), offsets, origins, first_doc, buf_bytes)
            )
            first_doc += buf_docs
            buf_tokens, buf_lengths, buf_docs, buf_bytes = [], [], 0, 0

        def take(flat, lengths, text_bytes, cum, j: int, k: int) -> None:
            nonlocal buf_docs, buf_bytes
            if k > j:
                lo = int(cum[j - 1]) if j else 0
                buf_tokens.append(flat[lo : int(cum[k - 1])])
                buf_lengths.append(lengths[j:k])
                buf_bytes += int(text_bytes[j:k].sum())
                buf_docs += k - j

        for texts, flat, lengths in _encoded_batches(batches(), tok, dtype, workers):
            text_bytes = np.fromiter((len(t.encode("utf-8")) for t in texts), np.int64, count=len(texts))
            bytes_done += int(text_bytes.sum())
            cum = np.cumsum(lengths)
            batch_first = cutter.next_doc
            j = 0
            for end in cutter.feed(lengths):
                take(flat, lengths, text_bytes, cum, j, end - batch_first)
                j = end - batch_first
                flush()
            take(flat, lengths, text_bytes, cum, j, len(lengths))
            if progress:
                progress(spec.name, min(bytes_done, total_bytes), total_bytes)
        if cutter.close():
            flush()
        manifest = _finish(
            spec, tok, key, shard_tokens, staging, final, shards, report.to_dict(), len(files), fingerprint
        )
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
        manifest["documents"],
        manifest["tokens"],
        manifest["text_bytes"],
        len(shards),
        time.perf_counter() - t0,
        manifest["report"],
    )


def _make_out_dir(out_dir: Path) -> bool:
    """Create the output folder (True when this run made it), or one clear line when it cannot be written."""
    made = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ettin-write-check-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        wrong_kind = out_dir.exists() and not out_dir.is_dir()
        raise EttinError(
            f"{exc.strerror or exc}" if wrong_kind else f"cannot write the output folder ({exc.strerror or exc})",
            path=out_dir,
            field=None if wrong_kind else "--out",
            fix="a file stands where a folder is needed; choose another path"
            if wrong_kind
            else "choose a folder you can write",
        ) from None
    return made


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
    engine: str = "local",
    ray_address: str | None = None,
) -> list[PrepareResult]:
    """Prepare each source into `out_dir/<name>/`; see the module docstring for the guarantees.

    `engine="local"` works on this machine (`workers` tokenizer processes); `engine="ray"` runs on a Ray
    cluster (`ray_address`, or the running Ray session, or a Ray started here with `workers` CPUs) and
    writes the same bytes (see ettin.data.ray_engine)."""
    if engine not in ENGINES:
        raise EttinError(f"unknown engine '{engine}'", field="--engine", fix=f"use one of {', '.join(ENGINES)}")
    if ray_address and engine != "ray":
        raise EttinError("--ray-address needs --engine ray", field="--ray-address", fix="add --engine ray")
    if engine == "ray":
        from ettin.data.ray_engine import import_ray

        import_ray()  # one clear line before anything else when Ray is missing
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
        if is_url(spec.path) and spec.kind != "mds":  # MDS folders download themselves (ettin.data.mds)
            if engine != "ray":
                raise EttinError(
                    "object-store URLs are read by the Ray engine only",
                    path=spec.path,
                    field="source",
                    fix="add --engine ray, or copy the files to a local folder",
                )
            from ettin.data.ray_engine import url_files

            url_files(spec)  # the files exist and the store answers, before anything starts
            continue
        source_files(spec)  # every path checked before anything is written
    tok = _Tokenizer.load(tokenizer)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EttinError("is a file, not a folder", path=out_dir, field="--out", fix="choose a folder for the data")
    _check_dir_tokenizer(out_dir, set(names), tok, overwrite)
    _check_targets(out_dir, specs)
    made_dir = _make_out_dir(out_dir)
    lock = FolderLock(out_dir, what="data folder").acquire()  # one prepare at a time per folder (ettin.lock)
    results = []
    try:
        if engine == "ray":
            from ettin.data.ray_engine import check_workers_can_write, prepare_source_ray, ray_cluster

            with ray_cluster(ray_address, num_cpus=workers if workers > 1 else None) as ray:
                check_workers_can_write(ray, out_dir)
                for spec in specs:
                    if _token_ids(spec):  # copied, not tokenized: nothing to spread over the cluster
                        results.append(prepare_source(spec, tok, out_dir, shard_tokens=shard_tokens, verify=verify))
                        continue
                    results.append(
                        prepare_source_ray(
                            ray,
                            spec,
                            tok,
                            out_dir,
                            shard_tokens=shard_tokens,
                            batch_chars=batch_chars,
                            verify=verify,
                            progress=progress,
                        )
                    )
            return results
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
