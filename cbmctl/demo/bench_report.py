"""What `cbmctl demo bench` concludes from its worlds: each method's paired difference to the plain CBM per
world and pooled over worlds (worlds are a random factor; cbmctl.stats.pool_effects), Holm-corrected over
the methods, and the paper's claims (and two of cbmctl's own), each a set of pooled contrasts with a verdict.

Input: one summary per world, as cbmctl.demo.bench writes it —
    {"index": 1, "seed": ..., "seeds": [0, 1, 2],
     "values": {method: {metric: [one value per seed, or one value for a seed-independent baseline]}},
     "labels": {method: "gumbel (paper, τ=1)", ...}, "cms": {"CMS cos": 0.41, ..., "zero-shot CLIP": 0.38}}
Plain Python, no torch: the verdicts can be recomputed from the JSON files alone."""
from __future__ import annotations

from dataclasses import dataclass

from cbmctl.stats import holm_adjusted, paired_difference, pool_effects

REFERENCE = "none"
RANDOM_INIT = "none-random-init"  # the plain CBM trained again with --cbl-init random
ZERO_SHOT_ROW = "zero-shot CLIP"  # cbmctl.cms.cms_report's row of zero-shot CLIP
PRECISION = "concept_precision@5"
# the metrics each method is compared to the plain CBM on: the run's head (sparse, NEC 5) and the dense head
METHOD_METRICS = {"top1": "test top-1 of the run's head (sparse, NEC = 5)", "dense_top1": "test top-1 of the dense head"}
VERDICTS = ("reproduces", "does not reproduce", "inconclusive", "not measured")


@dataclass(frozen=True)
class Contrast:
    """a − b in `metric`, per world (paired over seeds, or one value for CMS) and pooled. kind 'greater'
    claims direction·(a − b) > 0; 'not_lower' claims direction·(a − b) ≥ −margin (non-inferiority)."""
    label: str
    a: str
    b: str
    metric: str
    kind: str = "greater"
    direction: int = 1
    margin: float = 0.0
    source: str = "train"  # or "cms": a, b are rows of the world's CMS report
    b_metric: str | None = None  # b's metric when it is not `metric` (a head against another head)


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    family: str        # Holm's correction runs over every contrast of a family
    mode: str          # 'all': the claim holds when every contrast does; 'each': one verdict per contrast
    contrasts: tuple


def percent_metric(metric: str) -> bool:
    """Metrics that are shares (accuracies, precisions), shown ×100 as points."""
    return metric.endswith("top1") or metric.startswith(("concept_precision", "explanation_precision")) \
        or metric in ("anec", "mean_per_class", "top5")


def claims(worlds: list[dict]) -> list[Claim]:
    """The claims the benchmark evaluates; (a)'s contrasts are the CMS variants the worlds report."""
    variants = [name for name in worlds[0].get("cms", {}) if name.startswith("CMS")]
    top1 = {"nec5_top1": "sparse head, NEC = 5", "dense_top1": "dense head"}
    return [
        Claim("a", "CMS ≥ zero-shot CLIP in test top-1 (each CMS variant, the world's default concept set)", "a",
              "each", tuple(Contrast(f"{v} − zero-shot", v, ZERO_SHOT_ROW, "top1", source="cms") for v in variants)),
        Claim("b", "Sparse-CBM (gumbel) > l1 > contrastive in test top-1, in both heads", "b", "all",
              tuple(Contrast(f"{a} − {b} ({head})", a, b, metric) for metric, head in top1.items()
                    for a, b in (("gumbel", "l1"), ("l1", "contrastive")))),
        Claim("c", "Gumbel makes CBL activations sparser than the plain CBM (entropy lower, Hoyer higher)", "c",
              "all", (Contrast("gumbel − none, activation entropy", "gumbel", REFERENCE, "entropy_mean", direction=-1),
                      Contrast("gumbel − none, Hoyer sparsity", "gumbel", REFERENCE, "hoyer_mean"))),
        Claim("d", "Gumbel keeps concept precision: concept p@5 not lower than the plain CBM's (margin 2 points)",
              "d", "all", (Contrast("gumbel − none, concept p@5", "gumbel", REFERENCE, PRECISION, kind="not_lower",
                                    margin=0.02),)),
        Claim("e", "ours: the sparse head at NEC 5 costs at most 1 point of test top-1 against the dense head", "e",
              "each", tuple(Contrast(f"{m}: NEC 5 − dense", m, m, "nec5_top1", kind="not_lower", margin=0.01,
                                     b_metric="dense_top1")
                            for m in ("gumbel", "contrastive", "l1", "cos3", REFERENCE))),
        Claim("f", "ours: identity CBL init beats random init (plain CBM), in top-1 (NEC 5) and concept p@5", "f",
              "all", (Contrast("identity − random init, top-1 (NEC 5)", REFERENCE, RANDOM_INIT, "nec5_top1"),
                      Contrast("identity − random init, concept p@5", REFERENCE, RANDOM_INIT, PRECISION))),
    ]


def _seed_values(world: dict, method: str, metric: str) -> list[float] | None:
    values = world.get("values", {}).get(method, {}).get(metric)
    if values is None:
        return None
    return list(values) * len(world["seeds"]) if len(values) == 1 else list(values)


def world_difference(world: dict, contrast: Contrast) -> dict | None:
    """The contrast on one world: paired over seeds (mean, 95 % interval, p, and the variance of the mean
    that random-effects pooling weighs by), or a single difference for the seed-independent CMS."""
    if contrast.source == "cms":
        cms = world.get("cms", {})
        if contrast.a not in cms or contrast.b not in cms:
            return None
        return {"world": world["index"], "seed": world["seed"], "mean": cms[contrast.a] - cms[contrast.b],
                "ci_low": None, "ci_high": None, "p": None, "n": 1, "variance": None}
    a = _seed_values(world, contrast.a, contrast.metric)
    b = _seed_values(world, contrast.b, contrast.b_metric or contrast.metric)
    if a is None or b is None:
        return None
    difference = paired_difference(a, b)
    n = difference["n"]
    return {"world": world["index"], "seed": world["seed"], "mean": difference["mean"],
            "ci_low": difference["ci_low"], "ci_high": difference["ci_high"], "p": difference["p"], "n": n,
            "variance": difference["std"] ** 2 / n, "a_mean": sum(a) / n, "b_mean": sum(b) / n}


def pooled_contrast(worlds: list[dict], contrast: Contrast) -> dict:
    """Per-world differences and the pooled estimate (None where a world lacks the metric)."""
    per_world = [world_difference(world, contrast) for world in worlds]
    if any(d is None for d in per_world):
        return {"per_world": [], "pooled": None}
    variances = None if contrast.source == "cms" else [d["variance"] for d in per_world]
    pooled = pool_effects([d["mean"] for d in per_world], variances, df=min(d["n"] for d in per_world) - 1)
    pooled.pop("values", None)
    return {"per_world": per_world, "pooled": pooled}


def apply_holm(entries: list[dict]) -> None:
    """Holm over the entries' pooled p-values: adds holm_p and significant (at 0.05) to each pooled."""
    adjusted = holm_adjusted({str(i): e["pooled"]["p"] for i, e in enumerate(entries) if e["pooled"]})
    for i, entry in enumerate(entries):
        if entry["pooled"]:
            entry["pooled"]["holm_p"] = adjusted[str(i)]
            entry["pooled"]["significant"] = adjusted[str(i)] is not None and adjusted[str(i)] <= 0.05


def verdict(contrast: Contrast, pooled: dict | None) -> str:
    """'greater': reproduces when Holm-significant in the claimed direction, does not when Holm-significant
    against it, else inconclusive. 'not_lower' (non-inferiority): reproduces when the whole interval lies
    above −margin, does not when it lies wholly below, else inconclusive — a loss smaller than the margin,
    however significant, is what the claim allows."""
    if not pooled:
        return "not measured"
    mean = contrast.direction * pooled["mean"]
    low, high = sorted((contrast.direction * pooled["ci_low"], contrast.direction * pooled["ci_high"]))
    if contrast.kind == "greater":
        significant = pooled.get("significant", False)
        if significant:
            return "reproduces" if mean > 0 else "does not reproduce"
        return "inconclusive"
    if low > -contrast.margin:
        return "reproduces"
    return "does not reproduce" if high < -contrast.margin else "inconclusive"


def claim_verdict(mode: str, verdicts: list[str]) -> str:
    if not verdicts or all(v == "not measured" for v in verdicts):
        return "not measured"
    if mode == "each":
        return verdicts[0] if len(set(verdicts)) == 1 else "mixed"
    if all(v == "reproduces" for v in verdicts):
        return "reproduces"
    return "does not reproduce" if "does not reproduce" in verdicts else "inconclusive"


ESTIMATOR = ("Each world's effect is the paired mean difference over its seeds (CMS: one value per world). Pooled: "
             "the mean of the worlds' effects with a Student-t 95 % interval on W − 1 degrees of freedom (worlds "
             "are the sampling unit and weigh the same; no between-world variance has to be estimated from a "
             "handful of worlds); where every world has a within-world variance and the largest exceeds the smallest "
             "by more than 4× and by more than seed noise explains (Hartley's F_max at 5 %, Bonferroni over the "
             "world pairs), DerSimonian–Laird random effects with the Hartung–Knapp t interval on W − 1 df "
             "instead (it weighs precisely measured worlds more, and equals the former when the variances are "
             "equal). p-values are Holm-corrected over the methods compared (over each claim's contrasts for "
             "the claims).")


def method_label(worlds: list[dict], method: str) -> str:
    """The method's label (its settings in words) where every world that labels it gives the same (a world
    without labels says nothing against it), else a name that says the pooled row mixes settings."""
    labels = {world["labels"][method] for world in worlds if method in world.get("labels", {})}
    if not labels:
        return method
    return labels.pop() if len(labels) == 1 else f"{method} (settings differ between worlds)"


def method_comparisons(worlds: list[dict]) -> dict[str, list[dict]]:
    """Per metric of METHOD_METRICS, every method against the plain CBM, Holm-corrected over the methods."""
    methods = [m for m in worlds[0]["values"] if m != REFERENCE]
    comparisons = {}
    for metric in METHOD_METRICS:
        entries = []
        for method in methods:
            if all(metric in world["values"].get(method, {}) for world in worlds):
                contrast = Contrast(f"{method} − none", method, REFERENCE, metric)
                entries.append({"method": method, "label": method_label(worlds, method), "metric": metric,
                                **pooled_contrast(worlds, contrast)})
        apply_holm(entries)
        comparisons[metric] = entries
    return comparisons


def evaluate_claims(worlds: list[dict]) -> list[dict]:
    """Every claim's contrasts per world and pooled, Holm over each family, and the verdicts."""
    evaluated, families = [], {}
    for claim in claims(worlds):
        contrasts = [{"label": c.label, "a": c.a, "b": c.b, "metric": c.metric, "b_metric": c.b_metric or c.metric,
                      "kind": c.kind, "direction": c.direction, "margin": c.margin, **pooled_contrast(worlds, c)}
                     for c in claim.contrasts]
        families.setdefault(claim.family, []).extend(contrasts)
        evaluated.append((claim, contrasts))
    for entries in families.values():
        apply_holm(entries)
    result = []
    for claim, contrasts in evaluated:
        for spec, entry in zip(claim.contrasts, contrasts):
            entry["verdict"] = verdict(spec, entry["pooled"])
        result.append({"id": claim.id, "statement": claim.statement, "mode": claim.mode,
                       "verdict": claim_verdict(claim.mode, [e["verdict"] for e in contrasts]),
                       "contrasts": contrasts})
    return result


def effect_text(metric: str, pooled: dict) -> str:
    """'+1.23 points [-0.40, +2.86]' for a share, '-0.012 [-0.020, -0.004]' otherwise."""
    scale, unit, digits = (100, " points", 2) if percent_metric(metric) else (1, "", 3)
    if pooled.get("ci_low") is None:
        return f"{scale * pooled['mean']:+.{digits}f}{unit}"
    return (f"{scale * pooled['mean']:+.{digits}f}{unit} [{scale * pooled['ci_low']:+.{digits}f}, "
            f"{scale * pooled['ci_high']:+.{digits}f}]")


def conclusions(methods: dict[str, list[dict]], evaluated: list[dict], worlds: int) -> list[str]:
    """The sentences the benchmark may state: a method differs from the plain CBM only where it does pooled
    (Holm); a claim's verdict with its pooled intervals."""
    sentences = []
    for metric, entries in methods.items():
        differ = [f"{e['label']} {effect_text(metric, e['pooled'])}" for e in entries
                  if e["pooled"] and e["pooled"]["significant"]]
        what = METHOD_METRICS[metric]
        if differ:
            sentences.append(f"Pooled over {worlds} worlds, in {what}, these differ from the plain CBM (Holm over "
                             f"{len(entries)} methods): " + "; ".join(differ) + ".")
        else:
            sentences.append(f"Pooled over {worlds} worlds, no method differs from the plain CBM in {what} after "
                             f"Holm's correction over {len(entries)} methods.")
    for claim in evaluated:
        parts = [f"{c['label']} {effect_text(c['metric'], c['pooled'])}" + (f" ({c['verdict']})"
                                                                            if claim["mode"] == "each" else "")
                 for c in claim["contrasts"] if c["pooled"]]
        sentences.append(f"({claim['id']}) {claim['statement']}: {claim['verdict']}"
                         + (" — " + "; ".join(parts) if parts else "") + ".")
    return sentences


def summarise(worlds: list[dict]) -> dict:
    """Everything the benchmark reports about its worlds (bench.json's analysis part)."""
    if len(worlds) < 2:
        raise ValueError("pooling needs at least two worlds")
    methods = method_comparisons(worlds)
    evaluated = evaluate_claims(worlds)
    return {"estimator": ESTIMATOR, "reference": REFERENCE, "methods": methods, "claims": evaluated,
            "conclusions": conclusions(methods, evaluated, len(worlds))}


def _scaled(metric: str, cell: dict | None) -> tuple | None:
    if cell is None:
        return None
    scale = 100 if percent_metric(metric) else 1
    low, high = cell.get("ci_low"), cell.get("ci_high")
    return (scale * cell["mean"], None if low is None else scale * low, None if high is None else scale * high)


def _forest_row(label: str, metric: str, entry: dict, note: str) -> dict:
    """A plot row; a non-inferiority contrast's row carries the effect its margin allows (cbmctl.render)."""
    scale = 100 if percent_metric(metric) else 1
    margin = -entry["direction"] * entry["margin"] * scale if entry.get("kind") == "not_lower" else None
    return {"label": label, "note": note, "per_world": [_scaled(metric, d) for d in entry["per_world"]],
            "pooled": _scaled(metric, entry["pooled"]), "margin": margin}


def forest_panels(report: dict) -> list[dict]:
    """The forest plot's content (cbmctl.render_forest.plot_forest): per method and per claim contrast, each
    world's effect with its interval and the pooled effect with its interval, in points for shares."""
    panels = []
    for metric, entries in report["methods"].items():
        rows = [_forest_row(e["label"], metric, e, "*" if e["pooled"] and e["pooled"]["significant"] else "")
                for e in entries]
        panels.append({"title": f"Δ vs the plain CBM (none): {METHOD_METRICS[metric]}", "rows": rows,
                       "unit": "points" if percent_metric(metric) else ""})
    for claim in report["claims"]:
        contrasts = claim["contrasts"]
        panels.append({"title": f"({claim['id']}) {claim['statement']} — {claim['verdict']}",
                       "rows": [_forest_row(c["label"], c["metric"], c, c["verdict"]) for c in contrasts],
                       "unit": "points" if contrasts and percent_metric(contrasts[0]["metric"]) else ""})
    return panels
