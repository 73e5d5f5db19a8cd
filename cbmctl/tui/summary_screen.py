"""Summary screen: the run's results (the table `cbmctl train` printed), both heads' accuracy, accuracy
along the NEC budget, the run's head on each split, training, configuration, backbone, concept set and
dataset — as tables of plain values. Everything here is read from files that may have been damaged or
sent by someone else, so every value is formatted defensively and shown as text, never as markup."""
from __future__ import annotations

import math
from numbers import Real

from rich import box
from rich.columns import Columns
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from cbmctl.tui.text import plain

BOX = box.SIMPLE_HEAD  # no vertical rules: narrower, and easier to read
# metric key -> (label, shown as a percentage?)
METRICS = {
    "top1": ("top-1", True), "top5": ("top-5", True), "mean_per_class": ("mean per class", True),
    "ece": ("ECE (15 bins)", False), "nll": ("NLL", False), "nec": ("NEC (weights per class)", False),
    "dense_top1": ("dense-head top-1", True), "nec5_top1": ("top-1 at NEC 5", True), "anec": ("ANEC", True),
    "l0_mean": ("active concepts (L0)", False), "entropy_mean": ("entropy of softmax(a)", False),
    "top5_mass_mean": ("top-5 mass of softmax(a)", False), "hoyer_mean": ("Hoyer sparsity of a", False),
    "coverage90_mean": ("coverage@90", False), "images": ("images", False),
}
HEAD_COLUMNS = ("top1", "top5", "mean_per_class", "ece", "nll")
HEAD_HEADERS = {"top1": "top-1", "top5": "top-5", "mean_per_class": "per class", "ece": "ECE", "nll": "NLL"}
ELSEWHERE = ("dense_top1", "nec5_top1", "anec")  # test-only summaries the other tables show
TRAINING = (("best_epoch", "best epoch"), ("epochs_run", "epochs run"), ("ce_at_best", "cross-entropy at best"),
            ("cbl_change", "CBL change ‖W − I‖/‖I‖"))
SECTIONS = (("backbone", "backbone", "backbone_"), ("concept_set", "concept set", ""),
            ("dataset", "dataset", "dataset_"))
CONFIG_ROWS = 8


def metric_label(key: str) -> tuple[str, bool]:
    if key in METRICS:
        return METRICS[key]
    if "precision@" in key:  # concept_precision@5, explanation_precision@5
        return key.replace("_", " "), True
    return key.replace("_", " "), False


def number(value, percent: bool = False) -> Text:
    """A metric value: a percentage with two decimals, an integer, or four significant digits; anything
    that is not a finite number is shown as what it is (escaped), never raises."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return Text("–" if value is None else "?", style="dim") if not isinstance(value, str) else plain(value)
    if not math.isfinite(value):
        return Text(str(value))
    if percent:
        return Text(f"{100 * value:.2f} %")
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e6):  # NEC 5.0, 60 images
        return Text(str(int(value)))
    return Text(f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}" if abs(value) < 1000 else f"{value:.1f}")


def value_text(value) -> Text:
    """A configuration or record value in plain words: yes/no, numbers, comma-separated lists."""
    if value is None:
        return Text("–", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, Real):
        return Text(f"{value:g}" if isinstance(value, float) else str(value))  # 1e-05, not 0.0000
    if isinstance(value, (list, tuple)):
        return Text(", ").join(value_text(v) for v in value) if value else Text("none", style="dim")
    if isinstance(value, dict):
        return Text("; ").join(Text.assemble(plain(k), ": ", value_text(v)) for k, v in value.items())
    return plain(value)


def key_value_table(title: str | None, record: dict, prefix: str = "") -> Table:
    table = Table(title=Text(title, style="bold") if title else None, title_justify="left", show_header=False,
                  box=None, padding=(0, 1))
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in record.items():
        key = str(key)
        table.add_row(plain(key.removeprefix(prefix).replace("_", " ")), value_text(value))
    return table


def record_columns(title: str, record: dict, rows: int = CONFIG_ROWS) -> Group:
    """A long record under its title as several tables of `rows` entries, side by side as far as the
    terminal's width allows (rich.columns.Columns)."""
    items = list(record.items())
    return Group(Text(title, style="bold"), Columns([key_value_table(None, dict(items[start:start + rows]))
                                                     for start in range(0, len(items), rows)], padding=(0, 3)))


def _section(record, key: str) -> dict:
    value = record.get(key) if isinstance(record, dict) else None
    return value if isinstance(value, dict) else {}


def heads_table(metrics: dict, head: str) -> Table | None:
    """Both heads on validation and test: the run keeps one (marked *), the other is measured beside it."""
    table = Table(title=Text("both heads", style="bold"), title_justify="left", caption="* the head this run keeps",
                  caption_justify="left", box=BOX, show_edge=False)
    table.add_column("head", no_wrap=True)
    table.add_column("split")
    for key in HEAD_COLUMNS:
        table.add_column(HEAD_HEADERS[key], justify="right")
    sparse = _section(metrics, "sparse")
    for kind, record in (("dense", _section(metrics, "dense")), ("sparse", sparse)):
        name = "dense" if kind == "dense" else f"sparse NEC {number(sparse.get('nec'), False).plain}"
        for split in ("val", "test"):
            values = _section(record, split)
            if values:
                table.add_row(name + (" *" if kind == head else ""), split,
                              *[number(values.get(k), metric_label(k)[1]) for k in HEAD_COLUMNS])
    return table if table.row_count else None


def nec_table(metrics: dict) -> Table | None:
    """Test top-1 of the sparse head trained to each NEC budget, and their mean (ANEC)."""
    accuracy = _section(metrics, "nec_accuracy")
    if not accuracy:
        return None
    table = Table(title=Text("sparse head by NEC", style="bold"), title_justify="left", box=BOX, show_edge=False)
    table.add_column("NEC", justify="right")
    table.add_column("test top-1", justify="right")
    for nec, value in accuracy.items():
        table.add_row(plain(nec), number(value, True))
    table.add_row(Text("ANEC", style="bold"), number(metrics.get("anec"), True))
    return table


def splits_table(metrics: dict) -> Table | None:
    """The run's head on validation and test: accuracy, calibration, sparsity and faithfulness."""
    splits = [s for s in ("val", "test") if _section(metrics, s)]
    if not splits:
        return None
    table = Table(title=Text("the run's head", style="bold"), title_justify="left", box=BOX, show_edge=False)
    table.add_column("metric")
    for split in splits:
        table.add_column(split, justify="right")
    keys = [k for k in dict.fromkeys(k for s in splits for k in metrics[s]) if k not in ELSEWHERE]
    for key in keys:
        label, percent = metric_label(key)
        table.add_row(plain(label), *[number(metrics[s].get(key), percent) for s in splits])
    return table


def training_table(metrics: dict) -> Table | None:
    present = [(key, label) for key, label in TRAINING if key in metrics]
    if not present:
        return None
    table = Table(title=Text("training", style="bold"), title_justify="left", show_header=False, box=None,
                  padding=(0, 1))
    table.add_column("key", style="cyan")
    table.add_column("value", justify="right")
    for key, label in present:
        table.add_row(label, number(metrics[key]))
    return table


def results_table(rows) -> Table | None:
    """The comparison `cbmctl train` printed (cbmctl.render's columns: mean over seeds ± half-width of the
    95 % interval), transposed — one column per method — so that it fits a narrow terminal."""
    from cbmctl.render import COMPARE_COLUMNS, difference_text, interval_text
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    table = Table(title=Text("results on the test split", style="bold"), title_justify="left", box=BOX, show_edge=False)
    table.add_column("")
    for row in rows:
        table.add_column(plain(row.get("method", "?")), justify="right")
    try:
        for key, header, percent in COMPARE_COLUMNS:
            if any(key in row for row in rows):
                table.add_row(header, *[interval_text(row[key], percent) if key in row else "–" for row in rows])
        if any("vs_none" in row for row in rows):
            table.add_row("Δ top-1 vs none", *[difference_text(row.get("vs_none", {}).get("top1")) for row in rows])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # a damaged metrics file: the other tables still show what is readable
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

    def render_summary(self) -> Group:
        data, summary = self.data, self.data.summary
        parts = [Text.assemble(plain(data.title, "bold"), "\n", plain(data.source, "dim"))]
        for key in ("mode", "note"):
            if summary.get(key):
                parts.append(plain(summary[key], "yellow"))
        if data.mode == "cache" and data.labels is not None:
            parts.append(Text(f"Concept Matrix Search (cos rule), {data.split} split: top-1 "
                              f"{100 * float((data.predicted == data.labels).mean()):.2f} % "
                              f"of {len(data.labels)} images"))
        metrics = summary.get("metrics") if isinstance(summary.get("metrics"), dict) else {}
        tables = [results_table(summary.get("rows"))]
        parts += [Text("")] + [t for t in tables if t is not None]
        heads = heads_table(metrics, data.head_kind)
        if heads is not None:
            parts += [Text(""), heads]
        grid = [t for t in (splits_table(metrics), nec_table(metrics), training_table(metrics)) if t is not None]
        if grid:
            parts += [Text(""), Columns(grid, padding=(1, 3))]
        if _section(summary, "train_config"):
            parts += [Text(""), record_columns("configuration", _section(summary, "train_config"))]
        records = [key_value_table(title, _section(summary, key), prefix) for key, title, prefix in SECTIONS
                   if _section(summary, key)]
        if records:
            parts += [Text(""), Columns(records, padding=(1, 3))]
        return Group(*parts)
