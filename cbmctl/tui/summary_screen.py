"""Summary screen: metrics, configuration, backbone and concept set of the run (or cache)."""
from __future__ import annotations

from rich.console import Group
from rich.pretty import Pretty
from rich.table import Table
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

PERCENT = ("top1", "top5", "mean_per_class")


def metrics_table(metrics: dict) -> Table:
    table = Table(title="metrics", title_justify="left")
    table.add_column("metric")
    for split in metrics:
        table.add_column(split, justify="right")
    keys = [k for k in next(iter(metrics.values()), {}) if k != "images"]
    for key in keys:
        cells = []
        for split in metrics:
            value = (metrics[split] or {}).get(key)
            if value is None:
                cells.append("-")
            elif key in PERCENT or key.startswith(("concept_precision", "nec")) and key != "nec":
                cells.append(f"{100 * value:.2f} %")
            else:
                cells.append(f"{value:.2f}")
        table.add_row(key, *cells)
    return table


class SummaryScreen(Screen):
    def __init__(self, data, **kwargs):
        super().__init__(**kwargs)
        self.data = data

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static(self.render_summary(), id="summary")
        yield Footer()

    def render_summary(self):
        summary = self.data.summary
        parts = [f"[b]{self.data.title}[/b]  ({self.data.source})"]
        if summary.get("mode"):
            parts.append(f"[yellow]{summary['mode']}[/]")
        if summary.get("note"):
            parts.append(f"[yellow]{summary['note']}[/]")
        metrics = {k: v for k, v in (summary.get("metrics") or {}).items() if v}
        if metrics:
            parts.append(metrics_table(metrics))
        for key, title in (("train_config", "configuration"), ("backbone", "backbone"),
                           ("concept_set", "concept set"), ("dataset", "dataset")):
            if summary.get(key):
                parts.append(f"\n[b]{title}[/b]")
                parts.append(Pretty(summary[key]))
        return Group(*parts)
