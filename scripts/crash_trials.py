"""Random crash trials (the entry point; the code is ettin.reliability.crash_trials, see docs/reliability.md).

.venv/bin/python scripts/crash_trials.py --trials 20
"""

import sys

from ettin.reliability.crash_trials import main

if __name__ == "__main__":
    sys.exit(main())
