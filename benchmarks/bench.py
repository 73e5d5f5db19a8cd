"""What `cbmctl demo bench` costs, world by world and stage by stage (make, embed, train every method × seed,
the plain CBM with a random CBL init, CMS), and what it concludes. The target of issue 18: `--preset cub-like
--worlds 3 --seeds 5` within 20 minutes on an idle 2-core machine.

    python benchmarks/bench.py [--preset cub-like] [--worlds 3] [--seeds 5] [--world-seed 1800]
                               [--extra "--train-per-class 24"] [--threads N] [--folder DIR] [--json out.json]

--folder keeps the bench folder (default: a temporary one); the bench resumes from it, so a folder whose
worlds are all finished reports at once — its per-world seconds are those measured when each world ran,
and the total wall time is then the report's, not the bench's.

--threads sets OMP_NUM_THREADS for the bench (default: inherited). On a machine shared with other jobs, torch's
two threads per process spin against them: on a 2-core machine at load average 7, `cbmctl demo bench --preset
default --worlds 2 --seeds 3` took 22 min with torch's default two threads and 84 s with OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cbmctl, machine, report

from cbmctl.demo.bench_render import STAGES, claims_markdown


def default_preset() -> str:
    from cbmctl.demo.presets import PRESETS
    return "cub-like" if "cub-like" in PRESETS else "default"


def markdown(result: dict, claims: bool = True) -> str:
    bench = result["bench"]
    lines = [f"`{result['command']}`: {result['seconds']:.0f} s wall in all ({result['seconds'] / 60:.1f} min), "
             f"{bench['worlds']} worlds × {len(bench['seeds'])} seeds of preset `{bench['preset']}`.\n",
             "| world | seed | test images | concepts | " + " | ".join(s.replace("_", " ") for s in STAGES)
             + " | world |", "|" + "---|" * (5 + len(STAGES))]
    for world in bench["per_world"]:
        seconds, cpu = world["seconds"], world["seconds"].get("cpu", {})
        concept_set = world.get("concept_set") or {}
        lines.append(f"| {world['index']} | {world['seed']} | {world.get('test_images')} | "
                     f"{concept_set.get('name')} ({concept_set.get('size')}) | "
                     + " | ".join(f"{seconds.get(s, 0):.1f} ({cpu.get(s, 0):.1f})" for s in STAGES)
                     + f" | {sum(seconds.get(s, 0) for s in STAGES):.1f} ({sum(cpu.get(s, 0) for s in STAGES):.1f}) |")
    lines.append("\nSeconds of wall time per stage, in brackets the process's CPU seconds (all its threads; on a "
                 "busy machine the better guide to an idle one). The rest of the wall time is starting Python and "
                 "torch, loading the demo CLIP, and the report (tables, bench.json, forest plot).\n")
    if claims:
        lines.append(claims_markdown(bench))
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=default_preset())
    for option, default in (("--worlds", 3), ("--seeds", 5), ("--world-seed", 1800)):
        parser.add_argument(option, type=int, default=default)
    parser.add_argument("--extra", default="", help="More `demo bench` options (world knobs, --epochs ...).")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the bench process.")
    parser.add_argument("--folder", type=Path, default=None, help="Keep (and resume from) this bench folder.")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    options = ["--preset", args.preset, "--worlds", args.worlds, "--seeds", args.seeds, "--world-seed",
               args.world_seed, *shlex.split(args.extra)]
    with tempfile.TemporaryDirectory() as scratch:
        out = (args.folder or Path(scratch) / "bench").resolve()
        env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else None
        _, _, seconds = cbmctl(["demo", "bench", *options, "--out", out, "-q"], Path(scratch), env)
        bench = json.loads((out / "bench.json").read_text())
    prefix = f"OMP_NUM_THREADS={args.threads} " if args.threads else ""
    result = {"benchmark": "bench", "command": prefix + "cbmctl demo bench " + " ".join(map(str, options)),
              "seconds": seconds, "bench": bench, "machine": machine()}
    return report(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
