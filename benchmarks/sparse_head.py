"""The sparse final layer at ImageNet size (1,281,167 images × 4,751 concepts → 1,000 classes).

Every step of the elastic-net path is one full-batch pass over the design (the gradient, plus one forward per
step-size trial), so its cost is (passes) × (seconds per pass). This measures the seconds per pass at the full
C and K on `--fraction` of the images (scaled linearly to N), materialised on the device when it fits and
streamed chunk by chunk otherwise, and the peak memory of the streamed pass at two sizes (bounded: it does
not grow with N). With --full (meant for a GPU) it fits the whole path at full size and reports its time.

    python benchmarks/sparse_head.py [--device auto] [--fraction 0.01] [--full] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, report

N, C, K = 1_281_167, 4_751, 1_000


def synthetic_design(n: int, device, chunk: int, materialise: bool):
    """Standardised-looking activations with class structure: each class has a sparse prototype over the
    concepts; rows are the prototype plus unit noise, generated per chunk from a seed (so streaming needs no
    storage)."""
    from cbmctl.sparse import Design
    generator = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(K, C, generator=generator) < 0.01).float() * 2.0
    labels = torch.arange(n) % K

    def produce(start, stop):
        noise = torch.Generator().manual_seed(start)
        x = prototypes[labels[start:stop]] + torch.randn(stop - start, C, generator=noise)
        return x.to(device)[None]

    return Design(produce, labels.to(device), chunk, materialise)


def seconds_per_pass(design, repeats: int = 2) -> float:
    from cbmctl.sparse import _loss_and_gradient
    weight = torch.zeros(1, K, C, device=design.labels.device)
    bias = torch.zeros(1, K, device=design.labels.device)
    _loss_and_gradient(design, weight, bias)  # warm-up
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        _loss_and_gradient(design, weight, bias)
        if weight.is_cuda:
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    return min(timings)


def peak_memory_mb(n: int, device, chunk: int) -> float:
    """Peak memory of one streamed pass over n images (CUDA: the allocator's peak; CPU: the peak resident set
    of a fresh process that makes the design and runs one pass)."""
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        seconds_per_pass(synthetic_design(n, device, chunk, materialise=False), 1)
        return torch.cuda.max_memory_allocated() / 2**20
    import subprocess
    run = subprocess.run([sys.executable, __file__, "--peak-of", str(n), "--chunk", str(chunk)],
                         capture_output=True, text=True, check=True)
    return float(run.stdout.strip().splitlines()[-1])


def _peak_of(n: int, chunk: int) -> None:
    import resource
    seconds_per_pass(synthetic_design(n, torch.device("cpu"), chunk, materialise=False), 1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def markdown(result: dict) -> str:
    lines = [f"Design {N:,} × {C:,} → {K:,}, float32, device {result['device']}; one pass = the full-batch "
             "gradient.\n", "| what | value |", "|---|---|"]
    for label, key in (("seconds per pass, materialised (scaled to N)", "pass_materialised_seconds"),
                       ("seconds per pass, streamed (scaled to N)", "pass_streamed_seconds"),
                       ("peak memory of a process making one streamed pass over the smaller size (MB)",
                        "peak_small_mb"),
                       ("the same over twice as many images (MB)", "peak_large_mb"),
                       ("measured on images", "images"), ("full path: seconds", "full_seconds"),
                       ("full path: passes", "full_passes")):
        if key in result:
            lines.append(f"| {label} | {result[key]} |")
    lines.append("\nThe whole path takes (passes) × (seconds per pass); its number of passes depends on the data "
                 "(the demo world's paths take a few hundred to a few thousand) and is measured only with --full.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--full", action="store_true", help="Fit the whole path at full size (a GPU).")
    parser.add_argument("--json", default=None)
    parser.add_argument("--peak-of", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_of:
        return _peak_of(args.peak_of, args.chunk)
    from cbmctl.backbones import resolve_device
    device = resolve_device(args.device)
    n = max(K * 2, int(N * args.fraction))
    result = {"benchmark": "sparse_head", "device": str(device), "images": n, "machine": machine()}
    result["pass_materialised_seconds"] = round(seconds_per_pass(synthetic_design(n, device, args.chunk, True))
                                                * N / n, 2)
    result["pass_streamed_seconds"] = round(seconds_per_pass(synthetic_design(n, device, args.chunk, False))
                                            * N / n, 2)
    small = max(args.chunk * 2, n // 4)
    result["peak_small_mb"] = round(peak_memory_mb(small, device, args.chunk), 1)
    result["peak_large_mb"] = round(peak_memory_mb(2 * small, device, args.chunk), 1)
    if args.full:
        from cbmctl.sparse import SparseConfig, fit_path
        design = synthetic_design(N, device, args.chunk, materialise=True)
        started = time.perf_counter()
        path = fit_path(design, K, [5], SparseConfig())
        if device.type == "cuda":
            torch.cuda.synchronize()
        result["full_seconds"] = round(time.perf_counter() - started, 1)
        result["full_passes"] = sum(p["iterations"] for p in path.points[0])
    return report(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
