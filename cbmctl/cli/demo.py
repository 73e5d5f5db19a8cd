"""`cbmctl demo make` and `cbmctl demo eval`: the generated world and its tiny CLIP."""
from __future__ import annotations

import click

from cbmctl.cli.common import print_json


@click.group()
def demo():
    """The embedded default: a generated world with ground-truth concepts, and its tiny CLIP."""


@demo.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, byte-identical files.")
@click.option("--images-per-class", default=40, show_default=True, type=click.IntRange(2),
              help="Images per species (half train, half test, as in CUB).")
def make(directory, seed, images_per_class):
    """Generate a demo world in DIRECTORY (CUB_200_2011 layout + attributes + cbmctl.yaml)."""
    from cbmctl.demo.world import make_world, species
    root = make_world(directory, seed=seed, images_per_class=images_per_class)
    click.echo(f"wrote {root}: {len(species())} species × {images_per_class} images (seed {seed}); "
               f"next: cbmctl embed {root}")


@demo.command(name="eval")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--cache", "cache_path", default=None, type=click.Path(dir_okay=False))
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def evaluate(directory, split, cache_path, device, as_json):
    """Zero-shot accuracy of the demo CLIP per attribute family and per species, a linear probe, and the
    best species accuracy the world allows, on DIRECTORY's split."""
    from cbmctl.backbones import DEMO_MODEL, load_backbone
    from cbmctl.cache import open_cache
    from cbmctl.datasets import load_dataset
    from cbmctl.demo.evaluate import evaluate_world
    from cbmctl.embed import default_cache_path, embed_dataset
    dataset = load_dataset(directory)
    backbone = load_backbone(DEMO_MODEL, None, device)
    cache = cache_path or default_cache_path(dataset, DEMO_MODEL, None)
    embed_dataset(dataset, backbone, cache, progress=not as_json)
    report = {"world": str(dataset.root), **evaluate_world(open_cache(cache), backbone, split)}
    if as_json:
        return print_json(report)
    from cbmctl.cli.common import console
    from rich.table import Table
    table = Table(title=f"demo CLIP on {dataset.root} ({split}, {report['images']} images)")
    for column in ("task", "accuracy", "chance"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for family, row in report["families"].items():
        table.add_row(f"zero-shot {family} ({row['values']} values)", f"{row['accuracy']:.3f}", f"{row['chance']:.3f}")
    table.add_row("zero-shot species (class names)", f"{report['zero_shot_class']['accuracy']:.3f}",
                  f"{report['zero_shot_class']['chance']:.3f}")
    table.add_row(f"linear probe species (L2 {report['linear_probe_class']['l2']:g})",
                  f"{report['linear_probe_class']['accuracy']:.3f}", f"{report['zero_shot_class']['chance']:.3f}")
    table.add_row("species ceiling (Bayes, true attributes)", f"{report['class_ceiling']['expected']:.3f}", "")
    console().print(table)
