"""`update_metrics` against an independent float64 implementation of both presets, written here from the
definitions (numpy, thin SVDs, explicit projections; nothing shared with lostattn)."""
import math

import numpy as np
import pytest
import torch

from lostattn.residual.metrics import MetricSpec, update_metrics

EPS32 = float(np.finfo(np.float32).eps)

# The official code (utils/interp_utils.py): TME with w = ((cos + 1) / 2)^8 on the last token's row, entropy / log S;
# dD = sqrt(r_col^2 + r_row^2); r = numerical rank sigma > max(S, H) eps sigma_max (float32 states). The paper
# text: alpha 1, mean over rows, nats, (r_col + r_row) / 2, 99% of the spectral energy.
PRESETS = {
    "official": dict(alpha=8.0, rows="last", normalize=True, combine="l2", rank=("numerical", EPS32)),
    "paper_text": dict(alpha=1.0, rows="mean", normalize=False, combine="mean", rank=("energy", 0.99)),
}


def _entropy(p):
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _erank(s):
    return math.exp(_entropy(s / s.sum())) if s.sum() > 0 else 0.0


def _rank(s, kind, value, size):
    if kind == "numerical":
        return int((s > size * value * s[0]).sum())
    share = np.cumsum(s**2) / (s**2).sum()
    return int(np.searchsorted(share, value - 1e-12) + 1)


def _tme(x, alpha, rows, normalize):
    S = x.shape[0]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(norms > 0, norms, 1)
    queries = xn[-1:] if rows == "last" else xn
    hs = []
    for q in queries:
        w = ((xn @ q + 1) / 2) ** alpha
        hs.append(_entropy(w / w.sum()))
    h = float(np.mean(hs))
    return h / math.log(S) if normalize else h


def reference_metrics(x, dx, preset, reference=None):
    p = PRESETS[preset]
    x, dx = np.asarray(x, np.float64), np.asarray(dx, np.float64)
    y = x + dx
    ref = x if reference is None else np.asarray(reference, np.float64)
    u, s, vt = np.linalg.svd(ref, full_matrices=False)
    s_new = np.linalg.svd(y, compute_uv=False)
    r = _rank(s, *p["rank"], size=max(x.shape))
    pc = u[:, :r] @ u[:, :r].T  # projector on the column (token) space of the reference
    pr = vt[:r].T @ vt[:r]  # on its row (hidden) space
    ny = np.linalg.norm(y)
    r_col = np.linalg.norm(y - pc @ y) / ny
    r_row = np.linalg.norm(y - y @ pr) / ny
    dD = math.hypot(r_col, r_row) if p["combine"] == "l2" else (r_col + r_row) / 2
    dS = abs(_erank(s_new) - _erank(s)) / min(x.shape)
    t = {k: _tme(v, p["alpha"], p["rows"], p["normalize"]) for k, v in (("in", x), ("out", y), ("delta", dx))}
    return {"erank_in": _erank(s), "erank_out": _erank(s_new), "dS": dS, "dD": dD, "rid": dS + dD, "projector_rank": r,
            "tme_in": t["in"], "tme_out": t["out"], "tme_delta": t["delta"], "mixig": t["out"] - t["in"],
            "mixig_state": t["out"] - t["in"], "mixig_delta": t["delta"] - t["in"]}


def _residual_like(rng, S, H):
    x = rng.standard_normal((S, H))
    x += (rng.standard_normal((S, 3)) * [20.0, 8.0, 3.0]) @ rng.standard_normal((3, H))
    x[0] *= 25  # a token with massive activations
    return x


def _cases():
    rng = np.random.default_rng(0)
    for S, H in ((24, 40), (40, 24), (30, 30)):
        yield f"random {S}x{H}", rng.standard_normal((S, H)), rng.standard_normal((S, H)), None
        lr = rng.standard_normal((S, 4)) @ rng.standard_normal((4, H))
        yield f"low rank {S}x{H}", lr, 0.3 * rng.standard_normal((S, H)), None
        yield f"low rank + noise {S}x{H}", lr + 1e-3 * rng.standard_normal((S, H)), rng.standard_normal((S, H)), None
        rep = rng.standard_normal((S, H))
        rep[S // 3:S // 2] = rep[S // 3]  # repeated tokens
        yield f"repeated tokens {S}x{H}", rep, rng.standard_normal((S, H)), None
        x = _residual_like(rng, S, H)
        yield f"residual-like {S}x{H}", x, 0.2 * rng.standard_normal((S, H)) + 0.05 * x, None
        yield f"small update on a large state {S}x{H}", x, 1e-4 * rng.standard_normal((S, H)), None
        for scale in (1e3, 1e-3):
            yield f"rescaled {scale:g} {S}x{H}", scale * x, scale * rng.standard_normal((S, H)), None
        x_in = _residual_like(rng, S, H)
        yield f"against the layer input {S}x{H}", x_in + 0.3 * rng.standard_normal((S, H)), \
            0.3 * rng.standard_normal((S, H)), x_in


CASES = list(_cases())


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_update_metrics_agrees_with_independent_implementation(preset, case):
    _, x, dx, reference = case
    want = reference_metrics(x, dx, preset, reference)
    got = update_metrics(torch.from_numpy(x), torch.from_numpy(dx), MetricSpec.named(preset),
                         reference=None if reference is None else torch.from_numpy(reference))
    for k, v in want.items():
        assert float(got[k]) == pytest.approx(v, abs=1e-8, rel=1e-10), k


def test_agreement_batched_and_in_float32_inputs():
    rng = np.random.default_rng(1)
    x = np.stack([_residual_like(rng, 20, 36) for _ in range(3)]).astype(np.float32)
    dx = (0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    for preset in PRESETS:
        got = update_metrics(torch.from_numpy(x), torch.from_numpy(dx), preset)
        for b in range(3):
            want = reference_metrics(x[b], dx[b], preset)
            for k, v in want.items():
                assert float(got[k][b]) == pytest.approx(v, abs=1e-8, rel=1e-10), (b, k)
