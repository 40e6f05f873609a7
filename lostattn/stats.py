"""The uncertainty of every number a page reports, and the rules that turn an interval into a verdict.

One result type, `Interval`: `estimate`, `low`, `high` (a two-sided interval at `level`, 95% by default),
`p_value` (None where no test is made), `n` (the samples behind it) and `unit`. The unit is the same everywhere:
accuracies and their differences Δ in **percent** (points for Δ), metric means (RID, MixIG, ε_RoPE) in the metric's
own dimensionless unit; p-values are probabilities.

- `accuracy_ci`: the Wilson score interval of 0/1 outcomes (statsmodels `proportion_confint`).
- `paired_difference`: Δ = mean(b) − mean(a) of paired 0/1 outcomes on the same samples, the Agresti–Min
  adjusted Wald interval for a paired difference of proportions (½ added to each cell of the 2×2 table; Agresti &
  Min 2005, good coverage also with few discordant pairs), and the exact McNemar p-value (statsmodels `mcnemar`).
- `equivalence`: the paired two one-sided tests (TOST) of |Δ| < margin with the same standard error, so that
  "the 95% interval lies inside ±margin" and "TOST p < 0.025" are one statement.
- `bootstrap_mean`: a seeded percentile bootstrap (scipy `bootstrap`) of the mean of per-sample values: samples
  are resampled, never tokens or layers (a sample's value is its mean over layers and tokens).

`decide` turns an interval into one of three outcomes (holds / does not hold / inconclusive at this n) for a sign
claim or a "barely changes" claim, with the number of samples that would decide an inconclusive one.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as st
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

LEVEL = 0.95
PERCENT = "%"
POINTS = "points"
BOOTSTRAP_RESAMPLES = 2000

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided interval at `level`; `p_value` None when no test is made."""

    estimate: float
    low: float
    high: float
    n: int
    unit: str
    p_value: float | None = None
    level: float = LEVEL
    method: str = ""

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """'estimate [low, high]' with the precision the interval needs (`format_interval`)."""
        return format_interval(self.estimate, self.low, self.high, signed=self.unit == POINTS)


def _binary(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size == 0:
        raise ValueError(f"{name}: no outcomes; pass at least one 0/1 value")
    if not np.isin(a, (0.0, 1.0)).all():
        raise ValueError(f"{name}: outcomes must be 0/1 (correct or not); got values such as {a[~np.isin(a, (0, 1))][0]}")
    return a


def _z(level: float) -> float:
    return float(st.norm.ppf(0.5 + level / 2))


def accuracy_ci(correct, level: float = LEVEL) -> Interval:
    """Accuracy (percent) of 0/1 outcomes with its Wilson score interval."""
    c = _binary(correct, "correct")
    k, n = int(c.sum()), c.size
    low, high = proportion_confint(k, n, alpha=1 - level, method="wilson")
    return Interval(100.0 * k / n, 100.0 * low, 100.0 * high, n, PERCENT, None, level, "Wilson score")


def _pairs(a, b):
    a, b = _binary(a, "a"), _binary(b, "b")
    if a.size != b.size:
        raise ValueError(f"paired outcomes need the same samples: {a.size} outcomes in a, {b.size} in b")
    return a, b


def _agresti_min(a, b):
    """(Δ as a fraction, the adjusted centre, its standard error, the discordant counts (b only, a only), n)."""
    n = a.size
    only_b = int(((b == 1) & (a == 0)).sum())
    only_a = int(((a == 1) & (b == 0)).sum())
    # ½ added to each of the four cells: n + 2 pairs, discordant cells + ½
    m = n + 2.0
    p_b, p_a = (only_b + 0.5) / m, (only_a + 0.5) / m
    se = math.sqrt(max((p_b + p_a) - (p_b - p_a) ** 2, 0.0) / m)
    return float(b.mean() - a.mean()), p_b - p_a, se, only_b, only_a, n


def paired_difference(a, b, level: float = LEVEL) -> Interval:
    """Δ = mean(b) − mean(a) in points for 0/1 outcomes of the same samples (a the reference, e.g. vanilla; b the
    condition), with the Agresti–Min interval and the exact McNemar p-value (H0: Δ = 0)."""
    a, b = _pairs(a, b)
    delta, centre, se, only_b, only_a, n = _agresti_min(a, b)
    z = _z(level)
    table = [[0, only_a], [only_b, 0]]  # only the discordant cells enter McNemar's test
    p = 1.0 if only_a + only_b == 0 else float(mcnemar(table, exact=True).pvalue)
    low, high = max(centre - z * se, -1.0), min(centre + z * se, 1.0)
    return Interval(100.0 * delta, 100.0 * low, 100.0 * high, n, POINTS, p, level,
                    "Agresti–Min paired interval, exact McNemar p")


def equivalence(a, b, margin: float) -> Interval:
    """Paired TOST of |Δ| < `margin` (points): `p_value` is the larger of the two one-sided p-values (small when
    Δ is shown to lie inside ±margin); the interval is the 95% Agresti–Min interval, which lies inside ±margin
    exactly when p < 0.025."""
    if not margin > 0:
        raise ValueError(f"equivalence margin must be positive (points); got {margin}")
    a, b = _pairs(a, b)
    delta, centre, se, _, _, n = _agresti_min(a, b)
    m = margin / 100.0
    if se == 0:  # cannot happen with the ½ adjustment; kept so that a future change cannot divide by zero
        p = 0.0 if abs(centre) < m else 1.0
    else:
        p_low = st.norm.sf((centre + m) / se)  # H0: Δ ≤ −margin
        p_high = st.norm.cdf((centre - m) / se)  # H0: Δ ≥ +margin
        p = float(max(p_low, p_high))
    z = _z(LEVEL)
    return Interval(100.0 * delta, 100.0 * (centre - z * se), 100.0 * (centre + z * se), n, POINTS, p, LEVEL,
                    f"paired TOST, margin ±{margin:g} points")


def bootstrap_mean(values, level: float = LEVEL, seed: int = 0, unit: str = "",
                   n_resamples: int = BOOTSTRAP_RESAMPLES) -> Interval:
    """The mean of per-sample `values` with a seeded percentile bootstrap interval (samples resampled). One value
    gives a zero-width interval at the value (nothing to resample)."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise ValueError("bootstrap_mean: no values")
    est = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):
        return Interval(est, est, est, int(x.size), unit, None, level, "percentile bootstrap over samples")
    res = st.bootstrap((x,), np.mean, confidence_level=level, n_resamples=n_resamples, method="percentile",
                       random_state=np.random.default_rng(seed), vectorized=True)
    ci = res.confidence_interval
    return Interval(est, float(ci.low), float(ci.high), int(x.size), unit, None, level,
                    f"percentile bootstrap over samples ({n_resamples} resamples, seed {seed})")


# ---- from an interval to a verdict ---------------------------------------------------------------------------
def _n_for_half_width(n: int, half_width: float, target: float) -> int | None:
    """Samples for the interval's half-width to shrink to `target` (it scales as 1/√n with the spread kept)."""
    if target <= 0 or not math.isfinite(target):
        return None
    return max(n + 1, math.ceil(n * (half_width / target) ** 2))


def decide_sign(iv: Interval, positive: bool = True, threshold: float = 0.0) -> tuple[str, int | None]:
    """A claim "the quantity is above `threshold`" (`positive`) or below it: holds when the interval lies on the
    claimed side, does not hold when it lies on the other, inconclusive otherwise; returns (outcome, n_needed),
    n_needed the samples that would make the interval exclude `threshold` with the same estimate and spread (None
    when decided, or when the estimate sits on the threshold and no n decides it)."""
    above, below = iv.low > threshold, iv.high < threshold
    if above or below:
        return (HOLDS if above == positive else FAILS), None
    return INCONCLUSIVE, _n_for_half_width(iv.n, iv.half_width, abs(iv.estimate - threshold))


def decide_within(iv: Interval, margin: float) -> tuple[str, int | None]:
    """A claim "the quantity barely changes: |Δ| < margin": holds when the interval lies inside ±margin (TOST at
    the interval's level), does not hold when it lies wholly outside, inconclusive otherwise (with n_needed as in
    `decide_sign`)."""
    if -margin < iv.low and iv.high < margin:
        return HOLDS, None
    if iv.low > margin or iv.high < -margin:
        return FAILS, None
    return INCONCLUSIVE, _n_for_half_width(iv.n, iv.half_width, abs(margin - abs(iv.estimate)))


# ---- numbers shown with the precision their interval needs ----------------------------------------------------
def decimals_for(low: float, high: float, estimate: float | None = None, max_decimals: int = 6) -> int:
    """Decimals that show an interval's half-width to two significant digits (a zero-width interval: the
    estimate's three significant digits)."""
    hw = abs(high - low) / 2 if None not in (low, high) and math.isfinite(high - low) else 0.0
    ref = hw if hw > 0 else abs(estimate or 0.0) / 10
    if ref <= 0:
        return 1
    return int(min(max(1 - math.floor(math.log10(ref)), 0), max_decimals))


def format_interval(estimate: float, low: float, high: float, signed: bool = False) -> str:
    """'0.00040 [0.00021, 0.00062]': the estimate and its interval at the precision the interval needs."""
    if estimate is None or (isinstance(estimate, float) and math.isnan(estimate)):
        return "—"
    d = decimals_for(low, high, estimate)
    sign = "+" if signed else ""
    return f"{estimate:{sign}.{d}f} [{low:{sign}.{d}f}, {high:{sign}.{d}f}]"


__all__ = ["Interval", "accuracy_ci", "paired_difference", "equivalence", "bootstrap_mean", "decide_sign",
           "decide_within", "format_interval", "decimals_for", "HOLDS", "FAILS", "INCONCLUSIVE", "PERCENT",
           "POINTS", "LEVEL"]
