"""How well the sparse path's far end must be solved: the same designs under two tolerance floors.

Makes a cub-like world, trains `--compare gumbel,l1,contrastive,none --seeds 2` on it and keeps the eight
models' standardised activations (the designs the sparse head is fitted on), then fits the λ path of all
eight at the default floor (max(5 % of λα, 0.5 % of λ_max·α)) and at a tighter one, and reports the
seconds, the path points and each NEC budget's mean test top-1. One thread, so the two fits compare.

    OMP_NUM_THREADS=1 python benchmarks/sparse_tolerance.py [--work DIR] [--tight 1e-3] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cbmctl, machine, report

WORLD_SEED = 31337  # used by no other benchmark or doc


def captured_designs(world: Path, runs: Path) -> dict:
    """Train the comparison on `world` and return the designs its sparse phase receives (then stop)."""
    import cbmctl.sparse as sparse
    from cbmctl.cli import cli
    captured = {}

    def capture(train, num_classes, levels, config, val=None, test=None, **_):
        captured.update(train=train, val=val, test=test, k=num_classes, levels=levels)
        raise SystemExit(0)
    original, sparse.fit_path = sparse.fit_path, capture
    try:
        cli.main(["train", str(world), "--compare", "gumbel,l1,contrastive,none", "--seeds", "2", "--out", str(runs),
                  "-q"], prog_name="cbmctl", standalone_mode=False)
    except SystemExit:
        pass
    finally:
        sparse.fit_path = original
    if not captured:
        raise SystemExit("the comparison never reached its sparse phase")
    return captured


def fit(designs: dict, floor: float) -> dict:
    from cbmctl.sparse import SparseConfig, fit_path, top1
    started = time.perf_counter()
    path = fit_path(designs["train"], designs["k"], designs["levels"], SparseConfig(tolerance_floor=floor),
                    designs["val"], designs["test"])
    seconds = time.perf_counter() - started
    return {"floor": floor, "seconds": round(seconds, 1), "points": max(len(p) for p in path.points),
            "points_at_cap": sum(len(path.points_at_cap(m)) for m in range(len(path.points))),
            "nec_top1": {level: round(float(top1(designs["test"], w, b).mean()), 4)
                         for level, (w, b) in path.heads.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the world here (default: a temporary folder)")
    parser.add_argument("--tight", type=float, default=1e-3, help="the tighter floor (share of λ_max·α)")
    parser.add_argument("--json")
    args = parser.parse_args()
    from cbmctl.sparse import SparseConfig
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        world = work / "world"
        if not world.exists():
            cbmctl(["demo", "make", "--preset", "cub-like", "--seed", WORLD_SEED, world], work)
        cbmctl(["embed", world], work)
        designs = captured_designs(world, work / "runs")
        fits = [fit(designs, SparseConfig().tolerance_floor), fit(designs, args.tight)]
    levels = sorted(fits[0]["nec_top1"])
    lines = [f"Machine: {machine()}", "",
             "| floor (share of λ_max·α) | seconds | path points | at cap | "
             + " | ".join(f"NEC {level}" for level in levels) + " |",
             "|---|---|---|---|" + "---|" * len(levels)]
    lines += [f"| {f['floor']:g} | {f['seconds']} | {f['points']} | {f['points_at_cap']} | "
              + " | ".join(f"{100 * f['nec_top1'][level]:.1f}" for level in levels) + " |" for f in fits]
    report({"machine": machine(), "world_seed": WORLD_SEED, "fits": fits}, "\n".join(lines), args.json)


if __name__ == "__main__":
    main()
