"""`cbmctl embed` and `cbmctl models`."""
from __future__ import annotations

import click

from cbmctl.cli.common import backbone_options, dataset_options, echo_warning, print_json


@click.command()
@click.argument("data", required=False)
@click.option("--dataset", "dataset_option", default=None, help="Same as DATA: a path or a known name.")
@click.option("--cache", "cache_path", default=None, type=click.Path(dir_okay=False),
              help="HDF5 file to write (default: cache/<dataset>-<where>-<model>-<tag>.h5, or $CBMCTL_CACHE_DIR).")
@backbone_options
@dataset_options
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1),
              help="Images encoded at once (lower it when memory runs short).")
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
          val_seed, allow_outside_root, batch_size, workers, overwrite, templates, shard_size, list_models, as_json,
          quiet):
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
    from cbmctl.preflight import plan_cache

    # everything that can be checked without torch first: a mistake, or a rerun, answers in well under a second
    plan = plan_cache(spec, model=model, pretrained=pretrained, templates=list(templates) or None,
                      cache_path=cache_path, data_root=data_root, format=dataset_format, val_fraction=val_fraction,
                      val_seed=val_seed, overwrite=overwrite, allow_outside_root=bool(allow_outside_root))
    if plan.dataset is None:
        raise click.UsageError(f"{spec} is a cache; give the dataset it was made from to embed it again")
    say = None if as_json else (lambda line: click.echo(line, err=True))
    if say:
        say(plan.dataset.summary())
        for line in [f"note: {note}" for note in plan.notes] + [f"warning: {warning}" for warning in plan.warnings]:
            echo_warning(line)
    from cbmctl.cli.common import on_interrupt
    on_interrupt("rerun the same `cbmctl embed` command to continue from its last finished shard")
    if plan.state == "up-to-date":
        from cbmctl.cache import open_cache
        from cbmctl.embed import up_to_date_report
        report = up_to_date_report(open_cache(plan.cache))
    else:
        from cbmctl.backbones import load_backbone
        from cbmctl.embed import embed_dataset
        backbone = load_backbone(plan.model, plan.pretrained, device)
        report = embed_dataset(plan.dataset, backbone, plan.cache, batch_size=batch_size, workers=workers,
                               overwrite=overwrite, templates=plan.templates, progress=not quiet and not as_json,
                               shard_size=shard_size, log=say)
    if report.status == "shards-done":
        return
    if as_json:
        return print_json({"cache": str(report.cache), "status": report.status, "counts": report.counts,
                           "skipped": [{"split": s, "path": p, "reason": r} for s, p, r in report.skipped],
                           "embedded_now": report.embedded_now, "seconds": round(report.seconds, 3),
                           "images_per_second": round(report.images_per_second, 1), "warnings": plan.warnings})
    _render(report)


def _render(report):
    from cbmctl.cache import open_cache
    from cbmctl.cli.common import console
    from cbmctl.embed import report_lines
    out = console()
    lines = report_lines(report)
    if report.status != "up-to-date":
        attrs = open_cache(report.cache).attrs
        lines[0] += f"; {attrs['backbone_model']}/{attrs['backbone_pretrained']}, dim {attrs['embed_dim']}"
    for line in lines:
        out.print(line, markup=False, highlight=False)


def _print_models(as_json):
    from cbmctl.backbones import list_models
    from cbmctl.plugins import BACKBONES, failed_to_load
    models = list_models()
    failed = failed_to_load(BACKBONES)
    if failed:  # a model the user installed a plug-in for is missing from the list: say why
        echo_warning(f"warning: {failed}", foreign=True)
    if as_json:
        return print_json(models)
    for name, tags in models.items():
        click.echo(f"{name}: {', '.join(tags) if tags else '(no pretrained tags; --pretrained PATH or none)'}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print names and tags as JSON.")
def models(as_json):
    """List backbone names with their pretrained tags (open_clip zoo + the shipped demo CLIP)."""
    _print_models(as_json)
