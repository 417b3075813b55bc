"""One ettin process at a time on a run folder or a prepared-data folder: an OS file lock.

`FolderLock(folder).acquire()` takes an exclusive `flock` on `FOLDER/.ettin.lock` without waiting. A
second process (or a second open in this one) is refused with one line naming the PID that holds it.
The kernel drops the lock when its holder exits, however it exits (SIGKILL included), so a killed
process never leaves a lock that blocks: the next command takes it over and is told whose it was
(the holder writes its PID into the file and removes the file on a clean release; a lock file
that is there but not locked was left by a process that died holding it).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ettin.errors import EttinError

LOCK_FILE = ".ettin.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock (documented in docs/reliability.md)
    fcntl = None  # type: ignore[assignment]


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class FolderLock:
    """An exclusive lock on one folder, held from `acquire` to `release` (or to the process's end)."""

    def __init__(self, folder: str | os.PathLike, *, what: str = "folder"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self.fd: int | None = None
        self.took_over: int | None = None  # the PID of a dead holder whose lock this one took over

    def acquire(self) -> FolderLock:
        if fcntl is None or self.fd is not None:
            return self
        for _ in range(100):  # a holder may remove the file between our open and our flock: open again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                who = f"process {holder}" if holder else "another process (it has only just started)"
                raise EttinError(
                    f"this {self.what} is in use by {who}",
                    path=self.folder,
                    fix="wait for it to finish or stop it; two ettin commands must not write one folder at once",
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - another process removing and creating the file a hundred times
            raise EttinError(f"could not lock this {self.what}", path=self.folder, fix="run the command again")
        previous = _read_pid(fd)
        if previous is not None and previous != os.getpid():
            self.took_over = previous
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then drop the lock (a process waiting on the removed file opens again)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self.fd is not None
