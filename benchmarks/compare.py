"""What a comparison costs against one run: `cbmctl train W --compare all --seeds 10` against
`cbmctl train W --loss gumbel` on a default-size demo world (embedded once beforehand, so both read the same
cache). Every CBM of a comparison is trained in one stacked tensor program, the baselines once. The target
of issue 13 is at most 3x.

    python benchmarks/compare.py [--seeds 10] [--repeats 3] [--world-seed 4242] [--json out.json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cbmctl, machine, report


def markdown(result: dict) -> str:
    return ("| command | median wall time (s) | runs |\n|---|---|---|\n"
            f"| `cbmctl train W --loss gumbel` | {result['single_seconds']} | {result['repeats']} |\n"
            f"| `cbmctl train W --compare all --seeds {result['seeds']}` | {result['compare_seconds']} | "
            f"{result['repeats']} |\n\n"
            f"Ratio {result['ratio']}x for {result['models']} CBMs (5 objectives × {result['seeds']} seeds) and the "
            "two baselines, on a default demo world (`cbmctl demo make W --seed "
            f"{result['world_seed']}`, 540 + 60 train/val and 600 test images, 33 concepts).\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option, default in (("--seeds", 10), ("--repeats", 3), ("--world-seed", 4242)):
        parser.add_argument(option, type=int, default=default)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cbmctl(["demo", "make", "W", "--seed", args.world_seed], work)
        cbmctl(["embed", "W", "--quiet"], work)
        single, compare = [], []
        for _ in range(args.repeats):
            single.append(cbmctl(["train", "W", "--loss", "gumbel", "-q", "--out", "runs"], work)[2])
            compare.append(cbmctl(["train", "W", "--compare", "all", "--seeds", args.seeds, "-q", "--out", "runs"],
                                  work)[2])
    result = {"benchmark": "compare", "seeds": args.seeds, "repeats": args.repeats, "world_seed": args.world_seed,
              "models": 5 * args.seeds, "single_seconds": round(statistics.median(single), 2),
              "compare_seconds": round(statistics.median(compare), 2), "machine": machine()}
    result["ratio"] = round(result["compare_seconds"] / result["single_seconds"], 2)
    return report(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
