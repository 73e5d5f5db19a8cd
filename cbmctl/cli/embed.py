"""`cbmctl embed` and `cbmctl models`."""
from __future__ import annotations

import click

from cbmctl.cli.common import backbone_options, dataset_options, print_json


@click.command()
@click.argument("data", required=False)
@click.option("--dataset", "dataset_option", default=None, help="Same as DATA: a path or a known name.")
@click.option("--cache", "cache_path", default=None, type=click.Path(dir_okay=False),
              help="HDF5 file to write (default: cache/<dataset>-<where>-<model>-<tag>.h5, or $CBMCTL_CACHE_DIR).")
@backbone_options
@dataset_options
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=None, type=click.IntRange(0), help="Image-decoding processes (default: cores, ≤8).")
@click.option("--overwrite", is_flag=True, help="Replace a cache made with another backbone or dataset version.")
@click.option("--template", "templates", multiple=True,
              help="Class prompt template(s), '{}' is the class name. Default: 'a photo of a {}.'")
@click.option("--shard-size", type=click.IntRange(1), default=None, hidden=True,
              help="Images per journal shard (resume granularity); default 1024.")
@click.option("--list-models", is_flag=True, help="List open_clip names and tags, then exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def embed(data, dataset_option, cache_path, model, pretrained, device, dataset_format, data_root, val_fraction,
          val_seed, batch_size, workers, overwrite, templates, shard_size, list_models, as_json, quiet):
    """Embed DATA's images (every split) and class names into an HDF5 cache.

    DATA is a dataset folder (CUB_200_2011, CIFAR batches, ImageFolder, Places365), a manifest
    (.csv/.jsonl), or a known name (cifar10, cifar100, cub, imagenet, places365) under --data-root.
    Rerunning is a no-op; an interrupted run continues where it stopped. Under torchrun each rank
    embeds its share and rank 0 writes the cache."""
    if list_models:
        return _print_models(as_json)
    spec = data or dataset_option
    if not spec:
        raise click.UsageError("give DATA (a dataset folder, manifest or known name)")
    from cbmctl.backbones import DEFAULT_MODEL, load_backbone
    from cbmctl.datasets import load_config, load_dataset, resolve_dataset_path
    from cbmctl.datasets.config import backbone_choice
    from cbmctl.embed import default_cache_path, embed_dataset

    path = resolve_dataset_path(spec, data_root)
    config = load_config(path if path.is_dir() else path.parent)
    dataset = load_dataset(path, format=dataset_format, val_fraction=val_fraction, val_seed=val_seed, config=config)
    model, pretrained = backbone_choice(model, pretrained, config, DEFAULT_MODEL)
    templates = list(templates) or config.templates
    cache = cache_path or default_cache_path(dataset, model, pretrained)
    if not as_json:
        click.echo(dataset.summary(), err=True)
        for note in dataset.notes:
            click.echo(f"note: {note}", err=True)
    backbone = load_backbone(model, pretrained, device)
    report = embed_dataset(dataset, backbone, cache, batch_size=batch_size,
                           workers=workers, overwrite=overwrite,
                           templates=templates, progress=not quiet and not as_json, shard_size=shard_size)
    if report.status == "shards-done":
        return
    if as_json:
        return print_json({"cache": str(report.cache), "status": report.status, "counts": report.counts,
                           "skipped": [{"split": s, "path": p, "reason": r} for s, p, r in report.skipped],
                           "embedded_now": report.embedded_now, "seconds": round(report.seconds, 3),
                           "images_per_second": round(report.images_per_second, 1)})
    _render(report, backbone)


def _render(report, backbone):
    from cbmctl.cli.common import console
    out = console()
    counts = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    if report.status == "up-to-date":
        out.print(f"[green]up to date[/] {report.cache} ({counts}); --overwrite to redo")
        return
    out.print(f"[green]wrote[/] {report.cache}  ({counts}; {backbone.name}/{backbone.pretrained}, "
                  f"dim {backbone.embed_dim})")
    out.print(f"{report.embedded_now} images in {report.seconds:.1f} s ({report.images_per_second:.1f} img/s)")
    if report.skipped:
        out.print(f"[yellow]skipped {len(report.skipped)} image(s)[/] (recorded in the cache):")
        for split, path, reason in report.skipped[:10]:
            out.print(f"  {split}: {path}: {reason}", markup=False)
        if len(report.skipped) > 10:
            out.print(f"  ... and {len(report.skipped) - 10} more")


def _print_models(as_json):
    from cbmctl.backbones import list_models
    models = list_models()
    if as_json:
        return print_json(models)
    for name, tags in models.items():
        click.echo(f"{name}: {', '.join(tags) if tags else '(no pretrained tags; --pretrained PATH or none)'}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json):
    """List backbone names with their pretrained tags (open_clip zoo + the shipped demo CLIP)."""
    _print_models(as_json)
