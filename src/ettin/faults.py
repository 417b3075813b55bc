"""Named fault points: the places where tests and crash trials make ettin fail on purpose (a test hook).

Code marks a place with `faults.point(NAME, **context)`. Nothing is armed in normal use, and then a
point is one function call that checks an empty dict and returns. A test arms a point in-process:

    with faults.arm("checkpoint.write", "enospc", at=2):     # the 2nd checkpoint write hits a full disk
        train(...)

and a crash trial, or anyone, arms points of a child process from outside with ETTIN_FAULTS, read once
when this module is imported:

    ETTIN_FAULTS='checkpoint.export[tag=decay3]:2=kill,prepare.write_shard:4=enospc' ettin train ...

An entry is NAME[[KEY=PATTERN]][:N]=ACTION: the N-th hit (every hit without :N) of the point, counting
only hits whose context value KEY matches PATTERN (fnmatch, on str()). Actions: `kill` (SIGKILL this
process: no finally, no atexit, no flush, as `kill -9` at that instruction), `enospc` (raise
OSError(ENOSPC) naming the context's `path`), `interrupt` (raise KeyboardInterrupt), `sleep:SECONDS`.
In-process, an action may also be a callable: it gets the context as keyword arguments, and a point
that passes a value (`faults.point(NAME, value, ...)`) returns what the callable returned instead of
it, when that is not None (a corrupted value). Arming a name that is not in POINTS is an error, so a
typo cannot make a test pass without its fault.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ettin.errors import EttinError

ENV = "ETTIN_FAULTS"

POINTS = {
    "train.step": "start of a global step, before its batch is drawn (context: step)",
    "train.member_step": "one model's step, before its forward pass (context: member, step)",
    "train.member_loss": "one model's step done, update applied or skipped (context: member, step, loss; "
    "a callable may return another loss)",
    "checkpoint.write": "a full state's files written, its folder not yet renamed into place (context: tag, path)",
    "checkpoint.written": "a full state in place, its HF export not begun (context: tag, path)",
    "checkpoint.export": "an HF export's files written, its folder not yet renamed into place (context: tag, path)",
    "checkpoint.remove": "a tag's folder renamed out of sight, not yet deleted (context: tag, path)",
    "io.file_rename": "a file written through atomic_path and fsynced, not yet renamed onto its path (context: path)",
    "io.dir_rename": "a finished folder about to be renamed into place (context: path)",
    "prepare.write_shard": "a shard's three files written, its done-marker not yet (context: index, path)",
}


@dataclass(eq=False)
class _Fault:
    name: str
    action: Callable[..., Any]
    at: int | None = None  # only the at-th matching hit; None: every hit
    where: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    def matches(self, context: dict) -> bool:
        return all(k in context and fnmatch.fnmatchcase(str(context[k]), p) for k, p in self.where.items())


_armed: dict[str, list[_Fault]] = {}
_env_error: list[EttinError] = []  # a bad ETTIN_FAULTS, raised at the first point reached (one error line)


def point(name: str, value: Any = None, /, **context: Any) -> Any:
    """Mark a fault point. Returns `value`, or what an armed callable returned instead."""
    if not _armed:
        return value
    if _env_error:
        raise _env_error[0]
    for fault in _armed.get(name, ()):
        if not fault.matches(context):
            continue
        fault.hits += 1
        if fault.at is None or fault.hits == fault.at:
            out = fault.action(**context)
            if out is not None:
                value = out
    return value


def _kill(**_: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _enospc(path: Any = None, **_: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))


def _interrupt(**_: Any) -> None:
    raise KeyboardInterrupt


def named_action(text: str) -> Callable[..., Any]:
    """`kill`, `enospc`, `interrupt` or `sleep:SECONDS` as a callable."""
    if text == "kill":
        return _kill
    if text == "enospc":
        return _enospc
    if text == "interrupt":
        return _interrupt
    if text.startswith("sleep:"):
        try:
            seconds = float(text[len("sleep:") :])
        except ValueError:
            seconds = -1.0
        if seconds >= 0:
            return lambda **_: time.sleep(seconds)
    raise EttinError(f"unknown fault action '{text}'", field=ENV, fix="use kill, enospc, interrupt or sleep:SECONDS")


def _check_name(name: str) -> None:
    if name not in POINTS:
        raise EttinError(f"unknown fault point '{name}'", field=ENV, fix=f"one of: {', '.join(POINTS)}")


_ENTRY = re.compile(
    r"^(?P<name>[a-z_.]+)(?:\[(?P<key>\w+)=(?P<pattern>[^\]]*)\])?(?::(?P<at>\d+))?(?:=(?P<action>.+))?$"
)


def parse_entry(entry: str) -> tuple[str, int | None, dict[str, str], str | None]:
    """NAME[[KEY=PATTERN]][:N][=ACTION] -> (name, at, where, action text or None)."""
    m = _ENTRY.match(entry.strip())
    if not m or (m["at"] is not None and int(m["at"]) < 1):
        raise EttinError(f"'{entry}' is not NAME[[KEY=PATTERN]][:N]=ACTION (N from 1)", field=ENV)
    _check_name(m["name"])
    where = {m["key"]: m["pattern"]} if m["key"] else {}
    return m["name"], int(m["at"]) if m["at"] else None, where, m["action"]


def arm_now(name: str, action: str | Callable[..., Any], *, at: int | None = None, **where: str) -> _Fault:
    """Arm a point until `disarm_all` (crash-trial children arm once and die); tests use `arm`."""
    _check_name(name)
    fault = _Fault(name, named_action(action) if isinstance(action, str) else action, at, dict(where))
    _armed.setdefault(name, []).append(fault)
    return fault


@contextlib.contextmanager
def arm(name: str, action: str | Callable[..., Any], *, at: int | None = None, **where: str) -> Iterator[_Fault]:
    """Arm a point for the `with` block; the yielded fault counts its hits (`.hits`)."""
    fault = arm_now(name, action, at=at, **where)
    try:
        yield fault
    finally:
        faults = _armed.get(name, [])
        if fault in faults:
            faults.remove(fault)
        if not faults:
            _armed.pop(name, None)


def disarm_all() -> None:
    _armed.clear()


def arm_from_spec(spec: str) -> None:
    """Arm every entry of an ETTIN_FAULTS value (comma-separated)."""
    parsed = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, at, where, action = parse_entry(entry)
        if action is None:
            raise EttinError(f"'{entry}' names no action", field=ENV, fix="add =kill, =enospc, ... (see ettin.faults)")
        parsed.append((name, named_action(action), at, where))
    for name, action, at, where in parsed:  # all checked first: a bad entry arms nothing
        arm_now(name, action, at=at, **where)


if os.environ.get(ENV):
    try:
        arm_from_spec(os.environ[ENV])
    except EttinError as exc:
        _env_error.append(exc)
        _armed[ENV] = []  # makes point() look, and raise it
