"""Uncertainty of results over seeds: means with Student-t 95 % intervals, and paired differences between
methods trained with the same seeds on the same split (the paired design removes the seed-to-seed
variation the methods share, so smaller effects become visible), with Holm's correction over the
comparisons made against one reference."""
from __future__ import annotations

import math


def student_t_cdf(x: float, df: float) -> float:
    """P(T ≤ x) for Student's t with df degrees of freedom (regularised incomplete beta, continued fraction)."""
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    if x == 0:
        return 0.5
    tail = 0.5 * _regularised_beta(df / (df + x * x), df / 2, 0.5)
    return 1 - tail if x > 0 else tail


def _regularised_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by Lentz's continued fraction (Numerical Recipes' betacf), accurate to ~1e-12."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1) / (a + b + 2):
        return 1 - _regularised_beta(1 - x, b, a)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return math.exp(log_front) * result / a


def student_t_quantile(p: float, df: float) -> float:
    """x with P(T ≤ x) = p, by bisection on the CDF."""
    return _quantile(lambda x: student_t_cdf(x, df), p, -1.0)


def f_cdf(x: float, df1: float, df2: float) -> float:
    """P(F ≤ x) for the F distribution with (df1, df2) degrees of freedom: I_{df1·x/(df1·x + df2)}(df1/2, df2/2)."""
    if df1 <= 0 or df2 <= 0:
        raise ValueError("degrees of freedom must be positive")
    return 0.0 if x <= 0 else _regularised_beta(df1 * x / (df1 * x + df2), df1 / 2, df2 / 2)


def f_quantile(p: float, df1: float, df2: float) -> float:
    """x with P(F ≤ x) = p, by bisection on the CDF."""
    return _quantile(lambda x: f_cdf(x, df1, df2), p, 0.0)


def _quantile(cdf, p: float, low: float) -> float:
    """Bisection for cdf(x) = p; `low` is a lower bracket (0 for a positive variable, else doubled downwards)."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    high = 1.0
    while low < 0 and cdf(low) > p:
        low *= 2
    while cdf(high) < p:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if cdf(middle) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return (low + high) / 2


def mean_interval(values: list[float], level: float = 0.95) -> dict:
    """mean, sample std (n−1), and the Student-t interval for the mean; a single value has no interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "std": 0.0, "ci_low": None, "ci_high": None, "n": n, "values": list(values)}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = student_t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n, "values": list(values)}


NO_SPREAD = 1e-12  # a spread (or mean) this small against the values is float rounding, not a measurement


def paired_difference(values: list[float], reference: list[float], level: float = 0.95) -> dict:
    """The mean of values[i] − reference[i] (same seed i), its Student-t interval and two-sided p-value. Equal
    differences on every seed have no spread to test against: p is 1 where they are all 0 and None (not
    tested) otherwise — with a few seeds and accuracies that move in steps of one image, identical nonzero
    differences are a coincidence of the steps, not certainty (p = 0 would call them significant)."""
    if len(values) != len(reference):
        raise ValueError("a paired difference needs one value per seed on both sides")
    differences = [a - b for a, b in zip(values, reference)]
    result = mean_interval(differences, level)
    n, std = len(differences), result["std"]
    if n < 2:
        result["p"] = None
    elif std <= NO_SPREAD * max(1.0, abs(result["mean"])):  # equal up to float rounding
        result["p"] = 1.0 if abs(result["mean"]) <= NO_SPREAD else None
    else:
        t = result["mean"] / (std / math.sqrt(n))
        result["p"] = 2 * (1 - student_t_cdf(abs(t), n - 1))
    return result


def holm_adjusted(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's adjusted p-values: the i-th smallest p times (m − i + 1), made non-decreasing, at most 1 (None:
    not tested). A hypothesis is rejected at family-wise level alpha exactly when its adjusted p ≤ alpha."""
    tested = sorted((p, name) for name, p in p_values.items() if p is not None)
    adjusted: dict[str, float | None] = {name: None for name in p_values}
    running = 0.0
    for rank, (p, name) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[name] = running
    return adjusted


def holm(p_values: dict[str, float | None], alpha: float = 0.05) -> dict[str, bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level alpha (None: not tested)."""
    return {name: p is not None and p <= alpha for name, p in holm_adjusted(p_values).items()}


# Pooling effects measured on several worlds (or studies), each world a random draw (METHOD "Benchmark worlds").
# Inverse-variance weights only change the estimate when the worlds' own (within-world) variances differ;
# below this ratio of the largest to the smallest, every world weighs the same.
VARIANCE_RATIO = 4.0


def variance_ratio_limit(worlds: int, df: int | None, alpha: float = 0.05) -> float:
    """The largest/smallest within-world variance ratio above which the variances "differ a lot": more than
    VARIANCE_RATIO, and more than seed noise alone reaches with probability alpha when the variances are
    equal and estimated with `df` degrees of freedom each (Hartley's F_max, bounded by Bonferroni over the
    ordered world pairs: the F(df, df) quantile at 1 − alpha / (W(W − 1))). With few seeds the estimates
    scatter widely, and a fixed ratio alone would switch estimators on noise."""
    if df is None or df < 1:
        return VARIANCE_RATIO
    return max(VARIANCE_RATIO, f_quantile(1 - alpha / (worlds * (worlds - 1)), df, df))


def mean_of_effects(effects: list[float], level: float = 0.95) -> dict:
    """The mean of per-world effects with a Student-t interval on W − 1 degrees of freedom and its
    two-sided p-value: every world weighs the same and the interval needs no between-world variance
    estimate (which a handful of worlds cannot give reliably)."""
    result = paired_difference(list(effects), [0.0] * len(effects), level)
    n = len(effects)
    return {**result, "se": result["std"] / math.sqrt(n), "df": n - 1, "estimator": "mean of worlds, Student-t"}


def dersimonian_laird(effects: list[float], variances: list[float], level: float = 0.95) -> dict:
    """Random-effects pooling: DerSimonian–Laird's moment estimate τ² of the between-world variance, weights
    1/(v_w + τ²), and the Hartung–Knapp interval (Student-t on W − 1 df with the weighted spread of the
    effects), which keeps its coverage with few worlds where the normal-based DL interval does not.
    With equal v_w it is exactly mean_of_effects."""
    k = len(effects)
    if k < 2 or len(variances) != k or not all(math.isfinite(v) and v > 0 for v in variances):
        raise ValueError("DerSimonian–Laird needs two or more effects, each with a positive variance")
    weights = [1 / v for v in variances]
    total = sum(weights)
    fixed = sum(w * d for w, d in zip(weights, effects)) / total
    q = sum(w * (d - fixed) ** 2 for w, d in zip(weights, effects))
    scale = total - sum(w * w for w in weights) / total
    tau2 = max(0.0, (q - (k - 1)) / scale) if scale > 0 else 0.0
    weights = [1 / (v + tau2) for v in variances]
    total = sum(weights)
    mean = sum(w * d for w, d in zip(weights, effects)) / total
    se = math.sqrt(sum(w * (d - mean) ** 2 for w, d in zip(weights, effects)) / (k - 1) / total)
    half = student_t_quantile(0.5 + level / 2, k - 1) * se
    p = (1.0 if mean == 0 else 0.0) if se == 0 else 2 * (1 - student_t_cdf(abs(mean) / se, k - 1))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "p": p, "se": se, "df": k - 1,
            "tau2": tau2, "q": q, "weights": [w / total for w in weights], "n": k,
            "estimator": "DerSimonian–Laird, Hartung–Knapp t"}


def pool_effects(effects: list[float], variances: list[float] | None = None, level: float = 0.95,
                 df: int | None = None) -> dict:
    """Pooled effect over worlds treated as random, by one rule: the mean of the worlds with a Student-t
    interval (mean_of_effects), unless every world has a positive within-world variance and the largest
    is more than variance_ratio_limit (from `df`, the degrees of freedom of each variance) times the
    smallest; then DerSimonian–Laird (dersimonian_laird), which weighs the precisely measured worlds more.
    `why` says which case applied."""
    if len(effects) < 2:
        raise ValueError("pooling over worlds needs at least two worlds")
    usable = variances is not None and all(v is not None and math.isfinite(v) and v > 0 for v in variances)
    ratio = max(variances) / min(variances) if usable else None
    limit = variance_ratio_limit(len(effects), df)
    if usable and ratio > limit:
        result = dersimonian_laird(effects, variances, level)
        why = f"within-world variances differ {ratio:.1f}× (> {limit:.1f}×): inverse-variance weights"
    else:
        result = mean_of_effects(effects, level)
        why = (f"within-world variances within {limit:.1f}× ({ratio:.1f}×): worlds weigh the same"
               if usable else "no within-world variance for every world: worlds weigh the same")
    return {**result, "variance_ratio": ratio, "variance_ratio_limit": limit, "why": why}
