"""lostattn.stats: closed-form cases for every statistic, agreement with statsmodels / scipy, and the verdict rules
on constructed data (a clear rise, a clear drop, a tie, an undersized sample)."""
import math

import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from lostattn.stats import (FAILS, HOLDS, INCONCLUSIVE, POINTS, accuracy_ci, bootstrap_mean, decide_sign,
                            decide_within, decimals_for, equivalence, format_interval, paired_difference)


def _wilson(k, n, z=1.959963984540054):
    """The Wilson score interval written out (Wilson 1927)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (48, 200), (171, 200)])
def test_accuracy_ci_is_the_wilson_interval_in_percent(k, n):
    iv = accuracy_ci([1] * k + [0] * (n - k))
    lo, hi = _wilson(k, n)
    assert iv.estimate == pytest.approx(100 * k / n)
    assert (iv.low, iv.high) == pytest.approx((100 * lo, 100 * hi), abs=1e-9)
    ref = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert (iv.low, iv.high) == pytest.approx((100 * ref[0], 100 * ref[1]))
    assert iv.unit == "%" and iv.n == n and iv.p_value is None


def test_accuracy_ci_rejects_what_is_not_a_0_1_outcome():
    with pytest.raises(ValueError, match="0/1"):
        accuracy_ci([1, 0, 2])
    with pytest.raises(ValueError, match="no outcomes"):
        accuracy_ci([])


def _pairs(both, only_a, only_b, neither):
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return a, b


@pytest.mark.parametrize("cells", [(50, 10, 20, 20), (90, 0, 0, 10), (5, 3, 0, 2), (100, 7, 31, 62)])
def test_paired_difference_closed_form_and_exact_mcnemar(cells):
    both, only_a, only_b, neither = cells
    a, b = _pairs(*cells)
    n = len(a)
    iv = paired_difference(a, b)
    assert iv.estimate == pytest.approx(100 * (only_b - only_a) / n)
    # Agresti–Min: ½ added to every cell, then the Wald interval of the difference of the discordant proportions
    m = n + 2
    pb, pa = (only_b + 0.5) / m, (only_a + 0.5) / m
    se = math.sqrt(((pb + pa) - (pb - pa) ** 2) / m)
    assert iv.low == pytest.approx(100 * max(pb - pa - 1.959964 * se, -1), abs=1e-4)
    assert iv.high == pytest.approx(100 * min(pb - pa + 1.959964 * se, 1), abs=1e-4)
    # exact McNemar = two-sided binomial test on the discordant pairs, as statsmodels computes it
    d = only_a + only_b
    want = 1.0 if d == 0 else binomtest(only_b, d, 0.5).pvalue
    assert iv.p_value == pytest.approx(min(want, 1.0))
    if d:
        assert iv.p_value == pytest.approx(mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)
    assert iv.unit == POINTS and iv.low <= iv.estimate <= iv.high


def test_paired_difference_needs_the_same_samples():
    with pytest.raises(ValueError, match="same samples"):
        paired_difference([1, 0], [1, 0, 1])


def test_equivalence_is_tost_consistent_with_the_interval():
    # a tie on many samples: Δ = 0, few discordant pairs -> equivalent within ±3 points
    a, b = _pairs(400, 4, 4, 392)
    eq = equivalence(a, b, margin=3)
    assert eq.estimate == 0 and eq.p_value < 0.025 and -3 < eq.low and eq.high < 3
    # the same proportions on 20 samples: no longer shown equivalent
    a, b = _pairs(10, 1, 1, 8)
    small = equivalence(a, b, margin=3)
    assert small.p_value > 0.025 and (small.low < -3 or small.high > 3)
    # a clear drop of 20 points: far from equivalent
    a, b = _pairs(100, 40, 0, 60)
    assert equivalence(a, b, margin=3).p_value > 0.99
    # p < 0.025 exactly when the 95% interval lies inside ±margin, over many constructed tables
    rng = np.random.default_rng(0)
    for _ in range(200):
        cells = rng.integers(0, 60, size=4)
        a, b = _pairs(*map(int, cells))
        if not a:
            continue
        e = equivalence(a, b, margin=5)
        assert (e.p_value < 0.025) == (-5 < e.low and e.high < 5)
    with pytest.raises(ValueError, match="margin"):
        equivalence([1], [1], margin=0)


def test_equivalence_agrees_with_statsmodels_paired_tost_on_a_large_sample():
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 2000)
    flip = rng.random(2000) < 0.05
    b = np.where(flip, 1 - a, a)
    ours = equivalence(a, b, margin=4).p_value
    theirs = ttost_paired(b.astype(float), a.astype(float), -0.04, 0.04)[0]
    assert ours == pytest.approx(theirs, abs=0.02)


def test_bootstrap_mean_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(3).normal(0.5, 0.1, 48)
    a, b = bootstrap_mean(x, seed=7), bootstrap_mean(x, seed=7)
    assert a == b and a.estimate == pytest.approx(x.mean())
    assert a.low < x.mean() < a.high
    # the percentile interval of the mean is close to the normal one, ± 1.96 s/√n
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert a.half_width == pytest.approx(half, rel=0.2)
    const = bootstrap_mean([0.2, 0.2, 0.2])
    assert (const.estimate, const.low, const.high) == pytest.approx((0.2, 0.2, 0.2))


# ---- the verdict rules on constructed data ---------------------------------------------------------------------
def test_sign_rule_rise_drop_and_undersized():
    rise = bootstrap_mean(np.random.default_rng(0).normal(0.3, 0.1, 100), seed=0)
    drop = bootstrap_mean(np.random.default_rng(0).normal(-0.3, 0.1, 100), seed=0)
    assert decide_sign(rise) == (HOLDS, None)
    assert decide_sign(drop) == (FAILS, None)
    assert decide_sign(drop, positive=False) == (HOLDS, None)
    small = bootstrap_mean(np.random.default_rng(0).normal(0.05, 0.3, 6), seed=0)
    outcome, need = decide_sign(small)
    assert outcome == INCONCLUSIVE and need > 6
    # the advertised n decides it when the spread and the estimate stay as they are
    assert small.half_width * math.sqrt(6 / need) <= abs(small.estimate) + 1e-12
    assert small.half_width * math.sqrt(6 / (need - 1)) > abs(small.estimate)


def test_barely_changes_rule_tie_rise_drop_and_undersized():
    tie = paired_difference(*_pairs(300, 3, 3, 294))
    assert decide_within(tie, 3) == (HOLDS, None)
    rise = paired_difference(*_pairs(100, 0, 40, 60))
    drop = paired_difference(*_pairs(100, 40, 0, 60))
    assert decide_within(rise, 3) == (FAILS, None) and decide_within(drop, 3) == (FAILS, None)
    assert decide_sign(rise) == (HOLDS, None) and decide_sign(drop) == (FAILS, None)
    few = paired_difference(*_pairs(8, 1, 1, 10))
    outcome, need = decide_within(few, 3)
    assert outcome == INCONCLUSIVE and need > few.n


def test_precision_follows_the_interval():
    assert decimals_for(0.0002, 0.0006) == 5
    assert format_interval(0.0004, 0.0002, 0.0006) == "0.00040 [0.00020, 0.00060]"
    assert format_interval(52.34, 45.1, 59.6) == "52.3 [45.1, 59.6]"
    assert format_interval(-1.5, -4.0, 1.0, signed=True) == "-1.5 [-4.0, +1.0]"
