"""Run every benchmark and write BENCHMARKS.md (machine, date, command, medians, ratios).

    python benchmarks/run_all.py [--quick] [--device auto] [--out BENCHMARKS.md]

--quick shrinks the workloads (CMS 10,000 images, ImageNet-size training on 1 %) for a fast check."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cms as cms_benchmark  # noqa: E402
import embed as embed_benchmark  # noqa: E402
import startup as startup_benchmark  # noqa: E402
import train as train_benchmark  # noqa: E402


def machine() -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


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

    startup = startup_benchmark.main([])
    sections.append(f"## CLI start-up (`cbmctl --help`)\n\nmedian {startup['median_seconds']} s over "
                    f"{startup['repeats']} runs (min {startup['min_seconds']} s); torch imported by the CLI: "
                    f"{startup['torch_imported_by_cli']}.\n")

    embed = embed_benchmark.main(["--images", "256" if args.quick else "512", *device])
    lines = ["| model | device | input px | decode + resize only (img/s) | embed (img/s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['device']} | {r['input_px']} | {r['decode_resize_img_s']} | {r['embed_img_s']} |"
              for r in embed["rows"]]
    sections.append(f"## embed (`python benchmarks/embed.py`)\n\n{embed['images']} generated 400×300 JPEGs, "
                    f"{embed['workers']} workers, batch {embed['batch_size']}, median of {embed['repeats']}.\n\n"
                    + "\n".join(lines) + "\n")

    train = train_benchmark.main(["--imagenet-fraction", "0.01" if args.quick else "0.02", *device])
    lines = ["| size | N × C × K | device | cbmctl epoch (s) | paper-code epoch (s, estimated) | ratio |",
             "|---|---|---|---|---|---|"]
    for r in train["rows"]:
        note = "" if r["trained_on"] == r["images"] else f" (measured on {r['trained_on']} images, scaled)"
        lines.append(f"| {r['size']} | {r['images']:,} × {r['concepts']:,} × {r['classes']:,} | {r['device']} | "
                     f"{r['epoch_seconds']}{note} | {r.get('paper_code_epoch_seconds', '-')} | {r.get('ratio', '-')} |")
    sections.append("## train (`python benchmarks/train.py`)\n\nSeconds per epoch (training steps + validation; "
                    "median of 3 epochs, ImageNet size 1), "
                    "Sparse-CBM loss, batch 128, 768-d embeddings. The paper code's approach runs the backbone "
                    "on the batch's images and on every concept text at each step; its cost is a random-weight "
                    "ViT-B-32 forward measured on a few images and texts and extrapolated to an epoch.\n\n"
                    + "\n".join(lines) + "\n")

    cms = cms_benchmark.main(["--images", "10000" if args.quick else "50000"])
    sections.append(f"## cms (`python benchmarks/cms.py`)\n\n{cms['images']:,} images × {cms['concepts']:,} "
                    f"concepts × {cms['classes']:,} classes, 768-d, medians of {cms['repeats']} runs: all seven variants in "
                    f"{cms['seconds_all_7_variants']} s, the cos variant alone in {cms['seconds_cos']} s. A direct "
                    f"Python loop of the same rule on a {cms['loop_subset'][0]} × {cms['loop_subset'][1]} × "
                    f"{cms['loop_subset'][2]} subset took {cms['loop_seconds']} s against "
                    f"{cms['matrix_seconds_on_subset']} s (×{cms['ratio_on_subset']:,}); extrapolated to the full "
                    f"size the loop needs ~{cms['loop_full_size_estimate_hours']} h (×{cms['ratio_full_size_estimate']:,}). "
                    f"Same predictions: {cms['loop_agrees_with_matrix']}.\n")
    Path(args.out).write_text("\n".join(sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
