"""How idle OpenMP threads wait, chosen before torch loads (OpenMP reads it once, at start).

Spinning (OpenMP's default) answers fastest on an idle machine, but on a CPU shared with other
processes a spinning thread steals the core its partner needs: two-thread steps measured here took
5-10x longer, and erratically (0.5 s became 2.5-16 s), for ettin and transformers alike. Sleeping
(PASSIVE) is steady there but costs a wake-up per parallel region, which doubles the time of
small-op work such as token-by-token generation on an idle machine. So: the user's choice if they
made one, else PASSIVE when the machine is already busy, else OpenMP's default.
"""

from __future__ import annotations

import os
import sys


def choose_wait_policy() -> str:
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"]
    if "torch" in sys.modules:
        return "default (torch already loaded)"
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return "PASSIVE (machine busy at start)"
    return "default"
