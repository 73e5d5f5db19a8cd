"""The demo bench's forest plot (cbmctl.demo.bench_report.forest_panels gives its content): each world's
effect and the pooled one, per method and per claim contrast."""
from __future__ import annotations

from pathlib import Path

from cbmctl import render
from cbmctl.render import _plain


def plot_forest(path: Path, panels: list[dict], title: str) -> None:
    """A forest plot, one panel per group of effects: per row each world's effect with its 95 % interval
    (grey, spread vertically) and the pooled effect with its interval (black diamond); a dotted line at 0;
    where the row is a non-inferiority claim, a red dashed mark at the loss it allows; the row's note (a
    verdict, * for significant) at the right. The x range covers the pooled intervals, the margins and every
    world's point; a wider per-world interval runs off the edge, marked there by an arrowhead. A panel is
    {"title", "unit", "rows": [{"label", "note", "per_world": [(mean, low, high)], "pooled": (mean, low, high)
    or None, "margin": x or None}]} (low/high None where there is no interval)."""
    plt = render._pyplot()
    heights = [max(len(panel["rows"]), 1) + 1.6 for panel in panels]
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 0.3 * sum(heights) + 0.8),
                                gridspec_kw={"height_ratios": heights}, squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        _forest_panel(axis, panel)
    figure.suptitle(_plain(title) + "\n(grey: each world, 95 % interval over its seeds, an arrowhead where it runs "
                    "off the edge; black: pooled over worlds, 95 % interval;\nred dashes: the loss a non-inferiority "
                    "claim allows)", fontsize=9)
    render._save(figure, path, plt)  # looked up at call time: a test may draw without writing


def _forest_panel(axis, panel: dict) -> None:
    import textwrap
    rows = panel["rows"]
    shown, world_intervals = [0.0], []
    for y, row in enumerate(rows):
        worlds = row["per_world"]
        for k, (mean, low, high) in enumerate(worlds):
            offset = 0.3 * (k / max(len(worlds) - 1, 1) - 0.5) if len(worlds) > 1 else 0.0
            if low is not None:
                axis.plot([low, high], [y + offset] * 2, color="0.65", linewidth=0.8)
                world_intervals.append((low, high, y + offset))
            axis.plot([mean], [y + offset], "o", color="0.45", markersize=3)
            shown.append(mean)
        if row["pooled"]:
            mean, low, high = row["pooled"]
            if low is not None:
                axis.plot([low, high], [y, y], color="black", linewidth=2)
                shown += [low, high]
            axis.plot([mean], [y], "D", color="black", markersize=6)
            shown.append(mean)
        if row.get("margin") is not None:
            axis.plot([row["margin"]] * 2, [y - 0.42, y + 0.42], color="tab:red", linestyle="--", linewidth=1)
            shown.append(row["margin"])
        if row["note"]:
            axis.annotate(_plain(row["note"]), (1.01, y), xycoords=("axes fraction", "data"), fontsize=7,
                          va="center", annotation_clip=False)
    low, high = min(shown), max(shown)
    pad = 0.08 * (high - low) or 0.05
    axis.set_xlim(low - pad, high + pad)
    for start, stop, y in world_intervals:
        for edge, beyond, marker in ((low - pad, start < low - pad, "<"), (high + pad, stop > high + pad, ">")):
            if beyond:
                axis.plot([edge], [y], marker, color="0.45", markersize=4, clip_on=False)
    axis.axvline(0, color="gray", linewidth=0.8, linestyle=":")
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels([_plain(row["label"]) for row in rows], fontsize=7)
    axis.set_ylim(max(len(rows), 1) - 0.5, -0.5)  # a panel without rows keeps one empty row (no zero-height axis)
    if not rows:
        axis.text(0.5, 0.5, "nothing to show", transform=axis.transAxes, ha="center", va="center", fontsize=8)
    axis.set_title(textwrap.fill(_plain(panel["title"]), 110), fontsize=8, loc="left")  # wrap after escaping
    axis.set_xlabel(f"effect ({panel['unit']})" if panel["unit"] else "effect", fontsize=7)
    axis.tick_params(axis="x", labelsize=7)
