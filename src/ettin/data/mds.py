"""MosaicML streaming's MDS format, read-only with numpy (the layout of the released Ettin data).

A dataset is a folder with `index.json` (`{"version": 2, "shards": [...]}`) and the shard files it
lists. Each shard entry names its columns (`column_names`, `column_encodings`, `column_sizes`: a
size for fixed-size columns, null for variable ones), its `raw_data` file and, when compressed, its
`zip_data` file (`compression` like "zstd" or "zstd:7"), each with `bytes` and optional `hashes`.

A raw shard is `uint32 samples | uint32 offsets[samples + 1] | config | sample data`; a sample is
one uint32 size per variable-size column, then the columns' bytes in column order. An
`ndarray[:dtype[:shape]]` value carries what its encoding leaves out: a dtype byte, then
`(ndim << 2) | shape-dtype` and the shape, then the values. Scalars are little-endian numpy values,
`str` is UTF-8, `bytes` is raw. Pickled and image columns are refused (never unpickled).

The `mosaicml-streaming` package itself is not imported: it pins transformers < 5 and an old numpy,
and its package `__init__` imports its vision module (torchvision). The tests read folders that its
real `MDSWriter` wrote (tests/data/fixtures/mds/, with the script and version).

    folder = MDSFolder.open("data/ettin-pretraining-data/arxiv")      # or s3://, gs://, hf://
    for shard, samples in folder.iter_shards(columns=["input_ids"]): ...
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ettin.errors import EttinError

INDEX = "index.json"
REMOTE_PREFIXES = ("s3://", "gs://", "hf://")
_NDARRAY_DTYPES = {
    8: "uint8",
    9: "int8",
    16: "uint16",
    17: "int16",
    18: "float16",
    32: "uint32",
    33: "int32",
    34: "float32",
    64: "uint64",
    65: "int64",
    66: "float64",
}
_SCALARS = {
    "uint8": "<u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
    "int8": "<i1",
    "int16": "<i2",
    "int32": "<i4",
    "int64": "<i8",
    "int": "<i8",
    "float16": "<f2",
    "float32": "<f4",
    "float64": "<f8",
}
_TEXTLIKE = ("str", "str_int", "str_float", "str_decimal", "json")
_REFUSED = ("pkl", "jpeg", "png", "pil", "jpeg_array", "jpegfile", "list[pil]", "list[jpeg]", "list[png]")
_CODECS = {"zstd": "zstd", "br": "brotli", "brotli": "brotli", "snappy": "snappy", "gz": "gzip", "bz2": "bz2"}


def is_remote(path: str) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


def cache_root() -> Path:
    return Path(os.environ.get("ETTIN_MDS_CACHE") or Path.home() / ".cache" / "ettin" / "mds")


def _download(url: str, dest: Path) -> Path:
    """One remote file into the local cache (kept; a finished download is reused)."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        if url.startswith("hf://"):
            # hf://datasets/OWNER/NAME[@REVISION]/path/in/repo
            m = re.match(r"^hf://(datasets/|models/)?([^/]+/[^/@]+)(?:@([^/]+))?/(.+)$", url)
            if not m:
                raise EttinError(f"cannot read the hub address {url}", fix="write hf://datasets/OWNER/NAME/FOLDER")
            from huggingface_hub import hf_hub_download

            repo_type = "model" if m.group(1) == "models/" else "dataset"
            got = hf_hub_download(m.group(2), m.group(4), repo_type=repo_type, revision=m.group(3))
            tmp.write_bytes(Path(got).read_bytes())
        else:
            try:
                import fsspec
            except ImportError:
                raise EttinError(f"reading {url} needs fsspec", fix="pip install fsspec s3fs gcsfs") from None
            try:
                with fsspec.open(url, "rb") as src, open(tmp, "wb") as out:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
            except ImportError as exc:
                raise EttinError(
                    f"reading {url} needs a filesystem package ({exc})", fix="pip install s3fs gcsfs"
                ) from None
    except EttinError:
        raise
    except Exception as exc:  # network and storage clients raise many types
        tmp.unlink(missing_ok=True)
        raise EttinError(
            f"cannot download ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", path=url
        ) from None
    os.replace(tmp, dest)
    return dest


def _hash(algo: str, data: bytes) -> str:
    if algo.startswith("xxh"):
        import xxhash

        fn = getattr(xxhash, f"{algo}_hexdigest", None) or getattr(xxhash, f"{algo}_64_hexdigest", None)
        if fn is None:
            raise EttinError(f"unknown hash '{algo}' in the MDS index", field="hashes")
        return fn(data)
    try:
        return hashlib.new(algo, data).hexdigest()
    except ValueError:
        raise EttinError(f"unknown hash '{algo}' in the MDS index", field="hashes") from None


def _decompress(data: bytes, compression: str, raw_size: int, where: Path) -> bytes:
    algo = compression.split(":", 1)[0]
    if algo == "gz":
        import gzip

        return gzip.decompress(data)
    if algo == "bz2":
        import bz2

        return bz2.decompress(data)
    codec = _CODECS.get(algo)
    if codec is None:
        raise EttinError(f"unknown MDS compression '{compression}'", path=where, fix="use zstd, br, snappy, gz or bz2")
    import pyarrow as pa

    try:
        return pa.decompress(data, decompressed_size=raw_size, codec=codec, asbytes=True)
    except (pa.ArrowException, OSError) as exc:
        raise EttinError(f"shard does not decompress as {algo} ({exc})".splitlines()[0], path=where) from None


@dataclass(frozen=True)
class Column:
    name: str
    encoding: str
    size: int | None  # bytes, for fixed-size columns


@dataclass(frozen=True)
class ShardInfo:
    index: int
    raw: str
    zip: str | None
    compression: str | None
    raw_bytes: int
    zip_bytes: int | None
    raw_hashes: dict
    zip_hashes: dict
    samples: int
    columns: tuple[Column, ...]

    @property
    def file(self) -> str:
        return self.zip or self.raw


class MDSFolder:
    """An MDS dataset folder (local, or remote and cached); see the module docstring."""

    def __init__(self, location: str, local: Path, shards: list[ShardInfo]):
        self.location = location
        self.local = local
        self.shards = shards
        self.first_sample = np.concatenate([[0], np.cumsum([s.samples for s in shards])]).astype(np.int64)

    @property
    def num_samples(self) -> int:
        return int(self.first_sample[-1])

    @property
    def columns(self) -> dict[str, str]:
        return {c.name: c.encoding for c in self.shards[0].columns} if self.shards else {}

    @classmethod
    def open(cls, path: str | Path) -> "MDSFolder":
        location = str(path)
        if is_remote(location):
            base = location.rstrip("/")
            local = cache_root() / hashlib.sha256(base.encode()).hexdigest()[:16]
            index_path = _download(f"{base}/{INDEX}", local / INDEX)
        else:
            local = Path(location)
            if not local.exists():
                raise EttinError("no such folder", path=local, field="source", fix="check the path of the MDS source")
            index_path = local / INDEX
            if not index_path.is_file():
                raise EttinError(
                    "not an MDS folder (no index.json)",
                    path=local,
                    field="source",
                    fix="point at a folder written by MosaicML streaming's MDSWriter (it holds index.json)",
                )
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EttinError(f"index.json is not valid JSON ({exc})", path=index_path) from None
        if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
            raise EttinError("index.json has no 'shards' list", path=index_path, fix="write it with MDSWriter")
        if index.get("version") != 2:
            raise EttinError(f"index.json version {index.get('version')!r} is not 2", path=index_path)
        shards = [_shard_info(i, entry, index_path) for i, entry in enumerate(index["shards"])]
        if not shards:
            raise EttinError("index.json lists no shards", path=index_path)
        first = shards[0].columns
        for s in shards[1:]:
            if s.columns != first:
                raise EttinError(f"shard {s.raw} has other columns than {shards[0].raw}", path=index_path)
        folder = cls(location, local, shards)
        if not is_remote(location):
            for s in shards:
                p = local / s.file
                if not p.is_file():
                    raise EttinError(
                        f"shard {s.file} is listed in index.json but missing",
                        path=p,
                        fix="copy the whole folder again (every shard index.json lists)",
                    )
        return folder

    def shard_path(self, shard: ShardInfo) -> Path:
        p = self.local / shard.file
        if is_remote(self.location):
            return _download(f"{self.location.rstrip('/')}/{shard.file}", p)
        if not p.is_file():
            raise EttinError(f"shard {shard.file} is listed in index.json but missing", path=p)
        return p

    def files(self) -> list[Path]:
        """index.json and every shard file (downloaded first when remote)."""
        return [self.local / INDEX, *(self.shard_path(s) for s in self.shards)]

    def read_raw(self, shard: ShardInfo, *, verify: bool = True) -> bytes:
        """The shard's raw (decompressed) bytes; checks sizes, and every hash the index lists."""
        path = self.shard_path(shard)
        data = path.read_bytes()
        want = shard.zip_bytes if shard.zip else shard.raw_bytes
        if want is not None and len(data) != want:
            raise EttinError(
                f"shard {shard.file} has {len(data)} bytes, index.json says {want}",
                path=path,
                fix="the shard is truncated or changed; copy it again",
            )
        if verify:
            for algo, digest in (shard.zip_hashes if shard.zip else shard.raw_hashes).items():
                if _hash(algo, data) != digest:
                    raise EttinError(
                        f"shard {shard.file}: {algo} differs from index.json (corrupted)",
                        path=path,
                        fix="the shard was damaged; copy it again",
                    )
        if shard.zip:
            data = _decompress(data, shard.compression or "", shard.raw_bytes, path)
            if len(data) != shard.raw_bytes:
                raise EttinError(
                    f"shard {shard.file} decompresses to {len(data)} bytes, not {shard.raw_bytes}", path=path
                )
            if verify:
                for algo, digest in shard.raw_hashes.items():
                    if _hash(algo, data) != digest:
                        raise EttinError(f"shard {shard.raw}: {algo} differs from index.json (corrupted)", path=path)
        return data

    def iter_shards(self, columns: list[str], *, verify: bool = True) -> Iterator[tuple[ShardInfo, list[list]]]:
        """Per shard, its samples as one list per requested column."""
        for shard in self.shards:
            yield shard, decode_shard(self.read_raw(shard, verify=verify), shard, columns, self.local / shard.file)


def _shard_info(i: int, entry: dict, where: Path) -> ShardInfo:
    try:
        if entry.get("format", "mds") != "mds":
            raise EttinError(
                f"shard {i} is in format '{entry.get('format')}', not 'mds'", path=where, fix="write MDS shards"
            )
        names, encs = entry["column_names"], entry["column_encodings"]
        sizes = entry.get("column_sizes") or [None] * len(names)
        raw, zip_ = entry["raw_data"], entry.get("zip_data")
        cols = tuple(Column(n, e, s) for n, e, s in zip(names, encs, sizes))
        for c in cols:
            base = c.encoding.split(":", 1)[0]
            if base in _REFUSED:
                raise EttinError(
                    f"column '{c.name}' is encoded as '{c.encoding}', which ettin does not read",
                    path=where,
                    fix="write token ids as ndarray:uint16/uint32 and text as str",
                )
        return ShardInfo(
            index=i,
            raw=raw["basename"],
            zip=zip_["basename"] if zip_ else None,
            compression=entry.get("compression"),
            raw_bytes=int(raw["bytes"]),
            zip_bytes=int(zip_["bytes"]) if zip_ else None,
            raw_hashes=dict(raw.get("hashes") or {}),
            zip_hashes=dict((zip_ or {}).get("hashes") or {}),
            samples=int(entry["samples"]),
            columns=cols,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EttinError(f"shard entry {i} of index.json is malformed ({exc!r})", path=where) from None


def _decode_value(encoding: str, data: bytes):
    base, _, arg = encoding.partition(":")
    if base == "ndarray":
        parts = arg.split(":") if arg else []
        dtype = parts[0] if parts else None
        shape = tuple(int(x) for x in parts[1].split(",")) if len(parts) > 1 else None
        pos = 0
        if dtype is None:
            dtype = _NDARRAY_DTYPES.get(data[0])
            if dtype is None:
                raise ValueError(f"unknown ndarray dtype code {data[0]}")
            pos = 1
        if shape is None:
            byte = data[pos]
            ndim, width = byte >> 2, 1 << (byte & 3)
            shape = tuple(np.frombuffer(data, f"<u{width}", ndim, pos + 1).tolist())
            pos += 1 + ndim * width
        return np.frombuffer(data, np.dtype(dtype).newbyteorder("<"), offset=pos).reshape(shape)
    if base in _SCALARS:
        return np.frombuffer(data, _SCALARS[base], 1)[0]
    if base in _TEXTLIKE:
        return data.decode("utf-8")
    if base == "bytes":
        return data
    raise ValueError(f"unknown encoding '{encoding}'")


def decode_shard(raw: bytes, shard: ShardInfo, columns: list[str], where: Path) -> list[list]:
    """The requested columns of every sample of one raw shard."""
    names = [c.name for c in shard.columns]
    for col in columns:
        if col not in names:
            raise EttinError(f"shard {shard.file} has no column '{col}' (columns: {', '.join(names)})", path=where)
    try:
        n = int(np.frombuffer(raw, "<u4", 1, 0)[0])
        if n != shard.samples:
            raise ValueError(f"{n} samples in the file, {shard.samples} in index.json")
        offsets = np.frombuffer(raw, "<u4", n + 1, 4).astype(np.int64)
        if n and (offsets[-1] != len(raw) or np.any(np.diff(offsets) < 0)):
            raise ValueError("sample offsets do not fit the file")
        variable = [i for i, c in enumerate(shard.columns) if c.size is None]
        wanted = [names.index(c) for c in columns]
        out: list[list] = [[] for _ in columns]
        nvar = len(variable)
        for s in range(n):
            begin, end = int(offsets[s]), int(offsets[s + 1])
            sizes = np.frombuffer(raw, "<u4", nvar, begin).tolist() if nvar else []
            pos = begin + 4 * nvar
            spans = []
            vi = 0
            for c in shard.columns:
                size = c.size if c.size is not None else sizes[vi]
                if c.size is None:
                    vi += 1
                spans.append((pos, pos + size))
                pos += size
            if pos != end:
                raise ValueError(f"sample {s} does not fill its {end - begin} bytes")
            for k, ci in enumerate(wanted):
                a, b = spans[ci]
                out[k].append(_decode_value(shard.columns[ci].encoding, raw[a:b]))
        return out
    except (ValueError, IndexError) as exc:
        raise EttinError(
            f"shard {shard.file} is not a valid MDS shard ({exc})", path=where, fix="copy the shard again"
        ) from None


# ------------------------------------------------------------------------------ token ids as documents


def ids_column(folder: MDSFolder, field: str) -> str | None:
    """The column of token ids this source reads, or None when it reads text."""
    cols = folder.columns
    if field == "auto":
        if "input_ids" in cols:
            field = "input_ids"
        elif "text" in cols:
            return None
        else:
            raise EttinError(
                f"MDS folder has neither 'input_ids' nor 'text' (columns: {', '.join(cols)})",
                path=folder.location,
                field="field",
                fix="name the column with mds:PATH#COLUMN",
            )
    if field not in cols:
        raise EttinError(
            f"MDS folder has no column '{field}' (columns: {', '.join(cols)})", path=folder.location, field="field"
        )
    enc = cols[field]
    base, _, arg = enc.partition(":")
    if base in _TEXTLIKE:
        return None
    if base == "bytes":
        return field
    dtype = arg.split(":")[0] if arg else ""
    if base != "ndarray" or (dtype and not np.issubdtype(np.dtype(dtype), np.integer)):
        raise EttinError(
            f"column '{field}' is '{enc}', not integer token ids",
            path=folder.location,
            field="field",
            fix="token ids must be an ndarray of an integer type (ndarray:uint16, ndarray:uint32) or bytes",
        )
    return field


def sample_ids(value, *, ids_dtype: str, where: str) -> np.ndarray:
    """One sample's token ids as a 1-D integer array of its own width (bytes are read as `ids_dtype`)."""
    if isinstance(value, bytes):
        arr = np.frombuffer(value, np.dtype(ids_dtype).newbyteorder("<"))
    else:
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.integer):
            raise EttinError(f"{where}: token ids are {arr.dtype}, not integers", fix="write ids as ndarray:uint16")
    return arr.reshape(-1)


FLAG_CLS = 1  # the sample began with [CLS] (stripped; the stream adds it back)
FLAG_SEP = 2  # the sample ended with [SEP] (stripped; the stream adds it back at the document's end)
FLAGS_FILE = "mds-flags.npy"  # written by ettin.data.pretokenized


def load_flags(folder: Path, manifest: dict) -> np.ndarray:
    """The per-document [CLS]/[SEP] flags of a source prepared from MDS ids (zeros for any other source)."""
    info = manifest.get("mds") or manifest.get("replay")
    if not info or "flags" not in info:
        return np.zeros(int(manifest["documents"]), np.uint8)
    path = folder / info["flags"]["file"]
    if not path.is_file() or path.stat().st_size != info["flags"]["bytes"]:
        raise EttinError("the [CLS]/[SEP] flags file is missing or changed", path=path, fix="prepare the source again")
    flags = np.load(path, allow_pickle=False)
    if flags.shape != (int(manifest["documents"]),):
        raise EttinError("the [CLS]/[SEP] flags do not match the documents", path=path, fix="prepare again")
    return flags
