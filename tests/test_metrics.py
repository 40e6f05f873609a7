"""Closed-form cases for eRank, RID (dS, dD), TME and MixIG."""
import math

import pytest
import torch

from lostattn.metrics import RankRule, erank, mixig, rid, tme, update_metrics


def _orthonormal(n, k, seed):
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_erank_identity_is_full_rank():
    for n in (1, 3, 8):
        assert erank(torch.eye(n)).item() == pytest.approx(n, abs=1e-12)


def test_erank_rank_one_is_one():
    u, v = torch.randn(7, 1), torch.randn(1, 5)
    assert erank(u @ v).item() == pytest.approx(1.0, abs=1e-6)


def test_erank_two_equal_and_unequal_singular_values():
    # sigma = (3, 1): p = (3/4, 1/4), eRank = exp(H(p))
    u, v = _orthonormal(6, 2, 0), _orthonormal(4, 2, 1)
    x = u @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ v.T
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert erank(x).item() == pytest.approx(math.exp(h), rel=1e-10)
    assert erank(u @ v.T).item() == pytest.approx(2.0, rel=1e-10)


def test_erank_scale_invariant_and_batched():
    x = torch.randn(3, 10, 6, dtype=torch.float64)
    e = erank(x)
    assert e.shape == (3,)
    torch.testing.assert_close(erank(5.0 * x), e)
    torch.testing.assert_close(e[1], erank(x[1]))


def test_erank_of_zero_matrix_is_zero():
    assert erank(torch.zeros(4, 3)).item() == 0.0


def test_rid_of_scaling_update_is_zero():
    x = torch.randn(12, 8, dtype=torch.float64)
    r = rid(x, 1.7 * x, RankRule("tol", 1e-10))
    assert r.dS.item() == pytest.approx(0.0, abs=1e-12)
    assert r.dD.item() == pytest.approx(0.0, abs=1e-12)


def test_rid_update_inside_subspaces_is_dS_only():
    u, v = _orthonormal(10, 3, 2), _orthonormal(6, 3, 3)
    x = u @ torch.diag(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)) @ v.T
    x_new = u @ torch.diag(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)) @ v.T  # same spaces, new spectrum
    r = rid(x, x_new, RankRule("tol", 1e-10))
    expected = abs(3.0 - erank(x).item()) / 6
    assert r.dD.item() == pytest.approx(0.0, abs=1e-12)
    assert r.dS.item() == pytest.approx(expected, rel=1e-10)
    assert r.rid.item() == pytest.approx(expected, rel=1e-10)


def test_rid_orthogonal_update_closed_form():
    # X = a e1 f1^T; dX = b e2 f2^T is orthogonal in both token and hidden space.
    a, b = 2.0, 1.5
    x = torch.zeros(5, 4, dtype=torch.float64)
    x[0, 0] = a
    y = x.clone()
    y[1, 1] = b
    r = rid(x, y, RankRule("tol", 1e-10))
    # (I - P_C) X' = b e2 f2^T, X'(I - P_R) = b e2 f2^T, ||X'|| = sqrt(a^2 + b^2)
    assert r.dD.item() == pytest.approx(b / math.sqrt(a * a + b * b), rel=1e-12)
    p = torch.tensor([a, b], dtype=torch.float64) / (a + b)
    assert r.dS.item() == pytest.approx((math.exp(-(p * p.log()).sum().item()) - 1) / 4, rel=1e-10)


def test_rid_bounds_and_rank_rules():
    x = torch.randn(20, 16, dtype=torch.float64)
    y = x + torch.randn(20, 16, dtype=torch.float64)
    for rule in (RankRule(), RankRule("tol", 1e-3), RankRule("fixed", 4)):
        r = rid(x, y, rule)
        assert 0.0 <= r.rid.item() <= 2.0
    assert rid(x, y, RankRule("fixed", 4)).rank.item() == 4
    # a fuller subspace explains more of X': dD can only fall as r grows
    dd = [rid(x, y, RankRule("fixed", k)).dD.item() for k in (2, 8, 16)]
    assert dd[0] >= dd[1] >= dd[2]
    # at full rank the row space of a 20x16 matrix is all of R^16 (no row residual) and only the part of X'
    # outside the 16-dim column space remains
    u = torch.linalg.svd(x, full_matrices=False)[0]
    col = torch.linalg.matrix_norm(y - u @ (u.T @ y)) / (2 * torch.linalg.matrix_norm(y))
    assert dd[2] == pytest.approx(col.item(), rel=1e-10)


def test_energy_rule_counts_spectral_share():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)  # energies 9, 4, 1 of 14
    assert RankRule("energy", 0.6).rank(s).item() == 1
    assert RankRule("energy", 0.9).rank(s).item() == 2
    assert RankRule("energy", 0.99).rank(s).item() == 3
    assert RankRule("energy", 1.0).rank(s).item() == 3


def test_rank_rule_rejects_bad_input():
    with pytest.raises(ValueError, match="not one of"):
        RankRule("bogus", 1)
    with pytest.raises(ValueError, match="equal shapes"):
        rid(torch.zeros(3, 2), torch.zeros(2, 3))


def test_tme_of_identical_tokens_is_log_S():
    x = torch.randn(1, 6, dtype=torch.float64).repeat(9, 1)
    assert tme(x).item() == pytest.approx(math.log(9), rel=1e-12)


def test_tme_of_orthogonal_tokens_closed_form():
    # cosines: 1 on the diagonal, 0 elsewhere -> weights 1 and 1/2; S tokens
    S = 5
    p_self = 1 / (1 + (S - 1) / 2)
    p_other = 0.5 * p_self
    h = -(p_self * math.log(p_self) + (S - 1) * p_other * math.log(p_other))
    assert tme(torch.eye(S, dtype=torch.float64) * 3).item() == pytest.approx(h, rel=1e-12)


def test_tme_invariances():
    x = torch.randn(11, 7, dtype=torch.float64)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tme(x[perm]), tme(x))  # token order
    torch.testing.assert_close(tme(x * torch.rand(11, 1, dtype=torch.float64) + 0), tme(x))  # per-token scale
    torch.testing.assert_close(tme(-3.0 * x), tme(x))  # sign flips every cosine? no: (-x).(-y) = x.y


def test_mixig_signs():
    x = torch.eye(6, dtype=torch.float64)
    towards_mean = x + 5 * torch.ones(6, 6, dtype=torch.float64) / 6  # tokens become alike: more mixing
    assert mixig(x, towards_mean).item() > 0
    assert mixig(towards_mean, x).item() < 0
    assert mixig(x, 2 * x).item() == pytest.approx(0.0, abs=1e-12)


def test_update_metrics_agrees_with_parts():
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    d = torch.randn(2, 9, 5, dtype=torch.float64)
    m = update_metrics(x, d)
    r = rid(x, x + d)
    torch.testing.assert_close(m["rid"], r.rid)
    torch.testing.assert_close(m["mixig"], mixig(x, x + d))
    torch.testing.assert_close(m["erank_out"], erank(x + d))
