"""The data-path benchmark; it lives in the package (ettin.bench.data_path) so `ettin bench data` works
from an installed wheel. This file keeps the old command working:

    .venv/bin/python bench/bench_data.py [--quick] [--json OUT] [--only mds --mds FOLDER]
"""

from ettin.bench.data_path import main

if __name__ == "__main__":
    main()
