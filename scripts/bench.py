#!/usr/bin/env python
"""fedbench-tiny: fl_ray vs the compute floor, bare Ray and Flower, as ratios from one run.

    python scripts/bench.py --silos 4 --rounds 5 --steps 8
    python scripts/bench.py --silos 64 --rounds 2 --systems floor,fl_ray
    python scripts/bench.py --flower-python /tmp/flwr-venv/bin/python   # adds the Flower peer

Same as ``fl-ray bench`` (fl_ray/cli_bench.py); see BENCHMARKS.md for recorded figures.
"""

import sys

from fl_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
