"""Rendering: rich tables and bars for the terminal, matplotlib figures for files."""
from __future__ import annotations

from pathlib import Path

BAR_WIDTH = 24


def _bar(value: float, largest: float) -> str:
    if largest <= 0:
        return ""
    cells = abs(value) / largest * BAR_WIDTH
    full = int(cells)
    partial = " ▏▎▍▌▋▊▉"[int((cells - full) * 8)] if full < BAR_WIDTH else ""
    return ("█" * full + partial.strip()) or "▏"


def explanation_table(explanation):
    """A rich Table: the explained class's top concepts with contribution bars and raw CLIP scores."""
    from rich.table import Table
    from rich.text import Text
    cbm = explanation.method == "cbm"
    title = (f"{explanation.image}\npredicted [bold]{explanation.predicted}[/] "
             f"(p={explanation.probability:.3f}); explaining [bold]{explanation.explained_class}[/]")
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("concept", no_wrap=True)
    table.add_column("contribution" if cbm else "V × T", justify="left", no_wrap=True)
    table.add_column("", justify="right")
    table.add_column("activation" if cbm else "V (cos)", justify="right")
    table.add_column("head weight" if cbm else "T (cos)", justify="right")
    table.add_column("CLIP score ψ", justify="right")
    rows = explanation.concepts
    largest = max((abs(r.contribution) for r in rows), default=0.0)
    for row in rows:
        colour = "green" if row.contribution >= 0 else "red"
        table.add_row(Text(row.concept), Text(_bar(row.contribution, largest), style=colour),
                      f"{row.contribution:+.3f}", f"{row.activation:.3f}", f"{row.weight:+.3f}", f"{row.score:.2f}")
    return table


def top_classes_line(explanation) -> str:
    return "top classes: " + ", ".join(f"{name} {p:.3f}" for name, p in explanation.top_classes)


def intervention_table(classes, before_logits, after_logits, top: int = 5):
    from rich.table import Table
    before_p, after_p = before_logits.softmax(-1), after_logits.softmax(-1)
    order = (before_p + after_p).argsort(descending=True)[:top].tolist()
    table = Table(title="intervention: before → after", title_justify="left", show_edge=False)
    for column in ("class", "logit before", "logit after", "Δ logit", "p before", "p after"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for k in order:
        table.add_row(classes[k], f"{float(before_logits[k]):.3f}", f"{float(after_logits[k]):.3f}",
                      f"{float(after_logits[k] - before_logits[k]):+.3f}", f"{float(before_p[k]):.3f}",
                      f"{float(after_p[k]):.3f}")
    return table


def explanation_figure(explanations, path: Path, images: dict[str, str] | None = None) -> None:
    """A PNG: per explained image, its picture (when a file) beside a bar chart of its top concepts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    count = len(explanations)
    figure, axes = plt.subplots(count, 2, figsize=(10, 2.6 * count + 0.4), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 2.6]})
    for row, explanation in zip(axes, explanations):
        picture, bars = row
        picture.axis("off")
        try:
            picture.imshow(Image.open(explanation.image).convert("RGB"))
        except (OSError, ValueError):
            picture.text(0.5, 0.5, "(no image)", ha="center", va="center")
        picture.set_title(f"{Path(explanation.image).name}\n→ {explanation.predicted} ({explanation.probability:.2f})",
                          fontsize=9)
        concepts = list(reversed(explanation.concepts))
        values = [c.contribution for c in concepts]
        bars.barh([c.concept for c in concepts], values, color=["#2e7d32" if v >= 0 else "#c62828" for v in values])
        bars.axvline(0, color="black", linewidth=0.6)
        bars.set_xlabel("contribution to " + explanation.explained_class if explanation.method == "cbm"
                        else f"V × T for {explanation.explained_class} (CMS)")
        bars.tick_params(axis="y", labelsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
