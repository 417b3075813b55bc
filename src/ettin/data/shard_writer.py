"""The engine-independent half of `ettin data prepare`: what a prepared source is, byte for byte.

Every engine (the local one in `ettin.data.prepare`, the Ray one in `ettin.data.ray_engine`) and every
pre-tokenized source (`ettin.data.mds`, the replay of `ettin.data.order`) writes through these: the
shard cuts of `ShardCutter`, `_write_shard`, the staging folder, the manifest of `_finish`, the key
that makes a rerun a no-op. That is why they all write the same bytes for the same inputs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable
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
from ettin.data.sources import SourceSpec
from ettin.errors import EttinError
from ettin.io import atomic_path, atomic_write_json, replace_dir

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


class ShardCutter:
    """Where shards close, as a pure function of the documents' token counts in order (every engine uses it).

    Documents never straddle shards: a shard closes before a document that would not fit, and as soon as
    it holds `shard_tokens`; a document longer than a shard gets a shard of its own. The cuts do not
    depend on how the lengths are batched, so any engine that feeds the same lengths gets the same shards.
    """

    def __init__(self, shard_tokens: int, first_doc: int = 0) -> None:
        self.shard_tokens = shard_tokens
        self.fill = 0  # tokens in the open shard
        self.next_doc = first_doc  # global index of the next document fed
        self.open_docs = 0  # documents in the open shard

    def feed(self, lengths: np.ndarray) -> list[int]:
        """Global end indices (exclusive) of the shards that close within these documents."""
        cuts: list[int] = []
        cum = np.cumsum(lengths, dtype=np.int64)
        n, i, base = len(lengths), 0, 0
        while i < n:
            room = self.shard_tokens - self.fill
            stop = min(
                int(np.searchsorted(cum, base + room, side="right")),  # documents that fit
                int(np.searchsorted(cum, base + room, side="left")) + 1,  # ... up to the one that fills the shard
            )
            if stop <= i:
                if self.open_docs:
                    cuts.append(self.next_doc + i)  # the next document does not fit: close the open shard
                    self.fill = self.open_docs = 0
                    continue
                stop = i + 1  # one document longer than a shard gets a shard of its own
            self.fill += int(cum[stop - 1]) - base
            self.open_docs += stop - i
            base = int(cum[stop - 1])
            i = stop
            if self.fill >= self.shard_tokens or i < n:
                cuts.append(self.next_doc + i)
                self.fill = self.open_docs = 0
        self.next_doc += n
        return cuts

    def close(self) -> list[int]:
        """The end of the last shard, if one is open."""
        if not self.open_docs:
            return []
        self.fill = self.open_docs = 0
        return [self.next_doc]


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


def _up_to_date(spec: SourceSpec, final: Path, key: str, verify: bool, t0: float) -> PrepareResult | None:
    """The result of a finished preparation with the same key, after checking its files; else None."""
    if not (final / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(final)
    except EttinError:
        return None
    if manifest.get("key") != key:
        return None
    verify_files(final, manifest, sha256=verify)
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


def _open_staging(spec: SourceSpec, out_dir: Path, key: str) -> tuple[Path, bool]:
    """The hidden `.<name>.partial/` folder of this key (kept from an interrupted run, or new) and whether it is new."""
    for stale in out_dir.glob(f".{spec.name}.old-*"):  # left by a crash during the final swap
        shutil.rmtree(stale, ignore_errors=True)
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
    return staging, created


def _finish(
    spec: SourceSpec,
    tok: _Tokenizer,
    key: str,
    shard_tokens: int,
    staging: Path,
    final: Path,
    shards: list[dict],
    report: dict,
    n_files: int,
    fingerprint: str,
) -> dict:
    """Write the manifest (the same for every engine) and move the finished folder into place."""
    documents = sum(e["documents"] for e in shards)
    tokens = sum(e["num_tokens"] for e in shards)
    if documents == 0 or tokens == 0:
        raise EttinError(
            f"no text to prepare ({report['empty_documents']} empty document(s) in {n_files} file(s))",
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
        "source_fingerprint": fingerprint,
        "tokenizer": {
            "fingerprint": tok.fingerprint,
            "vocab_size": tok.vocab_size,
            "special_ids": tok.special_ids,
            "path": tok.path,
        },
        "dtype": token_dtype(tok.vocab_size).name,
        "shard_tokens": shard_tokens,
        "documents": documents,
        "tokens": tokens,
        "text_bytes": sum(e["text_bytes"] for e in shards),
        "report": report,
        "shards": shards,
    }
    atomic_write_json(staging / MANIFEST, manifest)
    _swap_into_place(staging, final)
    return manifest


def is_url(path: str) -> bool:
    """An object-store (or file://) URL such as s3://bucket/prefix, read through pyarrow.fs."""
    return "://" in path
