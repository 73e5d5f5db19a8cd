"""`cbmctl quickstart`: the whole pipeline on the generated demo world, offline, in a few minutes."""
from __future__ import annotations

from pathlib import Path

import click

from cbmctl.cli.common import echo_warning, print_json


@click.command()
@click.argument("directory", required=False, default=".", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print where everything is and the numbers as JSON.")
def quickstart(directory, as_json):
    """Make the demo world (if missing), embed it with the shipped tiny CLIP, train a Sparse-CBM, run
    Concept Matrix Search and explain one test image; everything goes under DIRECTORY (data/demo, cache/,
    runs/). A second run reuses what exists."""
    from cbmctl.cli.common import on_interrupt
    from cbmctl.quickstart import run_quickstart
    from cbmctl.sanitize import safe_text
    on_interrupt(f"rerun `cbmctl quickstart {safe_text(directory)}` to continue: it reuses every finished stage")
    say = (lambda line: None) if as_json else echo_warning  # the tour's lines, and the warnings among them
    result = run_quickstart(Path(directory), say=say, progress=not as_json)
    if as_json:
        return print_json(result)
    root = Path(directory)
    runs = root / "runs"
    click.echo(f"""
Done. Everything is under {root.resolve()}:
  world   {result['world']}   (images, attributes, cbmctl.yaml)
  cache   {result['cache']}
  run     {result['run']}   (config.yaml, metrics.json, model.safetensors, curves.png, sparsity.png, activations.png, train.log)

Next, try:
  cbmctl inspect {runs / 'latest'}
  cbmctl explain {result['image']} --runs-root {runs}
  cbmctl explain --unit all --runs-root {runs}
  cbmctl report {runs / 'latest'}
  cbmctl train {result['world']} --cache {result['cache']} --compare all --seeds 0,1,2 --out {runs}   # 15 models: minutes
  cbmctl cms {result['cache']}
""")
