"""Concept units (cbmctl.units) for the terminal and as a PNG grid of their top images."""
from __future__ import annotations

from pathlib import Path

from cbmctl.sanitize import safe_text

PNG_UNITS = 40  # a PNG grid draws at most this many units (one row each)
LABEL_CHARS = 22  # characters per line of a 6-point class name under a thumbnail


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def head_use(report, unit) -> str:
    """How the head uses a unit, in words a table cell holds."""
    if unit.classes_using == 0:
        return "unused" + (" (below the cutoff)" if not unit.offered else "")
    return f"{unit.classes_using} class{'es' * (unit.classes_using != 1)}, Σ|w| {unit.weight_mass:.2f}"


def unit_heading(report, unit) -> str:
    """One paragraph: the unit's faithfulness (and what the cutoff decided), use, sparsity and ground truth."""
    cutoff = ""
    if report.head == "sparse":
        cutoff = (f"; {'≥' if unit.offered else '<'} cutoff {report.cutoff:g}: "
                  f"{'offered to' if unit.offered else 'withheld from'} the sparse head")
    truth = ""
    if unit.truth_share is not None:
        shown = round(unit.truth_share * len(unit.top))
        truth = (f" · ground truth: {shown} of its top {len(unit.top)} images show it ({percent(unit.truth_rate)} "
                 f"of all {report.split} images do)")
    return safe_text(f"unit {unit.concept!r} — faithfulness {unit.faithfulness:.3f} (correlation with the concept's "
                     f"CLIP score on train{cutoff}) · head: {head_use(report, unit)} · among an image's 5 strongest "
                     f"units in {percent(unit.top5_rate)} of {report.split} images{truth}")


def unit_images_table(report, unit):
    """The unit's top images: rank, image, true class, activation, ψ and (ground truth) shows it?"""
    from rich.table import Table
    from rich.text import Text
    table = Table(title=Text(unit_heading(report, unit)), title_justify="left", show_edge=False)
    for column in ("#", "image", "class", "activation", "CLIP score ψ"):
        table.add_column(column, justify="right" if column in ("#", "activation", "CLIP score ψ") else "left")
    truth = unit.truth_share is not None
    if truth:
        table.add_column("shows it")
    for rank, image in enumerate(unit.top, 1):
        cells = [str(rank), Text(safe_text(image.path)), Text(safe_text(image.label)), f"{image.activation:.3f}",
                 f"{image.score:.2f}"]
        if truth:
            cells.append(Text("yes", style="green") if image.shows else Text("no", style="red"))
        table.add_row(*cells)
    return table


def units_summary_table(report, units):
    """Every unit in one table: faithfulness, use by the head, how often among the 5 strongest, truth share."""
    from rich.table import Table
    from rich.text import Text
    k = max((len(u.top) for u in units), default=0)
    table = Table(title=Text(f"{len(units)} concept units on the {report.split} split ({report.images} images, "
                             f"{report.head} head" + (f", faithfulness cutoff {report.cutoff:g}" if report.head ==
                                                     "sparse" else "") + ")"), title_justify="left", show_edge=False)
    for column, right in (("concept", False), ("faithfulness", True), ("head", False), ("in top 5", True),
                          (f"top {k} show it", True), ("all show it", True)):
        table.add_column(column, justify="right" if right else "left", no_wrap=column == "concept")
    for unit in units:
        faithful = Text(f"{unit.faithfulness:.3f}", style="" if unit.offered else "red")
        table.add_row(Text(safe_text(unit.concept)), faithful, head_use(report, unit), percent(unit.top5_rate),
                      percent(unit.truth_share), percent(unit.truth_rate))
    return table


def units_figure(report, units, path: Path) -> None:
    """A PNG: one row per unit, its top images left to right (green frame: the image shows the concept by
    the ground truth, red: it does not), the unit's numbers above the row."""
    from cbmctl.images import thumbnail
    from cbmctl.render import _plain, _pyplot, _save, fit_label
    plt = _pyplot()
    units = units[:PNG_UNITS]
    columns = max((len(u.top) for u in units), default=1) or 1
    height = 1.85 * len(units) + 0.3
    figure, axes = plt.subplots(len(units), columns, figsize=(max(1.3 * columns, 7.5), height), squeeze=False)
    # placed by hand: each row's heading spans the row, which tight_layout would squeeze into its first image
    figure.subplots_adjust(left=0.01, right=0.99, top=1 - 0.45 / height, bottom=0.62 / height, hspace=0.75,
                           wspace=0.08)
    for row, unit in zip(axes, units):
        for column, axis in enumerate(row):
            axis.set_xticks([])
            axis.set_yticks([])
            if column >= len(unit.top):
                axis.axis("off")
                continue
            _draw_image(axis, report, unit.top[column], thumbnail, fit_label)
        truth = "" if unit.truth_share is None else f" · shows it {percent(unit.truth_share)} (all: {percent(unit.truth_rate)})"
        row[0].annotate(f"{_plain(unit.concept)} — faithfulness {unit.faithfulness:.2f} · {_plain(head_use(report, unit))}"
                        f"{truth}", (0, 1.08), xycoords="axes fraction", fontsize=8, fontweight="bold",
                        annotation_clip=False)
    figure.text(0.01, 0.06 / height, "frame: green = the image shows the concept (ground truth), red = it does not, "
                "grey = not known; a = the unit's activation", fontsize=7, color="#555555")
    _save(figure, path, plt, make_parent=True, tight=False)


def _draw_image(axis, report, image, thumbnail, fit_label) -> None:
    picture = thumbnail(report.dataset_root, image.path)
    if picture is None:
        axis.text(0.5, 0.5, "(no image)", ha="center", va="center", fontsize=7)
    else:
        axis.imshow(picture)
    colour = {True: "#2e7d32", False: "#c62828"}.get(image.shows, "#9e9e9e")
    for spine in axis.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(2.5 if image.shows is not None else 0.8)
    axis.set_xlabel(f"{fit_label(image.label, LABEL_CHARS)}\na={image.activation:.2f}", fontsize=6)
