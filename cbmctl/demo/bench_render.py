"""The rich tables of a `cbmctl demo bench` report (cbmctl.demo.bench_report); its forest plot is
cbmctl.render_forest.plot_forest."""
from __future__ import annotations

from cbmctl.demo.bench_report import METHOD_METRICS, effect_text
from cbmctl.sanitize import safe_text


def bench_tables(report: dict, per_world_columns: int = 6) -> list:
    """rich Tables of a `demo bench` report: every method against the plain CBM per metric (per world while
    there are at most `per_world_columns` worlds, and pooled), then every claim's contrasts with verdicts."""
    from rich.table import Table
    from rich.text import Text
    worlds = report["per_world"] if len(report["per_world"]) <= per_world_columns else []
    tables = []
    for metric, entries in report["methods"].items():
        table = Table(title=f"Δ vs the plain CBM (none), {METHOD_METRICS[metric]}, paired over "
                            f"{len(report['seeds'])} seeds per world", title_justify="left")
        for header in ["method"] + [f"world {w['index']}" for w in worlds] + ["pooled [95 %]", "estimator",
                                                                                "Holm p"]:
            table.add_column(header, justify="left" if header in ("method", "estimator") else "right", no_wrap=True)
        for entry in entries:
            pooled = entry["pooled"]
            cells = [effect_text(metric, d) for d in entry["per_world"][:len(worlds)]]
            table.add_row(Text(safe_text(entry["label"])), *cells, _pooled_cell(metric, pooled),
                          pooled["estimator"] if pooled else "-", _holm_cell(pooled))
        tables.append(table)
    claims = Table(title="The paper's claims (and cbmctl's), pooled over worlds", title_justify="left")
    for header in ("claim", "contrast", "pooled [95 %]", "Holm p", "verdict"):
        claims.add_column(header, justify="right" if header in ("pooled [95 %]", "Holm p") else "left")
    for claim in report["claims"]:
        for n, contrast in enumerate(claim["contrasts"]):
            claims.add_row(f"({claim['id']}) {claim['verdict']}" if n == 0 else "", Text(safe_text(contrast["label"])),
                           _pooled_cell(contrast["metric"], contrast["pooled"]), _holm_cell(contrast["pooled"]),
                           contrast["verdict"])
    tables.append(claims)
    return tables


def _pooled_cell(metric: str, pooled: dict | None) -> str:
    return effect_text(metric, pooled) if pooled else "not measured"


def _holm_cell(pooled: dict | None) -> str:
    if not pooled or pooled.get("holm_p") is None:
        return "-"
    return f"{pooled['holm_p']:.3f}" + ("*" if pooled.get("significant") else "")


def bench_footer(report: dict, out) -> list[str]:
    """The plain lines under the tables: the estimator, the conclusions, each world's timings, the files."""
    lines = ["Estimator: " + report["estimator"], *report["conclusions"]]
    for world in report["per_world"]:
        reused = f" (reused: {', '.join(world['reused'])})" if world.get("reused") else ""
        lines.append(f"world {world['index']} (seed {world['seed']}, concept set "
                     f"{(world.get('concept_set') or {}).get('name')}), seconds wall (CPU): "
                     f"{stage_times(world['seconds'])}{reused}")
    lines.append(f"wrote {out}/bench.json and {out}/forest.png")
    return [safe_text(line) for line in lines]


def claims_markdown(report: dict) -> str:
    """The claims as a markdown table (claim, verdict, every contrast's pooled effect with its 95 % interval
    and, for claims judged contrast by contrast, its own verdict), for the README and BENCHMARKS.md."""
    rows = ["| claim | verdict | pooled effect [95 %] |", "|---|---|---|"]
    for claim in report["claims"]:
        effects = "; ".join(f"{c['label']}: {effect_text(c['metric'], c['pooled'])}"
                            + (f" ({c['verdict']})" if claim["mode"] == "each" else "")
                            for c in claim["contrasts"] if c["pooled"]) or "not measured"
        rows.append(f"| ({claim['id']}) {claim['statement']} | **{claim['verdict']}** | {effects} |")
    return safe_text("\n".join(rows), keep_newlines=True) + "\n"


STAGES = ("make", "embed", "train", "random_init", "cms")


def stage_times(seconds: dict) -> str:
    """'make 0.6 (0.5), embed 9.0 (12.1), ...': each stage's wall seconds and, in brackets, CPU seconds."""
    cpu = seconds.get("cpu", {})
    return ", ".join(f"{stage.replace('_', ' ')} {seconds[stage]:.1f}"
                     + (f" ({cpu[stage]:.1f})" if stage in cpu else "") for stage in STAGES if stage in seconds)
