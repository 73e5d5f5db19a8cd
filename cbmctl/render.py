"""Rendering: rich tables and bars for the terminal, matplotlib figures for files."""
from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from cbmctl.errors import CbmctlError
from cbmctl.sanitize import safe_text

BAR_WIDTH = 24
TITLE_CHARS = 28  # characters of a 9-point title above an explained image's picture


def _bar(value: float, largest: float) -> str:
    if not (math.isfinite(value) and math.isfinite(largest)) or largest <= 0:
        return ""
    cells = abs(value) / largest * BAR_WIDTH
    full = int(cells)
    partial = " ▏▎▍▌▋▊▉"[int((cells - full) * 8)] if full < BAR_WIDTH else ""
    return ("█" * full + partial.strip()) or "▏"


def absence_evidence(head: str, head_input: float | None) -> bool:
    """Evidence from a concept's absence: with the sparse head, a standardised activation below the concept's
    train mean (its contribution then comes from the concept being weaker than usual, not from its presence).
    The one predicate behind every "(absent)" mark: explain's table and PNG, the TUI, the report."""
    return head == "sparse" and head_input is not None and head_input < 0


def is_absence(explanation, row) -> bool:
    return absence_evidence(explanation.head, row.head_input)


def explanation_table(explanation):
    """A rich Table: the explained class's concepts with contribution bars, the values behind them and the
    raw CLIP scores. Every name is untrusted text: shown escaped, never as markup."""
    from rich.table import Table
    from rich.text import Text
    cbm = explanation.method == "cbm"
    sparse = cbm and explanation.head == "sparse"
    title = Text(safe_text(explanation.image) + "\npredicted ")
    title.append(safe_text(explanation.predicted), style="bold")
    title.append(f" (p={explanation.probability:.3f}); explaining ")
    title.append(safe_text(explanation.explained_class), style="bold")
    if cbm:
        rest = (f" + {explanation.unlisted_count} more not listed ({explanation.unlisted:+.3f}, raise --top-k)"
                if explanation.unlisted_count else "")
        title.append(f" — {explanation.head} head: logit {explanation.logit:+.3f} = the {len(explanation.concepts)} "
                     f"contributions below{rest}" + (f" + bias {explanation.bias:+.3f}" if sparse else ""))
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("concept", no_wrap=True)
    table.add_column("contribution" if cbm else "V × T", justify="left", no_wrap=True)
    table.add_column("", justify="right")
    table.add_column("activation" if cbm else "V (cos)", justify="right")
    if sparse:
        table.add_column("standardised", justify="right")
    table.add_column("head weight" if cbm else "T (cos)", justify="right")
    table.add_column("CLIP score ψ", justify="right")
    rows = explanation.concepts
    largest = max((abs(r.contribution) for r in rows), default=0.0)
    for row in rows:
        colour = "green" if row.contribution >= 0 else "red"
        name = Text(safe_text(row.concept))
        if is_absence(explanation, row):
            name.append(" (absent)", style="dim")
        cells = [name, Text(_bar(row.contribution, largest), style=colour),
                 f"{row.contribution:+.3f}", f"{row.activation:.3f}"]
        if sparse:
            cells.append(f"{row.head_input:+.2f}")
        table.add_row(*cells, f"{row.weight:+.3f}", f"{row.score:.2f}")
    return table


def top_classes_line(explanation) -> str:
    return "top classes: " + ", ".join(f"{safe_text(name)} {p:.3f}" for name, p in explanation.top_classes)


def intervention_table(classes, before_logits, after_logits, top: int = 5):
    from rich.table import Table
    from rich.text import Text
    before_p, after_p = before_logits.softmax(-1), after_logits.softmax(-1)
    order = (before_p + after_p).argsort(descending=True)[:top].tolist()
    table = Table(title="intervention: before → after", title_justify="left", show_edge=False)
    for column in ("class", "logit before", "logit after", "Δ logit", "p before", "p after"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for k in order:
        table.add_row(Text(safe_text(classes[k])), f"{float(before_logits[k]):.3f}", f"{float(after_logits[k]):.3f}",
                      f"{float(after_logits[k] - before_logits[k]):+.3f}", f"{float(before_p[k]):.3f}",
                      f"{float(after_p[k]):.3f}")
    return table


def explanation_figure(explanations, path: Path, images: dict[str, str] | None = None) -> None:
    """A PNG: per explained image, its picture (when a file) beside a bar chart of its top concepts."""
    from cbmctl.images import BadImage, open_image_file, to_rgb
    plt = _pyplot()
    count = len(explanations)
    figure, axes = plt.subplots(count, 2, figsize=(10, 2.6 * count + 0.4), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 2.6]})
    for row, explanation in zip(axes, explanations):
        picture, bars = row
        picture.axis("off")
        try:
            picture.imshow(to_rgb(open_image_file(explanation.image)))
        except (OSError, ValueError, BadImage):
            picture.text(0.5, 0.5, "(no image)", ha="center", va="center")
        # wrapped to the picture's width: a centred title wider than it runs off the figure's left edge
        picture.set_title(f"{fit_label(Path(explanation.image).name, TITLE_CHARS)}\n"
                          f"→ {fit_label(explanation.predicted, TITLE_CHARS)} ({explanation.probability:.2f})",
                          fontsize=9)
        concepts = list(reversed(explanation.concepts))
        values = [c.contribution for c in concepts]
        absent = [is_absence(explanation, c) for c in concepts]  # drawn hatched
        labels = [_plain(c.concept) + (" (absent)" if gone else "") for c, gone in zip(concepts, absent)]
        drawn = bars.barh(labels, values, color=["#2e7d32" if v >= 0 else "#c62828" for v in values])
        for bar, gone in zip(drawn, absent):
            if gone:
                bar.set_alpha(0.45)
                bar.set_hatch("//")
        bars.axvline(0, color="black", linewidth=0.6)
        bars.set_xlabel(f"contribution to {_plain(explanation.explained_class)} ({explanation.head} head)"
                        if explanation.method == "cbm" else f"V × T for {_plain(explanation.explained_class)} (CMS)")
        bars.tick_params(axis="y", labelsize=8)
    _save(figure, path, plt, make_parent=True)


def fit_label(text: str, width: int, lines: int = 2) -> str:
    """Untrusted text as a figure label of at most `lines` lines of `width` characters (broken at spaces where
    it can, inside a long file name where it must; '…' ends what does not fit), escaped as `_plain` does."""
    import textwrap
    wrapped = textwrap.wrap(safe_text(text), width, break_on_hyphens=False) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][:width - 1] + "…"
    return "\n".join(line.replace("$", r"\$") for line in wrapped)  # '$' escaped after the wrap: never split


def _plain(text: str) -> str:
    """Untrusted text for a matplotlib label: control characters escaped, '$' not read as mathtext."""
    return safe_text(text).replace("$", r"\$")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure_formats() -> list[str]:
    """The file suffixes matplotlib can write (png, pdf, svg, ...), without the dot."""
    _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase
    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_figure_path(path) -> Path:
    """Refuse, before any work, a figure path matplotlib cannot write: a suffix it has no writer for, a
    directory, or a place where the file cannot be created. Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in figure_formats():
        raise CbmctlError(f"{safe_text(path)}: cannot draw a .{safe_text(suffix) or '(no suffix)'} file; give a name "
                          f"ending in one of {', '.join('.' + f for f in figure_formats())}")
    if path.is_dir():
        raise CbmctlError(f"{safe_text(path)} is a directory; give a file name")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CbmctlError(f"cannot write {safe_text(path)}: {safe_text(existing)} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CbmctlError(f"cannot write {safe_text(path)}: {safe_text(existing)} is not writable")
    return path


@contextmanager
def _drawing():
    """Around matplotlib calls: a label's missing glyph is not worth a warning (labels are passed through
    safe_text, so no control character reaches a font), and no raw warning text reaches the terminal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        yield


def _save(figure, path, plt, make_parent: bool = False, tight: bool = True) -> None:
    """Write `figure` (laid out tight unless the caller placed everything itself) and close it."""
    try:
        with _drawing():
            if tight:
                figure.tight_layout()
            if make_parent:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, dpi=110)
    except OSError as error:
        raise CbmctlError(f"cannot write {safe_text(path)}: {safe_text(error.strerror or error)}") from None
    finally:
        plt.close(figure)


MARKERS = "osD^vP*X<>"


def _epoch_band(histories: list[list[dict]], key: str):
    """(epochs, mean, low, high) of `key` over seeds at each epoch, from the seeds that reached it."""
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for row in history:
            if isinstance(row.get(key), (int, float)):
                by_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
    epochs = sorted(by_epoch)
    values = [by_epoch[e] for e in epochs]
    return epochs, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot_curves(path: Path, histories, title: str) -> None:
    """Training curves in three panels with their own scales: the cross-entropy on train and validation (the
    validation loss picks the epoch), the CBL objective, and the dense head's accuracy.

    `histories`: one run's history (a list of per-epoch rows), or {method: [history per seed]} for a
    comparison — each method's mean over seeds with a band over the seeds' range."""
    plt = _pyplot()
    methods = {"": [histories]} if isinstance(histories, list) else dict(histories)
    single = len(methods) == 1 and len(next(iter(methods.values()), [])) == 1
    figure, (losses, objective, accuracy) = plt.subplots(1, 3, figsize=(13, 3.9 if single else 4.6))
    panels = ((losses, (("ce", "-"), ("val_loss", "--"))), (objective, (("cbl_loss", "-"),)),
              (accuracy, (("train_top1", "-"), ("val_top1", "--"))))
    for index, (label, runs) in enumerate(methods.items()):
        colour = f"C{index}"
        for axis, keys in panels:
            for key, style in keys:
                epochs, mean, low, high = _epoch_band(runs, key)
                axis.plot(epochs, mean, color=colour, linestyle=style, linewidth=1.2,
                          label=(_plain(label) if label else None) if axis is objective else None)
                if len(runs) > 1:
                    axis.fill_between(epochs, low, high, color=colour, alpha=0.15, linewidth=0)
    losses.set_ylabel("cross-entropy (dense head)")
    objective.set_ylabel("CBL objective (train)")
    accuracy.set_ylabel("top-1 (dense head)")
    accuracy.set_ylim(0, 1)
    history = next(iter(methods.values()))[0] if single else []
    best = min(history, key=lambda h: h["val_loss"]) if history else None
    for axis in (losses, objective, accuracy):
        axis.set_xlabel("epoch")
        if best:
            axis.axvline(best["epoch"], color="gray", linewidth=0.8, linestyle=":")
    from matplotlib.lines import Line2D
    styles = [Line2D([], [], color="black", linestyle="-", label="train"),
              Line2D([], [], color="black", linestyle="--", label="validation")]
    losses.legend(handles=styles, fontsize=8)
    accuracy.legend(handles=styles, fontsize=8)
    if not single:
        seeds = max(len(runs) for runs in methods.values())
        objective.legend(fontsize=7, title=f"mean over seeds; band: range of {seeds} seeds" if seeds > 1 else None,
                         title_fontsize=7)
    figure.suptitle(_plain(title) + (f" — kept epoch {best['epoch']} (lowest validation loss, dotted)" if best else ""),
                    fontsize=10)
    _save(figure, path, plt)


def plot_sparsity(path: Path, methods: dict[str, list[dict]], title: str) -> None:
    """Test top-1 against NEC, in two panels: the whole λ path of each method's first seed from NEC 0 (chance)
    to the largest NEC it reached, and the sparse heads refitted to the NEC budgets (mean over seeds with the
    seeds' range, methods side by side so equal values stay visible) beside each method's dense head."""
    plt = _pyplot()
    figure, (whole, budget) = plt.subplots(1, 2, figsize=(12.5, 4.6), gridspec_kw={"width_ratios": [1, 1.25]})
    shown, budgeted, largest = [], [], 0.0
    for index, (label, per_seed) in enumerate(methods.items()):
        colour, marker, name = f"C{index}", MARKERS[index % len(MARKERS)], _plain(label)
        points = [p for p in per_seed[0].get("path", []) if "test_top1" in p and "nec" in p]
        if points:
            whole.plot([p["nec"] for p in points], [p["test_top1"] for p in points], color=colour, linewidth=1,
                       label=f"{name}: λ path, first seed")
            shown += [p["test_top1"] for p in points]
            largest = max([largest] + [p["nec"] for p in points])
        levels = sorted(int(k) for k in per_seed[0].get("nec_accuracy", {}))
        if levels:
            values = [[m["nec_accuracy"][str(level)] for m in per_seed if str(level) in m.get("nec_accuracy", {})]
                      for level in levels]
            means = [sum(v) / len(v) for v in values]
            offset = (index - (len(methods) - 1) / 2) * 0.45
            budget.errorbar([level + offset for level in levels], means, color=colour, fmt=marker + "-", markersize=5,
                            yerr=[[m - min(v) for m, v in zip(means, values)], [max(v) - m for m, v in zip(means, values)]],
                            capsize=2, linewidth=1.2, label=f"{name}: sparse head at each NEC budget")
            whole.plot(levels, means, marker, color=colour, markersize=4)
            budgeted += [x for v in values for x in v]
            largest = max(largest, levels[-1])
        dense = [m["dense"]["test"]["top1"] for m in per_seed if "dense" in m]
        if dense:
            for axis in (whole, budget):
                axis.axhline(sum(dense) / len(dense), color=colour, linestyle="--", linewidth=0.9,
                             label=f"{name}: dense head" if axis is budget else None)
            budgeted.append(sum(dense) / len(dense))
    whole.set_xlim(0, max(largest, 1) * 1.03)
    if shown or budgeted:
        whole.set_ylim(max(0.0, min(shown + budgeted) - 0.03), min(1.0, max(shown + budgeted) + 0.03))
    if budgeted:
        spread = max(budgeted) - min(budgeted)
        budget.set_ylim(min(budgeted) - max(0.1 * spread, 0.01), max(budgeted) + max(0.25 * spread, 0.01))
        budget.set_xticks(sorted({int(k) for m in methods.values() for k in m[0].get("nec_accuracy", {})}))
    whole.set_title("the whole λ path (markers: the budgeted heads)", fontsize=9)
    several = max((len(per_seed) for per_seed in methods.values()), default=0) > 1
    budget.set_title("the NEC budgets (" + ("mean over seeds, bars: range; " if several else "one seed; ")
                     + "methods side by side)", fontsize=9)
    for axis in (whole, budget):
        axis.set_xlabel("NEC: non-zero head weights per class")
        axis.set_ylabel("test top-1")
        axis.grid(alpha=0.3)
    handles = [h for axis in (whole, budget) for h in axis.get_legend_handles_labels()[0]]
    labels = [t for axis in (whole, budget) for t in axis.get_legend_handles_labels()[1]]
    rows = math.ceil(len(labels) / 3)
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    figure.suptitle(_plain(title), fontsize=10)
    with _drawing():
        figure.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))
    _save(figure, path, plt, tight=False)


def plot_activation_histograms(path: Path, histograms: dict, title: str) -> None:
    """One panel per per-image sparsity measure (runs.read_activation_histograms' layout): the share of the
    split's images in each bin, one step line per method."""
    plt = _pyplot()
    measures = histograms["measures"]
    bins = histograms["bins"]
    edges = [i / bins for i in range(bins + 1)]
    figure, axes = plt.subplots(1, len(measures), figsize=(4.3 * len(measures), 3.8), squeeze=False)
    for axis, (name, description) in zip(axes[0], measures.items()):
        for index, (label, entry) in enumerate(histograms["methods"].items()):
            counts = entry[name]
            total = sum(counts) or 1
            axis.stairs([c / total for c in counts], edges, color=f"C{index}", linewidth=1.4,
                        label=f"{_plain(label)} ({entry.get('seeds', 1)} seed{'s' * (entry.get('seeds', 1) != 1)})")
        axis.set_xlim(0, 1)
        axis.set_xlabel(_plain(description), fontsize=8)
        axis.set_ylabel(f"share of {histograms.get('split', 'test')} images")
        axis.set_title({"hoyer": "Hoyer", "top5_mass": "top-5 mass"}.get(name, _plain(name.replace("_", " "))),
                       fontsize=9)
    axes[0][0].legend(fontsize=7, loc="upper left")
    figure.suptitle(_plain(title), fontsize=10)
    _save(figure, path, plt)


# (key, header, percent?) of a comparison table, in order; absent keys are skipped
COMPARE_COLUMNS = (("top1", "top-1", True), ("dense_top1", "dense", True), ("nec5_top1", "NEC=5", True),
                   ("anec", "ANEC", True), ("ece", "ECE", False), ("concept_precision@5", "concept p@5", True),
                   ("explanation_precision@5", "expl. p@5", True), ("entropy_mean", "entropy", False),
                   ("hoyer_mean", "Hoyer", False))


def is_percent(key: str) -> bool:
    """Whether a comparison's metric is shown in percent (accuracies and precisions; ECE, entropy, NEC ... are
    shown in their own units): one rule for the printed table and compare.csv."""
    return key in ("top1", "dense_top1", "nec5_top1", "anec", "top5", "mean_per_class") or \
        key.startswith(("concept_precision", "explanation_precision")) or (key.startswith("nec") and key.endswith("_top1"))


def interval_text(cell: dict, percent: bool) -> str:
    """mean, and ±half-width of its 95 % interval when there is one (percent: ×100, 1 decimal)."""
    scale, digits = (100, 1) if percent else (1, 3)
    text = f"{scale * cell['mean']:.{digits}f}"
    if cell.get("ci_high") is not None:
        text += f"±{scale * (cell['ci_high'] - cell['mean']):.{digits}f}"
    return text


def compare_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(headers, cells) of a comparison: per method the mean over seeds with the 95 % interval half-width,
    and the paired difference in top-1 to the plain CBM (* where significant). Cells are plain text."""
    columns = [c for c in COMPARE_COLUMNS if any(c[0] in row for row in rows)]
    paired = any("vs_none" in row for row in rows)
    headers = [header for _, header, _ in columns]
    headers = ["method"] + headers[:1] + (["Δ vs none"] if paired else []) + headers[1:]
    body = []
    for row in rows:
        cells = [safe_text(row["method"])]
        for index, (key, _, percent) in enumerate(columns):
            cells.append(interval_text(row[key], percent) if key in row else "-")
            if index == 0 and paired:
                cells.append(difference_text(row.get("vs_none", {}).get("top1")))
        body.append(cells)
    return headers, body


def compare_table(rows: list[dict], title: str):
    """A rich Table of a comparison: per method the mean over seeds with the 95 % interval half-width, and
    the paired difference in top-1 to the plain CBM (* where significant)."""
    from rich.table import Table
    from rich.text import Text
    headers, body = compare_cells(rows)
    table = Table(title=title, title_justify="left")
    table.add_column(headers[0], no_wrap=True)
    for header in headers[1:]:
        table.add_column(header, justify="right", no_wrap=True)
    for cells in body:
        table.add_row(Text(cells[0]), *cells[1:])
    return table


def markdown_table(headers: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def difference_text(difference: dict | None) -> str:
    if not difference:
        return "-"
    text = f"{100 * difference['mean']:+.1f}"
    if difference.get("ci_high") is not None:
        text += f"±{100 * (difference['ci_high'] - difference['mean']):.1f}"
    return text + ("*" if difference.get("significant") else " ")


def significance_sentence(rows: list[dict], key: str = "top1", what: str = "test top-1") -> str:
    """One sentence: which methods differ from the plain CBM ('none') in `key`, paired over seeds with
    Holm's correction, with the size and interval of each difference; and which do not, or cannot be tested
    (the same difference on every seed leaves no spread to test against)."""
    differ, same, untested = [], [], []
    for row in rows:
        difference = row.get("vs_none", {}).get(key)
        if not difference or difference.get("ci_high") is None:
            continue
        name = safe_text(row["method"])
        if difference.get("p") is None:
            untested.append(f"{name} {100 * difference['mean']:+.2f} points")
            continue
        text = (f"{name} {100 * difference['mean']:+.2f} points "
                f"[{100 * difference['ci_low']:+.2f}, {100 * difference['ci_high']:+.2f}]")
        (differ if difference.get("significant") else same).append(text)
    if not differ and not same and not untested:
        return ""
    parts = []
    if differ:
        parts.append("differ significantly from the plain CBM (none): " + "; ".join(differ))
    if same:
        parts.append("not significant after Holm's correction (an uncorrected interval may still exclude 0): "
                     + "; ".join(same))
    if untested:
        parts.append("the same difference on every seed, so no interval and no test (more seeds would give one): "
                     + "; ".join(untested))
    # the parts after the first start sentences of their own
    return (f"In {what} (paired over seeds; the 95 % intervals are per comparison, significance is "
            "Holm-corrected over the methods compared), " + ". ".join([parts[0]] + [p[0].upper() + p[1:] for p in parts[1:]])
            + ".")
