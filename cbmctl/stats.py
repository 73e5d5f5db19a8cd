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
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    low, high = -1.0, 1.0
    while student_t_cdf(low, df) > p:
        low *= 2
    while student_t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if student_t_cdf(middle, df) < p:
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


def paired_difference(values: list[float], reference: list[float], level: float = 0.95) -> dict:
    """The mean of values[i] − reference[i] (same seed i), its Student-t interval and two-sided p-value."""
    if len(values) != len(reference):
        raise ValueError("a paired difference needs one value per seed on both sides")
    differences = [a - b for a, b in zip(values, reference)]
    result = mean_interval(differences, level)
    n, std = len(differences), result["std"]
    if n < 2:
        result["p"] = None
    elif std == 0:
        result["p"] = 1.0 if result["mean"] == 0 else 0.0
    else:
        t = result["mean"] / (std / math.sqrt(n))
        result["p"] = 2 * (1 - student_t_cdf(abs(t), n - 1))
    return result


def holm(p_values: dict[str, float | None], alpha: float = 0.05) -> dict[str, bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level alpha (None: not tested)."""
    tested = sorted((p, name) for name, p in p_values.items() if p is not None)
    rejected = {name: False for name in p_values}
    for rank, (p, name) in enumerate(tested):
        if p > alpha / (len(tested) - rank):
            break
        rejected[name] = True
    return rejected
