"""Seconds per training epoch of `cbmctl train` on synthetic caches of real sizes, next to the cost of the
paper code's approach (a backbone forward of the batch's images and of all concept texts at every step).

    python benchmarks/train.py [--sizes cub,cifar100,imagenet] [--device auto] [--imagenet-fraction 0.02]

CPU runs of the ImageNet size train on a random fraction of the images (same C and K, so the same code
path) and extrapolate linearly in N. The paper-code cost is measured on a few forwards of a random-weight
ViT-B-32 (image batch and text batch) and extrapolated to a full epoch of steps."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {  # name: (train images, concepts, classes)
    "cub": (5994, 370, 200),
    "cifar100": (50000, 900, 100),
    "imagenet": (1281167, 4751, 1000),
}
DIM = 768  # ViT-L/14 embedding width
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, report  # noqa: E402


def synthetic_data(n, concepts, classes, dim, seed=0):
    from cbmctl.training import TrainingData
    generator = torch.Generator().manual_seed(seed)

    def unit(rows):
        x = torch.randn(rows, dim, generator=generator)
        return x / x.norm(dim=1, keepdim=True)

    val = max(classes, n // 10)
    labels = lambda m: torch.randint(classes, (m,), generator=generator)
    return TrainingData(features={"train": unit(n), "val": unit(val), "test": unit(val)},
                        labels={"train": labels(n), "val": labels(val), "test": labels(val)},
                        concept_vectors=unit(concepts), class_vectors=unit(classes), logit_scale=100.0,
                        concepts=[f"c{j}" for j in range(concepts)], classes=[f"k{k}" for k in range(classes)])


def epoch_seconds(data, device, batch_size, loss="gumbel") -> float:
    """One epoch (training steps + validation pass): the difference between a 2-epoch and a 1-epoch run,
    both after an untimed warm-up run (allocator and kernel selection would otherwise count once). The
    sparse head fitted after training is timed by benchmarks/sparse_head.py."""
    from cbmctl.backbones import resolve_device
    from cbmctl.spec import TrainConfig
    from cbmctl.training import member_configs
    from cbmctl.training.epochs import train_stack

    def run(epochs):
        started = time.perf_counter()
        config = TrainConfig(loss=loss, epochs=epochs, device=device, batch_size=batch_size, patience=99)
        train_stack(data, member_configs(config, [(loss, 0)]), resolve_device(device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    run(1)
    return run(2) - run(1)


def paper_step_seconds(batch_size, concepts, device, image_probe=16, text_probe=64) -> dict:
    """Forward time per image and per concept text of a random-weight ViT-B-32; a paper-code step embeds
    the batch's images and every concept text."""
    from cbmctl.backbones import load_backbone
    backbone = load_backbone("ViT-B-32", "none", device)
    size = backbone.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    pixels = torch.randn(image_probe, 3, size, size)
    texts = [f"a photo of concept number {i}" for i in range(text_probe)]
    backbone.encode_images(pixels[:2])
    backbone.encode_texts(texts[:2])
    started = time.perf_counter()
    backbone.encode_images(pixels)
    per_image = (time.perf_counter() - started) / image_probe
    started = time.perf_counter()
    backbone.encode_texts(texts)
    per_text = (time.perf_counter() - started) / text_probe
    return {"per_image": per_image, "per_text": per_text,
            "step": batch_size * per_image + concepts * per_text}


def markdown(result: dict) -> str:
    lines = ["| size | N × C × K | device | cbmctl epoch (s) | paper-code epoch (s, estimated) | ratio |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        note = "" if r["trained_on"] == r["images"] else f" (measured on {r['trained_on']:,} images, scaled)"
        lines.append(f"| {r['size']} | {r['images']:,} × {r['concepts']:,} × {r['classes']:,} | {r['device']} | "
                     f"{r['epoch_seconds']}{note} | {r.get('paper_code_epoch_seconds', '-')} | {r.get('ratio', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="cub,cifar100,imagenet")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--imagenet-fraction", type=float, default=None,
                        help="Share of ImageNet's images to train on (default: 1 on a GPU, 0.02 on CPU).")
    parser.add_argument("--skip-paper", action="store_true", help="Skip the ViT-B-32 paper-code estimate.")
    parser.add_argument("--repeats", type=int, default=3, help="Median of this many epochs (ImageNet size: 1).")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from cbmctl import resources
    from cbmctl.backbones import resolve_device
    device = str(resolve_device(args.device))
    rows = []
    budget = resources.PRECOMPUTE_BYTES
    for name in args.sizes.split(","):
        n, concepts, classes = SIZES[name]
        fraction = 1.0
        if name == "imagenet":
            fraction = args.imagenet_fraction or (1.0 if device.startswith("cuda") else 0.02)
        used = max(classes * 2, int(n * fraction))
        # keep the full-size decision between precomputed and per-batch concept scores
        resources.PRECOMPUTE_BYTES = int(budget * used / n)
        data = synthetic_data(used, concepts, classes, DIM)
        repeats = 1 if name == "imagenet" else args.repeats
        seconds = float(np.median([epoch_seconds(data, device, args.batch_size) for _ in range(repeats)])) * n / used
        resources.PRECOMPUTE_BYTES = budget
        row = {"size": name, "images": n, "concepts": concepts, "classes": classes, "device": device,
               "trained_on": used, "epoch_seconds": round(seconds, 3), "repeats": repeats}
        if not args.skip_paper:
            paper = paper_step_seconds(args.batch_size, concepts, device)
            steps = -(-n // args.batch_size)
            row["paper_code_epoch_seconds"] = round(paper["step"] * steps, 1)
            row["paper_code_step_seconds"] = round(paper["step"], 3)
            row["ratio"] = round(row["paper_code_epoch_seconds"] / seconds, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"benchmark": "train", "batch_size": args.batch_size, "dim": DIM, "rows": rows,
              "machine": machine()}
    return report(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
