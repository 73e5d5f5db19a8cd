"""`cbmctl inspect`: browse a run's class-concept matrix and per-image activations in the terminal."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("source", required=False)
@click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
def inspect(source, runs_root, split):
    """Open the TUI on SOURCE: a run directory (default: runs/latest) or a cache (.h5; shown as CMS).
    Keys: 1/2/3 switch screens, ? help, q quit."""
    from cbmctl.tui.app import InspectApp
    from cbmctl.tui.data import load
    InspectApp(load(source, Path(runs_root), split)).run()
