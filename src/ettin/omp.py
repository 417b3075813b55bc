"""How idle OpenMP threads wait, chosen before torch loads (OpenMP reads it once, at start).

Spinning (OpenMP's default) answers fastest on an idle machine, but on a CPU shared with other
processes a spinning thread steals the core its partner needs: two-thread steps measured here took
5-10x longer, and erratically (0.5 s became 2.5-16 s), for ettin and transformers alike. Sleeping
(PASSIVE) is steady there but costs a wake-up per parallel region, which doubles the time of
small-op work such as token-by-token generation on an idle machine. So, in this order: the `--omp-wait`
flag of the `ettin` command, else the user's `OMP_WAIT_POLICY`, else PASSIVE when the machine is already
busy at start, else OpenMP's default. The choice is said on a terminal and recorded in a run's metadata.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

CHOICES = ("auto", "passive", "active")


@dataclass(frozen=True)
class WaitPolicy:
    policy: str  # what OMP_WAIT_POLICY is ("PASSIVE", "ACTIVE") or "default" (unset)
    reason: str

    def __str__(self) -> str:
        return f"{self.policy} ({self.reason})"


_chosen: WaitPolicy | None = None


def choose_wait_policy(flag: str = "auto") -> WaitPolicy:
    """Set OMP_WAIT_POLICY for this process and its children, and remember why."""
    global _chosen
    flag = flag.lower()
    if flag not in CHOICES:
        raise ValueError(f"--omp-wait must be one of {', '.join(CHOICES)}, not {flag!r}")
    if "torch" in sys.modules:
        choice = WaitPolicy(
            os.environ.get("OMP_WAIT_POLICY", "default"), "torch was already loaded: too late to choose"
        )
    elif flag != "auto":
        os.environ["OMP_WAIT_POLICY"] = flag.upper()
        choice = WaitPolicy(flag.upper(), "--omp-wait")
    elif "OMP_WAIT_POLICY" in os.environ:
        choice = WaitPolicy(os.environ["OMP_WAIT_POLICY"], "OMP_WAIT_POLICY set by the user")
    elif os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        choice = WaitPolicy("PASSIVE", "the machine was busy at start")
    else:
        choice = WaitPolicy("default", "the machine was idle at start")
    _chosen = choice
    return choice


def current() -> WaitPolicy:
    """The choice made for this process (made now, automatically, if nothing chose yet)."""
    return _chosen if _chosen is not None else choose_wait_policy()
