"""`cbmctl report`: a run or a comparison as one self-contained HTML page (and its weights as CSV)."""
from __future__ import annotations

from pathlib import Path

import click

from cbmctl.cli.common import Choice


@click.command()
@click.argument("source", required=False)
@click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where runs live: without SOURCE, its latest run is reported.")
@click.option("--out", "-o", default=None, type=click.Path(dir_okay=False),
              help="The HTML file to write (default: report.html in the run directory).")
@click.option("--split", default="test", show_default=True, type=Choice(["train", "val", "test"]),
              help="The split whose images rank the concept units and are explained.")
@click.option("--images", "unit_images", default=8, show_default=True, type=click.IntRange(1, 50),
              help="Top images shown per concept unit.")
@click.option("--examples", default=3, show_default=True, type=click.IntRange(0, 50),
              help="Correctly and as many wrongly classified images explained.")
@click.option("--weights-csv", default=None, type=click.Path(dir_okay=False),
              help="Also write the head's class × concept weights here as CSV (one row per class, its bias last).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def report(source, runs_root, out, split, unit_images, examples, weights_csv, quiet):
    """Write one HTML file about SOURCE, a run or comparison directory (default: runs/latest): configuration
    and backbone, both heads' metrics, the comparison table with intervals and verdicts, the plots, the class
    × concept weights, each used concept unit's top images, and explanations of a few correct and wrong
    images. Images are embedded; the page fetches nothing, so it opens offline and can be mailed."""
    from cbmctl import runs
    from cbmctl.errors import CbmctlError
    from cbmctl.html_page import check_output
    from cbmctl.sanitize import safe_text
    run_dir = runs.resolve_run(source, Path(runs_root))  # before torch loads: a missing run answers at once
    if not (run_dir / runs.META_FILE).is_file():
        raise CbmctlError(f"{run_dir} holds no trained model ({runs.META_FILE}); train or resume it first")
    target = check_output(Path(out) if out else run_dir / runs.REPORT_FILE)
    if weights_csv:
        check_output(Path(weights_csv))
    say = None if quiet else (lambda line: click.echo(safe_text(line), err=True))
    from cbmctl.files import write_text_atomic
    from cbmctl.report import build_report, run_weights_csv
    if say:
        say(f"report: {run_dir}")
    page = build_report(run_dir, split, unit_images, examples, log=say)
    write_text_atomic(target, page)
    if weights_csv:
        write_text_atomic(Path(weights_csv), run_weights_csv(run_dir))
    if say:
        say(f"report: wrote {target} ({len(page.encode()) / 1e6:.1f} MB)"
            + (f" and {weights_csv}" if weights_csv else ""))
    click.echo(str(target))
