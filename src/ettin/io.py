"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Everything ettin writes that another step relies on (shards, manifests, checkpoints, exports,
results) goes through these helpers: write to a temporary sibling, flush and fsync, rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ettin import faults
from ettin.errors import WriteFailed

# What a refused write says when it carries no errno (numpy, torch's zip writer, safetensors' Rust writer)
_WRITER_ERRORS = ("PytorchStreamWriter", "inline_container", "file write failed", "I/O error", "IoError")


def write_failure(exc: BaseException, path: object | None = None) -> WriteFailed | None:
    """The one reading of a failed write that has no errno; None when `exc` is something else (a bug).

    Writes with an errno (ENOSPC, EDQUOT, EACCES, ...) keep their OSError: the CLI maps those itself."""
    if isinstance(exc, WriteFailed):
        return exc
    if isinstance(exc, OSError) and not exc.errno:
        detail = str(exc)  # numpy's "N requested and M written"
    elif isinstance(exc, RuntimeError) or type(exc).__name__ == "SafetensorError":
        text = str(exc)
        if not any(k in text for k in _WRITER_ERRORS):
            return None
        detail = next((line.strip() for line in text.splitlines() if line.strip()), text)[:200]
    else:
        return None
    where = path if path is not None else getattr(exc, "filename", None)
    return WriteFailed(f"the write failed part way ({detail})", path=where)


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        failure = write_failure(exc, path)
        if failure is None or failure is exc:
            raise
        raise failure from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path) -> None:
    """Give a finished file or folder the permissions a plain write would have (mkstemp makes 0600)."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it is renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with _mapped(path):
            yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _publish_mode(tmp)
        faults.point("io.file_rename", path=path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def replace_dir(staging: Path, final: Path) -> None:
    """Move a finished folder into place, replacing an older one only once the new one is complete.

    The old folder is renamed aside first (`.NAME.old-PID`), so at every moment `final` is either the
    old complete folder or the new complete one.
    """
    faults.point("io.dir_rename", path=final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place when complete.

    A crash leaves only a `.name.tmp-*` sibling, which never looks like a finished directory. With
    `overwrite`, an existing directory is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with _mapped(path):
            yield tmp
        for f in [tmp, *tmp.rglob("*")]:
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            _publish_mode(f)
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def claim_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> bool:
    """The output-folder policy of every command that writes a folder: a missing or empty folder is
    taken, a non-empty one only with overwrite (and then replaced whole, by `atomic_dir`), a file is
    refused. Returns whether `atomic_dir` must replace an existing folder. Nothing is written here."""
    from ettin.errors import EttinError

    out_dir = Path(out_dir)
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise EttinError("exists and is not a directory", path=out_dir, fix="choose another --out")
    if any(out_dir.iterdir()) and not overwrite:
        raise EttinError("exists and is not empty", path=out_dir, fix="choose another --out or pass --overwrite")
    return True
