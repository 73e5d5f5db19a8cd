"""Run every benchmark and write BENCHMARKS.md (machine, date, command, medians, ratios, per-preset tables).

    python benchmarks/run_all.py [--quick] [--device auto] [--out BENCHMARKS.md]

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(HERE.parent / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    device = ["--device", args.device]
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [f"# Benchmarks\n\nMachine: {machine()}\nDate: {started}\n"
                f"Command: `python benchmarks/run_all.py {' '.join(argv or sys.argv[1:])}`\n"]

    startup = startup_benchmark.main(["--repeats", "3" if args.quick else "7"])
    sections.append("## CLI start-up and early answers (`python benchmarks/startup.py`)\n\n"
                    + startup_benchmark.markdown(startup))

    embed = embed_benchmark.main(["--images", "256" if args.quick else "512", *device])
    sections.append("## embed (`python benchmarks/embed.py`)\n\n" + embed_benchmark.markdown(embed))
    train = train_benchmark.main(["--imagenet-fraction", "0.01" if args.quick else "0.02", *device])
    sections.append("## train (`python benchmarks/train.py`)\n\nSeconds per epoch (training steps + validation; "
                    "median of 3 epochs, ImageNet size 1), Sparse-CBM loss, batch 128, 768-d embeddings. The paper "
                    "code's approach runs the backbone on the batch's images and on every concept text at each "
                    "step; its cost is a random-weight ViT-B-32 forward measured on a few images and texts and "
                    "extrapolated to an epoch.\n\n" + train_benchmark.markdown(train))
    sparse = sparse_head_benchmark.main(["--fraction", "0.002" if args.quick else "0.005", *device]
                                        + (["--full"] if "cuda" in sparse_head_benchmark.machine() else []))
    sections.append("## sparse head at ImageNet size (`python benchmarks/sparse_head.py`)\n\n"
                    + sparse_head_benchmark.markdown(sparse))
    compare = compare_benchmark.main(["--repeats", "1" if args.quick else "3"])
    sections.append("## a 10-seed comparison against one run (`python benchmarks/compare.py`)\n\n"
                    + compare_benchmark.markdown(compare))
    cms = cms_benchmark.main(["--images", "10000" if args.quick else "50000"])
    sections.append("## cms (`python benchmarks/cms.py`)\n\n" + cms_benchmark.markdown(cms))
    presets = presets_benchmark.main(["--seeds", "3" if args.quick else "10"])
    sections.append("## Does the CBL objective matter, and when? (`python benchmarks/presets.py`)\n\n"
                    + presets_benchmark.markdown(presets))
    bench = bench_benchmark.main(["--worlds", "2", "--seeds", "2"] if args.quick else [])
    sections.append("## Worlds as a random factor: `cbmctl demo bench` (`python benchmarks/bench.py`)\n\n"
                    + bench_benchmark.markdown(bench))
    Path(args.out).write_text("\n".join(sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
