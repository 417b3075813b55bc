"""Prepared token shards and their manifest: the on-disk form of a tokenized source.

A prepared source is a folder `DATA_DIR/<name>/`:

    manifest.json            what was prepared from what, with which tokenizer, and every file's size and sha256
    tokens-00000.npy         all tokens of the shard's documents, concatenated (uint16 if the vocabulary
                             fits, else uint32), memory-mapped when read
    docs-00000.npy           int64 offsets into the tokens, one more than the shard's documents
    origins-00000.parquet    where each document came from (file:line, title), for provenance

Only the manifest makes a folder a prepared source, and it is written last, so a folder with shards
but no manifest is never mistaken for finished data. Opening checks every file's size (cheap, always)
and, when asked, its sha256.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ettin.errors import EttinError

FORMAT = "ettin-tokens"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def shard_file_names(index: int) -> dict[str, str]:
    return {
        "tokens": f"tokens-{index:05d}.npy",
        "docs": f"docs-{index:05d}.npy",
        "origins": f"origins-{index:05d}.parquet",
    }


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        hint = "run `ettin data prepare` for this source"
        if not folder.exists():
            raise EttinError("no prepared data here (no such folder)", path=folder, fix=hint)
        raise EttinError("no prepared data here (no manifest.json)", path=folder, fix=hint)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EttinError(f"manifest is not valid JSON ({exc})", path=path, fix="prepare the source again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EttinError(f"not an {FORMAT} manifest", path=path, fix="prepare the source again")
    if manifest.get("version") != FORMAT_VERSION:
        raise EttinError(
            f"manifest version {manifest.get('version')} is not {FORMAT_VERSION}",
            path=path,
            fix="prepare the source again",
        )
    check_manifest(manifest, path)
    return manifest


def _bad(path: Path, where: str, what: str, value) -> EttinError:
    shown = "missing" if value is _MISSING else f"{what}, not {json.dumps(value)[:60]}"
    return EttinError(
        shown if value is _MISSING else f"must be {shown}",
        path=path,
        field=where,
        fix="the manifest was edited or damaged; prepare the source again",
    )


_MISSING = object()


def _need(obj: dict, key: str, kind, path: Path, where: str, *, low: int | None = None):
    value = obj.get(key, _MISSING) if isinstance(obj, dict) else _MISSING
    names = {int: "a whole number", str: "a string", dict: "a JSON object", list: "a list"}
    if value is _MISSING:
        raise _bad(path, f"{where}{key}", "", value)
    ok = (isinstance(value, int) and not isinstance(value, bool)) if kind is int else isinstance(value, kind)
    if not ok or (low is not None and value < low):
        raise _bad(path, f"{where}{key}", names[kind] + (f" >= {low}" if low is not None else ""), value)
    return value


def _plain_file_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def check_manifest(manifest: dict, path: Path) -> None:
    """Every key a reader uses, of the right type and range (a wrong one is one line naming the field)."""
    _need(manifest, "name", str, path, "")
    _need(manifest, "documents", int, path, "", low=0)
    _need(manifest, "tokens", int, path, "", low=0)
    dtype = _need(manifest, "dtype", str, path, "")
    if dtype not in ("uint16", "uint32"):
        raise _bad(path, "dtype", "uint16 or uint32", dtype)
    tok = _need(manifest, "tokenizer", dict, path, "")
    _need(tok, "fingerprint", str, path, "tokenizer.")
    vocab = _need(tok, "vocab_size", int, path, "tokenizer.", low=1)
    if vocab > np.iinfo(dtype).max + 1:
        raise _bad(path, "tokenizer.vocab_size", f"at most {np.iinfo(dtype).max + 1} for {dtype} shards", vocab)
    specials = _need(tok, "special_ids", dict, path, "tokenizer.")
    for k, v in specials.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab:
            raise _bad(path, f"tokenizer.special_ids.{k}", f"a token id below {vocab}", v)
    shards = _need(manifest, "shards", list, path, "")
    total = 0
    for i, shard in enumerate(shards):
        where = f"shards.{i}."
        if not isinstance(shard, dict):
            raise _bad(path, f"shards.{i}", "a JSON object", shard)
        total += _need(shard, "documents", int, path, where, low=0)
        for kind in ("tokens", "docs", "origins"):
            entry = _need(shard, kind, dict, path, where)
            name = _need(entry, "file", str, path, f"{where}{kind}.")
            if not _plain_file_name(name):
                raise _bad(path, f"{where}{kind}.file", "a file name in this folder", name)
            _need(entry, "bytes", int, path, f"{where}{kind}.", low=0)
            _need(entry, "sha256", str, path, f"{where}{kind}.")
    if total != manifest["documents"]:
        raise _bad(path, "documents", f"the sum of the shards' documents ({total})", manifest["documents"])


def verify_files(folder: Path, manifest: dict, *, sha256: bool = False) -> None:
    """Raise if any shard file is missing, has another size, or (with sha256) other content."""
    for shard in manifest["shards"]:
        for kind in ("tokens", "docs", "origins"):
            entry = shard[kind]
            path = folder / entry["file"]
            if not path.is_file():
                raise EttinError(
                    "shard file is missing", path=path, fix="prepare the source again (`ettin data prepare`)"
                )
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise EttinError(
                    f"shard file has {size} bytes, the manifest says {entry['bytes']}",
                    path=path,
                    fix="the file was changed or truncated; prepare the source again",
                )
            if sha256 and sha256_file(path) != entry["sha256"]:
                raise EttinError(
                    "shard file's sha256 differs from the manifest",
                    path=path,
                    fix="the file was changed; prepare the source again",
                )


def _load_array(path: Path) -> np.ndarray:
    """Memory-map a shard array; never unpickles (a .npy of Python objects is refused)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise EttinError(f"is not a plain numeric array ({exc})", path=path, fix="prepare the source again") from None


@dataclass
class PreparedSource:
    """A prepared source opened for reading: memory-mapped shards and the document table."""

    folder: Path
    manifest: dict
    doc_offsets: list[np.ndarray]
    tokens: list[np.ndarray]
    shard_first_doc: np.ndarray  # first global document index of each shard, plus the total at the end
    doc_lengths: np.ndarray

    @classmethod
    def open(
        cls, folder: str | Path, *, verify: bool = False, tokenizer_fingerprint: str | None = None
    ) -> "PreparedSource":
        folder = Path(folder)
        manifest = read_manifest(folder)
        if tokenizer_fingerprint is not None and manifest["tokenizer"]["fingerprint"] != tokenizer_fingerprint:
            raise EttinError(
                "the data was prepared with a different tokenizer "
                f"(fingerprint {manifest['tokenizer']['fingerprint'][:12]}, yours {tokenizer_fingerprint[:12]})",
                path=folder,
                field="tokenizer",
                fix="prepare the data again with this tokenizer, or use the tokenizer the data was made with",
            )
        verify_files(folder, manifest, sha256=verify)
        dtype = np.dtype(manifest["dtype"])
        offsets, tokens, first, lengths = [], [], [0], []
        for shard in manifest["shards"]:
            docs = _load_array(folder / shard["docs"]["file"])
            toks = _load_array(folder / shard["tokens"]["file"])
            if (
                toks.dtype != dtype
                or toks.ndim != 1
                or docs.ndim != 1
                or docs.dtype.kind not in "iu"
                or len(docs) != shard["documents"] + 1
                or int(docs[0]) != 0
                or int(docs[-1]) != len(toks)
                or (len(docs) > 1 and bool((np.diff(docs) < 0).any()))
            ):
                raise EttinError(
                    "shard does not agree with the manifest", path=folder / shard["tokens"]["file"], fix="prepare again"
                )
            vocab = int(manifest["tokenizer"]["vocab_size"])
            if len(toks) and int(toks.max()) >= vocab:  # one pass over the memory map: cheap next to training
                raise EttinError(
                    f"holds token id {int(toks.max())}, beyond the tokenizer's vocabulary of {vocab}",
                    path=folder / shard["tokens"]["file"],
                    fix="the shard was changed or made with another tokenizer; prepare the source again",
                )
            offsets.append(docs)
            tokens.append(toks)
            first.append(first[-1] + shard["documents"])
            lengths.append(np.diff(np.asarray(docs)))
        doc_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        return cls(folder, manifest, offsets, tokens, np.asarray(first, np.int64), doc_lengths)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def num_documents(self) -> int:
        return int(self.shard_first_doc[-1])

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["tokens"])

    def document_tokens(self, doc: int, start: int = 0, end: int | None = None) -> np.ndarray:
        shard = int(np.searchsorted(self.shard_first_doc, doc, side="right")) - 1
        local = doc - int(self.shard_first_doc[shard])
        base = int(self.doc_offsets[shard][local])
        stop = int(self.doc_offsets[shard][local + 1])
        end = stop - base if end is None else end
        return self.tokens[shard][base + start : base + end]

    def origin(self, doc: int) -> str:
        import pyarrow.parquet as pq

        shard = int(np.searchsorted(self.shard_first_doc, doc, side="right")) - 1
        local = doc - int(self.shard_first_doc[shard])
        table = pq.read_table(self.folder / self.manifest["shards"][shard]["origins"]["file"], columns=["origin"])
        return str(table.column(0)[local].as_py())
