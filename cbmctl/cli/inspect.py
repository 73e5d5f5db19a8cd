"""`cbmctl inspect`: browse a run's class-concept matrix and per-image activations in the terminal."""
from __future__ import annotations

from pathlib import Path

import click

from cbmctl.cli.common import Choice


@click.command()
@click.argument("source", required=False)
@click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where runs live: without SOURCE, its latest run is opened.")
@click.option("--split", default="test", show_default=True, type=Choice(["train", "val", "test"]),
              help="The split whose images the images and concept-units screens list.")
def inspect(source, runs_root, split):
    """Open the TUI on SOURCE: a run directory (default: runs/latest; a runs root means its latest) or a
    cache (.h5; shown as Concept Matrix Search).

    Screens: 1 class × concept matrix (a sparse head's all-zero concepts hidden, z shows them), 2 images
    (each concept's contribution to the predicted and the true class, the image's activations), 3 summary,
    4 concept units (faithfulness, use by the head, top images). ? lists every key, q quits."""
    from cbmctl.errors import CbmctlError
    from cbmctl.runs import META_FILE, resolve_run
    if source is None or not str(source).endswith((".h5", ".hdf5")):
        # found before torch and textual load (seconds): no run yet, or a folder that holds no model
        source = resolve_run(source, Path(runs_root))
        if source.is_dir() and not (source / META_FILE).is_file():
            raise CbmctlError(f"{source} holds no trained model ({META_FILE}); train or resume it first")
    from cbmctl.tui.app import InspectApp
    from cbmctl.tui.data import load
    InspectApp(load(source, Path(runs_root), split)).run()
