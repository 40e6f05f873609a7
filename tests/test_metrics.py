"""Closed-form cases for eRank, RID (dS, dD), TME and MixIG, and for every field of MetricSpec."""
import math
from dataclasses import replace

import pytest
import torch

from lostattn.residual.metrics import (FLOAT32_EPS, MetricSpec, RankRule, Stream, as_spec, erank, mixig, rid, tme,
                              update_metrics)

TEXT = MetricSpec.paper_text()
OFFICIAL = MetricSpec.official()


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
    assert tme(x, TEXT).item() == pytest.approx(math.log(9), rel=1e-12)


def test_tme_of_orthogonal_tokens_closed_form():
    # cosines: 1 on the diagonal, 0 elsewhere -> weights 1 and 1/2; S tokens
    S = 5
    p_self = 1 / (1 + (S - 1) / 2)
    p_other = 0.5 * p_self
    h = -(p_self * math.log(p_self) + (S - 1) * p_other * math.log(p_other))
    assert tme(torch.eye(S, dtype=torch.float64) * 3, TEXT).item() == pytest.approx(h, rel=1e-12)


def test_tme_invariances():
    x = torch.randn(11, 7, dtype=torch.float64)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tme(x[perm], TEXT), tme(x, TEXT))  # token order (mean over rows)
    for spec in (TEXT, OFFICIAL):
        torch.testing.assert_close(tme(x * torch.rand(11, 1, dtype=torch.float64) + 0, spec), tme(x, spec))  # scale
        torch.testing.assert_close(tme(-3.0 * x, spec), tme(x, spec))  # a global sign leaves every cosine
    keep_last = torch.cat([perm[perm != 10], torch.tensor([10])])
    torch.testing.assert_close(tme(x[keep_last], OFFICIAL), tme(x, OFFICIAL))  # "last": only the last token's row


def test_mixig_signs():
    x = torch.eye(6, dtype=torch.float64)
    towards_mean = x + 5 * torch.ones(6, 6, dtype=torch.float64) / 6  # tokens become alike: more mixing
    for spec in (TEXT, OFFICIAL):
        assert mixig(x, towards_mean, spec).item() > 0
        assert mixig(towards_mean, x, spec).item() < 0
        assert mixig(x, 2 * x, spec).item() == pytest.approx(0.0, abs=1e-12)


def test_update_metrics_agrees_with_parts():
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    d = torch.randn(2, 9, 5, dtype=torch.float64)
    for spec in (None, TEXT, OFFICIAL, RankRule("fixed", 2)):
        m = update_metrics(x, d, spec)
        r = rid(x, x + d, spec)
        torch.testing.assert_close(m["rid"], r.rid)
        torch.testing.assert_close(m["mixig"], mixig(x, x + d, spec))
        torch.testing.assert_close(m["tme_delta"], tme(d, spec))
        torch.testing.assert_close(m["mixig_delta"], tme(d, spec) - tme(x, spec))
        torch.testing.assert_close(m["erank_out"], erank(x + d))
        assert set(m) >= {"dS", "dD", "rid", "mixig", "erank_in", "erank_out", "tme_in", "projector_rank"}


# --- MetricSpec -----------------------------------------------------------------------------------------------------

def test_presets_and_names():
    o, t = MetricSpec.official(), MetricSpec.paper_text()
    assert (o.tme_alpha, o.tme_rows, o.tme_normalize, o.dd_combine, o.ffn_reference, o.mixig_on) == \
        (8.0, "last", True, "l2", "input", "states")
    assert o.rank == RankRule("numerical", FLOAT32_EPS)
    assert (t.tme_alpha, t.tme_rows, t.tme_normalize, t.dd_combine, t.ffn_reference) == \
        (1.0, "mean", False, "mean", "mid")
    assert t.rank == RankRule("energy", 0.99)
    assert (o.name, t.name) == ("official", "paper_text")
    assert MetricSpec.named("official") == o and MetricSpec.named("paper_text") == t
    with pytest.raises(ValueError, match="official.*paper_text"):
        MetricSpec.named("paper")
    assert replace(o, tme_rows="mean").name == "official[tme_rows=mean]"
    assert replace(t, rank=RankRule("tol", 1e-10)).name == "paper_text[rank=tol:1e-10]"
    assert replace(t, rank=RankRule("tol", 1e-10)).base == "paper_text"
    for spec in (o, t, replace(o, dd_combine="sum")):
        d = spec.to_dict()
        assert d["name"] == spec.name and MetricSpec.from_dict(d) == spec
        assert "\n" not in spec.describe() and spec.describe().startswith(spec.name)
    assert as_spec(None) == o and as_spec("paper_text") == t
    assert as_spec(RankRule("fixed", 3)) == replace(t, rank=RankRule("fixed", 3))
    with pytest.raises(ValueError, match="tme_rows"):
        MetricSpec(tme_rows="first")
    with pytest.raises(ValueError, match="dd_combine"):
        MetricSpec(dd_combine="max")
    with pytest.raises(TypeError):
        as_spec(3)


def _orthogonal_tme(S, alpha):
    # cosines 1 (self) and 0 (others): weights 1 and 2^-alpha
    p_self = 1 / (1 + (S - 1) * 2.0**-alpha)
    p_other = p_self * 2.0**-alpha
    return -(p_self * math.log(p_self) + (S - 1) * p_other * math.log(p_other))


@pytest.mark.parametrize("alpha", [1.0, 2.0, 8.0])
def test_tme_sharpening_closed_form(alpha):
    S = 6
    x = torch.eye(S, dtype=torch.float64) * 2
    for rows in ("last", "mean"):  # every row of orthogonal tokens has the same distribution
        spec = MetricSpec(tme_alpha=alpha, tme_rows=rows, tme_normalize=False)
        assert tme(x, spec).item() == pytest.approx(_orthogonal_tme(S, alpha), rel=1e-12)
    norm = MetricSpec(tme_alpha=alpha)
    assert tme(x, norm).item() == pytest.approx(_orthogonal_tme(S, alpha) / math.log(S), rel=1e-12)


def test_tme_last_vs_mean_rows_closed_form():
    # tokens e1, e1, e2: the last token is orthogonal to the two others, which are identical
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    a = 2.0  # weights 1 (cos 1), 1/2^a (cos 0)
    h = lambda w: -sum(v / sum(w) * math.log(v / sum(w)) for v in w)  # noqa: E731
    last = h([0.5**a, 0.5**a, 1.0])
    first_rows = h([1.0, 1.0, 0.5**a])
    spec = MetricSpec(tme_alpha=a, tme_normalize=False)
    assert tme(x, replace(spec, tme_rows="last")).item() == pytest.approx(last, rel=1e-12)
    assert tme(x, replace(spec, tme_rows="mean")).item() == pytest.approx((2 * first_rows + last) / 3, rel=1e-12)
    assert tme(x, replace(spec, tme_rows="last", tme_normalize=True)).item() == \
        pytest.approx(last / math.log(3), rel=1e-12)


def test_normalised_tme_of_identical_tokens_is_one_and_mixig_bounded():
    x = torch.randn(1, 7, dtype=torch.float64).repeat(12, 1)
    for rows in ("last", "mean"):
        assert tme(x, MetricSpec(tme_rows=rows)).item() == pytest.approx(1.0, rel=1e-12)
    g = torch.Generator().manual_seed(0)
    same = torch.randn(1, 12, dtype=torch.float64).repeat(12, 1)
    orth = torch.eye(12, dtype=torch.float64)
    xs = torch.cat([torch.randn(10, 12, 12, generator=g, dtype=torch.float64), same[None].expand(10, 12, 12)])
    ys = torch.cat([same[None].expand(10, 12, 12), orth[None].expand(10, 12, 12)])
    for rows in ("last", "mean"):
        spec = MetricSpec(tme_rows=rows)
        t = tme(torch.cat([xs, ys]), spec)
        assert ((t >= 0) & (t <= 1 + 1e-12)).all()
        m = mixig(xs, ys, spec)
        assert (m.abs() <= 1 + 1e-12).all()
        assert m[:10].min() > 0.5 and m[10:].max() < -0.8  # random -> identical tokens, identical -> orthogonal


def test_mixig_on_states_or_updates():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 10, 16, generator=g, dtype=torch.float64)
    d = torch.randn(2, 10, 16, generator=g, dtype=torch.float64)
    on_states, on_updates = OFFICIAL, replace(OFFICIAL, mixig_on="updates")
    a, b = update_metrics(x, d, on_states), update_metrics(x, d, on_updates)
    torch.testing.assert_close(a["mixig"], tme(x + d, on_states) - tme(x, on_states))
    torch.testing.assert_close(b["mixig"], tme(d, on_states) - tme(x, on_states))
    torch.testing.assert_close(a["mixig_delta"], b["mixig"])
    torch.testing.assert_close(b["mixig_state"], a["mixig"])


def _rank_one(S, H, i, j, a):
    m = torch.zeros(S, H, dtype=torch.float64)
    m[i, j] = a
    return m


def test_dd_combinations_closed_form():
    # X = a e1 f1^T (rank 1); dX = b e1 f2^T + c e2 f2^T: the part c e2 f2^T leaves the column space, the whole of
    # dX leaves the row space, so r_col = c / ||X'||, r_row = sqrt(b^2 + c^2) / ||X'||
    a, b, c = 2.0, 1.0, 0.5
    x = _rank_one(6, 5, 0, 0, a)
    y = x + _rank_one(6, 5, 0, 1, b) + _rank_one(6, 5, 1, 1, c)
    ny = math.sqrt(a * a + b * b + c * c)
    rc, rr = c / ny, math.sqrt(b * b + c * c) / ny
    expected = {"mean": (rc + rr) / 2, "l2": math.hypot(rc, rr), "sum": rc + rr}
    for how, v in expected.items():
        for rule in (RankRule("fixed", 1), RankRule("numerical", FLOAT32_EPS), RankRule("tol", 1e-10)):
            spec = replace(OFFICIAL, dd_combine=how, rank=rule)
            assert rid(x, y, spec).dD.item() == pytest.approx(v, rel=1e-12)
            assert rid(x.T, y.T, spec).dD.item() == pytest.approx(v, rel=1e-12)  # col and row swap, sum symmetric


def test_l2_vs_mean_on_an_orthogonal_update():
    a, b = 2.0, 1.5
    x = _rank_one(5, 4, 0, 0, a)
    y = x + _rank_one(5, 4, 1, 1, b)  # orthogonal in token and hidden space: r_col = r_row = b / ||X'||
    r = b / math.hypot(a, b)
    assert rid(x, y, TEXT).dD.item() == pytest.approx(r, rel=1e-12)
    assert rid(x, y, OFFICIAL).dD.item() == pytest.approx(math.sqrt(2) * r, rel=1e-12)


def _with_spectrum(S, H, sigma, seed):
    u = torch.linalg.qr(torch.randn(S, len(sigma), generator=torch.Generator().manual_seed(seed),
                                    dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(H, len(sigma), generator=torch.Generator().manual_seed(seed + 1),
                                    dtype=torch.float64))[0]
    return u @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) @ v.T


def test_numerical_rank_closed_form():
    # sigma = 1, 1e-2, 1e-5, 1e-6, 1e-9 in a 20 x 30 matrix: thresholds max(S, H) eps sigma_max = 30 eps
    x = _with_spectrum(20, 30, [1.0, 1e-2, 1e-5, 1e-6, 1e-9], 0)
    s = torch.linalg.svdvals(x)
    assert RankRule("numerical", FLOAT32_EPS).rank(s, 30).item() == 3  # 30 * 1.19e-7 = 3.6e-6
    assert RankRule("numerical", torch.finfo(torch.float64).eps).rank(s, 30).item() == 5  # 6.7e-15
    y = x + 0.1 * torch.randn(20, 30, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert rid(x, y, OFFICIAL).rank.item() == 3
    assert rid(x, y, replace(OFFICIAL, rank=RankRule("numerical", 2.2e-16))).rank.item() == 5
    with pytest.raises(ValueError, match="max"):
        RankRule("numerical", FLOAT32_EPS).rank(s)
    # a full-rank X with S <= H: P_C is the identity, only the part of X' outside X's row space is new
    x = torch.randn(8, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = x + torch.randn(8, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    vh = torch.linalg.svd(x, full_matrices=False)[2]
    row = torch.linalg.matrix_norm(y - y @ vh.T @ vh) / torch.linalg.matrix_norm(y)
    r = rid(x, y, OFFICIAL)
    assert r.rank.item() == 8 and r.dD.item() == pytest.approx(row.item(), rel=1e-10)


def test_ffn_reference_input_or_mid():
    g = torch.Generator().manual_seed(4)
    x_in = torch.randn(2, 12, 24, generator=g, dtype=torch.float64)
    x_mid = x_in + 0.5 * torch.randn(2, 12, 24, generator=g, dtype=torch.float64)
    x_out = x_mid + 0.5 * torch.randn(2, 12, 24, generator=g, dtype=torch.float64)
    for spec, ref in ((OFFICIAL, x_in), (TEXT, x_mid), (replace(TEXT, ffn_reference="input"), x_in)):
        m = Stream(spec).layer(x_in, x_mid, x_out)
        r = rid(ref, x_out, spec)
        torch.testing.assert_close(m["ffn"]["dD"], r.dD)
        torch.testing.assert_close(m["ffn"]["dS"], r.dS)
        torch.testing.assert_close(m["ffn"]["erank_in"], erank(ref))
        torch.testing.assert_close(m["ffn"]["mixig"], mixig(x_mid, x_out, spec))  # MixIG: the FFN's own update
        torch.testing.assert_close(m["ffn"]["tme_delta"], tme(x_out - x_mid, spec))
        torch.testing.assert_close(m["attention"]["dD"], rid(x_in, x_mid, spec).dD)
