"""What a comparison costs against one run: `cbmctl train W --compare all --seeds 10` against
`cbmctl train W --loss gumbel` on a default-size demo world (embedded once beforehand, so both read the same
cache), with one torch thread (OMP_NUM_THREADS=1) and with the default. The two commands run in turn and the
ratio is taken pair by pair (its median reported), so a machine whose speed drifts moves both sides of a
ratio alike. Every CBM of a comparison is trained in one stacked tensor program, the baselines once; each
run's train.log says how long its sparse heads took, which is reported beside the wall times. Issue 21's
target is at most 2x with both thread settings.

    python benchmarks/compare.py [--seeds 10] [--repeats 3] [--world-seed 4242] [--json out.json]
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cbmctl, machine, report

THREAD_SETTINGS = {"1 thread": {"OMP_NUM_THREADS": "1"}, "default threads": {}}
TARGET = 2.0  # issue 21: a 10-seed comparison at most this many times one run, with every thread setting


def markdown(result: dict) -> str:
    lines = ["| threads | `--loss gumbel` wall (s) | its sparse head (s) | "
             f"`--compare all --seeds {result['seeds']}` wall (s) | its sparse heads (s) | ratio (median of pairs) |",
             "|---|---|---|---|---|---|"]
    for setting, row in result["settings"].items():
        lines.append(f"| {setting} | {row['single_seconds']} | {row['single_sparse_seconds']} | "
                     f"{row['compare_seconds']} | {row['compare_sparse_seconds']} | {row['ratio']}x |")
    ratios = {setting: row["ratio"] for setting, row in result["settings"].items()}
    met = all(ratio <= TARGET for ratio in ratios.values())
    lines += ["", f"Target (issue 21): at most {TARGET:g}x with every thread setting — "
              + ("met" if met else "not met") + " (" + ", ".join(f"{r}x with {s}" for s, r in ratios.items()) + ")."]
    return ("\n".join(lines) + "\n\n"
            f"Medians of {result['repeats']} pairs; {result['models']} CBMs (5 objectives × {result['seeds']} seeds) "
            "and the two baselines against one CBM, on a default demo world (`cbmctl demo make W --seed "
            f"{result['world_seed']}`, 540 + 60 train/val and 600 test images, 33 concepts).\n")


def _sparse_seconds(work: Path) -> float:
    """The newest run's sparse-head time, from its train.log."""
    log = (work / "runs" / "latest" / "train.log").read_text(encoding="utf-8")
    return float(re.findall(r"fitted in ([0-9.]+) s", log)[-1])


def median(values) -> float:
    return round(statistics.median(values), 2)


def _setting(work: Path, seeds: int, repeats: int, env: dict) -> dict:
    single, compare, single_sparse, compare_sparse = [], [], [], []
    for _ in range(repeats):
        single.append(cbmctl(["train", "W", "--loss", "gumbel", "-q", "--out", "runs"], work, env)[2])
        single_sparse.append(_sparse_seconds(work))
        compare.append(cbmctl(["train", "W", "--compare", "all", "--seeds", seeds, "-q", "--out", "runs"],
                              work, env)[2])
        compare_sparse.append(_sparse_seconds(work))
    return {"single_seconds": median(single), "compare_seconds": median(compare),
            "single_sparse_seconds": median(single_sparse), "compare_sparse_seconds": median(compare_sparse),
            "ratio": median([c / s for c, s in zip(compare, single)])}


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
        settings = {name: _setting(work, args.seeds, args.repeats, env) for name, env in THREAD_SETTINGS.items()}
    result = {"benchmark": "compare", "seeds": args.seeds, "repeats": args.repeats, "world_seed": args.world_seed,
              "models": 5 * args.seeds, "settings": settings, "machine": machine()}
    return report(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
