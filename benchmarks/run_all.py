"""Run every benchmark and write BENCHMARKS.md (machine, date, command, medians, ratios, per-preset tables).

    python benchmarks/run_all.py [--quick] [--device auto] [--only bench,compare] [--claims-folder DIR]
                                 [--out BENCHMARKS.md]

--only reruns just the named sections and replaces them in place (each then names its own machine and date).

--quick shrinks the workloads (CMS 10,000 images, ImageNet-size training on 1 %) for a fast check."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench as bench_benchmark  # noqa: E402
import cms as cms_benchmark  # noqa: E402
import compare as compare_benchmark  # noqa: E402
import embed as embed_benchmark  # noqa: E402
import presets as presets_benchmark  # noqa: E402
import sparse_head as sparse_head_benchmark  # noqa: E402
import startup as startup_benchmark  # noqa: E402
import train as train_benchmark  # noqa: E402
from common import machine  # noqa: E402

from cbmctl.demo.bench_render import claims_markdown  # noqa: E402

TRAIN_NOTE = ("Seconds per epoch (training steps + validation; median of 3 epochs, ImageNet size 1), Sparse-CBM "
              "loss, batch 128, 768-d embeddings. The paper code's approach runs the backbone on the batch's images "
              "and on every concept text at each step; its cost is a random-weight ViT-B-32 forward measured on a "
              "few images and texts and extrapolated to an epoch.\n\n")
CLAIMS_NOTE = ("The claims' verdicts come from 5 worlds × 10 seeds (the same command as the README's claims block, "
               "`python docs/make_readme.py --only claims`); the timing above from 3 worlds × 5 seeds.\n\n")


def sections(args) -> dict:
    """Every section: its name -> (heading, a function that runs its benchmark and returns its markdown)."""
    device = ["--device", args.device]
    quick = args.quick

    def bench() -> str:
        timing = bench_benchmark.markdown(bench_benchmark.main(["--worlds", "2", "--seeds", "2"] if quick else []),
                                          claims=False)
        claims = bench_benchmark.main(["--worlds", "5", "--seeds", "10"]
                                      + (["--folder", args.claims_folder] if args.claims_folder else []))
        return timing + "\n" + CLAIMS_NOTE + claims_markdown(claims["bench"])
    return {
        "startup": ("CLI start-up and early answers (`python benchmarks/startup.py`)",
                    lambda: startup_benchmark.markdown(startup_benchmark.main(["--repeats", "3" if quick else "7"]))),
        "embed": ("embed (`python benchmarks/embed.py`)", lambda: embed_benchmark.markdown(
            embed_benchmark.main(["--images", "256" if quick else "512", *device]))),
        "train": ("train (`python benchmarks/train.py`)", lambda: TRAIN_NOTE + train_benchmark.markdown(
            train_benchmark.main(["--imagenet-fraction", "0.01" if quick else "0.02", *device]))),
        "sparse-head": ("sparse head at ImageNet size (`python benchmarks/sparse_head.py`)",
                        lambda: sparse_head_benchmark.markdown(sparse_head_benchmark.main(
                            ["--fraction", "0.002" if quick else "0.005", *device]
                            + (["--full"] if "cuda" in sparse_head_benchmark.machine() else [])))),
        "compare": ("a 10-seed comparison against one run (`python benchmarks/compare.py`)",
                    lambda: compare_benchmark.markdown(compare_benchmark.main(["--repeats", "1" if quick else "3"]))),
        "cms": ("cms (`python benchmarks/cms.py`)", lambda: cms_benchmark.markdown(
            cms_benchmark.main(["--images", "10000" if quick else "50000"]))),
        "presets": ("Does the CBL objective matter, and when? (`python benchmarks/presets.py`)",
                    lambda: presets_benchmark.markdown(presets_benchmark.main(["--seeds", "3" if quick else "10"]))),
        "bench": ("Worlds as a random factor: `cbmctl demo bench` (`python benchmarks/bench.py`)", bench),
    }


def replace_section(text: str, heading: str, body: str) -> str:
    """`text` with the section under `## heading` (up to the next `## `) replaced by `body`."""
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[:start] + f"## {heading}\n\n{body.rstrip()}\n" + (text[end:] if end >= 0 else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default=None, help="Comma-separated section names: rerun just those, in place.")
    parser.add_argument("--claims-folder", default=None, help="The 5 × 10 bench folder to keep and resume from.")
    parser.add_argument("--out", default=str(HERE.parent / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    every = sections(args)
    wanted = args.only.split(",") if args.only else list(every)
    unknown = sorted(set(wanted) - set(every))
    if unknown:
        raise SystemExit(f"no section {', '.join(unknown)}; the sections: {', '.join(every)}")
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = f"python benchmarks/run_all.py {' '.join(argv or sys.argv[1:])}"
    if args.only:
        text = Path(args.out).read_text(encoding="utf-8")
        for name in wanted:
            heading, run = every[name]
            text = replace_section(text, heading, f"Machine: {machine()}; {started}; `{command}`\n\n" + run())
    else:
        text = "\n".join([f"# Benchmarks\n\nMachine: {machine()}\nDate: {started}\nCommand: `{command}`\n"]
                          + [f"## {heading}\n\n{run()}" for heading, run in every.values()])
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
