"""Wall time of `cbmctl --help` (the CLI must not import torch or open_clip to print its help).

    python benchmarks/startup.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cbmctl", "--help"], check=True, capture_output=True)
        timings.append(time.perf_counter() - started)
    loaded = subprocess.run([sys.executable, "-c", "import sys, cbmctl.cli; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    result = {"benchmark": "startup", "median_seconds": round(statistics.median(timings), 3),
              "min_seconds": round(min(timings), 3), "repeats": args.repeats, "torch_imported_by_cli": loaded == "True"}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
