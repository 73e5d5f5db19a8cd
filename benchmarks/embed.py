"""Images/s of `cbmctl embed` for a tiny model and a random-weight ViT-B-32, next to the rate of JPEG
decode + resize alone (the data-loading bound), on the same generated JPEGs.

    python benchmarks/embed.py [--images 512] [--workers N] [--device auto] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine, report  # noqa: E402


def make_jpegs(root: Path, count: int, classes: int = 8) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        # photo-sized, smooth content so JPEG sizes are realistic (~20-40 kB)
        base = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((400, 300), Image.Resampling.BICUBIC)
        image.save(folder / f"{i:05d}.jpg", quality=90)
    for k in range(classes):
        (root / "test" / f"c{k}").mkdir(parents=True, exist_ok=True)
        shutil.copy(next((root / "train" / f"c{k}").iterdir()), root / "test" / f"c{k}" / "t.jpg")
    return root


def decode_rate(dataset, preprocess, workers: int, batch_size: int) -> float:
    import torch

    from cbmctl.images import load_rgb

    class Decode(torch.utils.data.Dataset):
        def __init__(self, records):
            self.records = records

        def __len__(self):
            return len(self.records)

        def __getitem__(self, i):
            return preprocess(load_rgb(dataset.open_image, self.records[i].path))

    records = [r for split in dataset.splits.values() for r in split]
    loader = torch.utils.data.DataLoader(Decode(records), batch_size=batch_size, num_workers=workers)
    started = time.perf_counter()
    for _ in loader:
        pass
    return len(records) / (time.perf_counter() - started)


def embed_rate(dataset, backbone, workers: int, batch_size: int, scratch: Path) -> float:
    from cbmctl.embed import embed_dataset
    cache = scratch / f"bench-{time.time_ns()}.h5"
    report = embed_dataset(dataset, backbone, cache, batch_size=batch_size, workers=workers, progress=False)
    cache.unlink()
    return report.embedded_now / report.seconds


def markdown(result: dict) -> str:
    lines = [f"{result['images']} generated 400×300 JPEGs, {result['workers']} workers, batch "
             f"{result['batch_size']}, median of {result['repeats']}.", "",
             "| model | device | input px | decode + resize only (img/s) | embed (img/s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['device']} | {r['input_px']} | {r['decode_resize_img_s']} | {r['embed_img_s']} |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)


    from cbmctl.backbones import load_backbone
    from cbmctl.datasets import load_dataset
    scratch = Path(tempfile.mkdtemp(prefix="cbmctl-bench-"))
    try:
        dataset = load_dataset(make_jpegs(scratch / "jpegs", args.images))
        rows = []
        for label, model, pretrained in (("tiny (test config)", str(ROOT / "examples/configs/tiny-clip.json"), "none"),
                                         ("ViT-B-32, random weights", "ViT-B-32", "none")):
            backbone = load_backbone(model, pretrained, args.device)
            decode = [decode_rate(dataset, backbone.preprocess, args.workers, args.batch_size)
                      for _ in range(args.repeats)]
            embed = [embed_rate(dataset, backbone, args.workers, args.batch_size, scratch)
                     for _ in range(args.repeats)]
            rows.append({"model": label, "device": str(backbone.device),
                         "input_px": backbone.preprocess_cfg["size"],
                         "decode_resize_img_s": round(float(np.median(decode)), 1),
                         "embed_img_s": round(float(np.median(embed)), 1)})
        result = {"benchmark": "embed", "images": sum(len(s) for s in dataset.splits.values()),
                  "workers": args.workers, "batch_size": args.batch_size, "repeats": args.repeats,
                  "machine": machine(), "rows": rows}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
