"""Concept Matrix Search on 50,000 images × 5,000 concepts × 1,000 classes (all seven variants, chunked
matrix products), next to a direct Python-loop implementation of the cos rule on a subset.

    python benchmarks/cms.py [--images 50000 --concepts 5000 --classes 1000] [--loop-images 20]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, report


def loop_predict(features, concepts, classes):
    """The cos rule one image and one class at a time, as a reader of the formula would write it."""
    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    t = [[cosine(c, d) for d in concepts] for c in classes]
    predictions = []
    for image in features:
        v = [cosine(image, d) for d in concepts]
        predictions.append(max(range(len(classes)), key=lambda k: cosine(v, t[k])))
    return predictions


def markdown(result: dict) -> str:
    n, c, k = result["loop_subset"]
    return (f"{result['images']:,} images × {result['concepts']:,} concepts × {result['classes']:,} classes, "
            f"{result['dim']}-d, medians of {result['repeats']} runs: all seven variants in "
            f"{result['seconds_all_7_variants']} s, the cos variant alone in {result['seconds_cos']} s. A direct "
            f"Python loop of the same rule on a {n} × {c} × {k} subset took {result['loop_seconds']} s against "
            f"{result['matrix_seconds_on_subset']} s (×{result['ratio_on_subset']:,}); extrapolated to the full "
            f"size the loop needs ~{result['loop_full_size_estimate_hours']} h "
            f"(×{result['ratio_full_size_estimate']:,}). Same predictions: {result['loop_agrees_with_matrix']}.\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--concepts", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--loop-images", type=int, default=20)
    parser.add_argument("--loop-concepts", type=int, default=200)
    parser.add_argument("--loop-classes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="Median of this many runs of each timing.")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from cbmctl.cms import PAPER_VARIANTS, Variant, predict
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(args.images, args.dim, generator=generator)
    concepts = torch.randn(args.concepts, args.dim, generator=generator)
    classes = torch.randn(args.classes, args.dim, generator=generator)
    def timed(function):
        timings = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            value = function()
            timings.append(time.perf_counter() - started)
        return value, statistics.median(timings)

    all_variants, seconds_all = timed(lambda: predict(features, concepts, classes, PAPER_VARIANTS))
    _, seconds_cos = timed(lambda: predict(features, concepts, classes, (Variant(),)))
    # the loop gets a subset of everything (a full-size Python loop would take days); both implementations
    # solve that same subset, and the loop's full-size time is extrapolated from its operation count
    n, c, k = args.loop_images, args.loop_concepts, args.loop_classes
    sub_features, sub_concepts, sub_classes = features[:n], concepts[:c], classes[:k]
    started = time.perf_counter()
    looped = loop_predict(sub_features.tolist(), sub_concepts.tolist(), sub_classes.tolist())
    loop_seconds = time.perf_counter() - started
    matrix_subset, matrix_subset_seconds = timed(
        lambda: predict(sub_features, sub_concepts, sub_classes, (Variant(),))[Variant()])
    work = lambda n_, c_, k_: (n_ * c_ + k_ * c_) * args.dim + n_ * k_ * c_
    loop_full_estimate = loop_seconds * work(args.images, args.concepts, args.classes) / work(n, c, k)
    result = {"benchmark": "cms", "images": args.images, "concepts": args.concepts, "classes": args.classes,
              "dim": args.dim, "seconds_all_7_variants": round(seconds_all, 2), "seconds_cos": round(seconds_cos, 2),
              "loop_subset": [n, c, k], "loop_seconds": round(loop_seconds, 2),
              "matrix_seconds_on_subset": round(matrix_subset_seconds, 4),
              "ratio_on_subset": round(loop_seconds / max(matrix_subset_seconds, 1e-9)),
              "loop_full_size_estimate_hours": round(loop_full_estimate / 3600, 1),
              "ratio_full_size_estimate": round(loop_full_estimate / seconds_cos),
              "loop_agrees_with_matrix": looped == matrix_subset.tolist(), "variants": len(all_variants),
              "repeats": args.repeats,
              "machine": machine()}
    return report(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
