"""The paper's information-geometric metrics, batched over leading dimensions, computed in float64.

For a representation X (S tokens x H hidden) and an update X' = X + dX:

- eRank(X) = exp(-sum_i p_i log p_i), p_i = sigma_i / sum_j sigma_j (singular values of X).
- RID = dS + dD with dS = |eRank(X') - eRank(X)| / min(S, H) and
  dD = (||(I - P_C(X)) X'||_F + ||X' (I - P_R(X))||_F) / (2 ||X'||_F), P_C / P_R the orthogonal projectors on the
  rank-r column (token) and row (hidden) spaces of X. r follows a `RankRule` (default: 99% of spectral energy).
- TME(X) = mean_t H(P_t.), P_tj proportional to (cos(x_t, x_j) + 1) / 2; MixIG = TME(X') - TME(X).

All functions accept tensors of shape (..., S, H) and return tensors of shape (...).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

RANK_RULES = ("energy", "tol", "fixed")


@dataclass(frozen=True)
class RankRule:
    """How many singular directions span the subspaces P_C and P_R.

    - ("energy", q): the smallest r whose top singular values hold a share q of sum(sigma^2) (default q = 0.99);
    - ("tol", t): numerical rank, sigma_i > t * sigma_max;
    - ("fixed", r): r directions (capped at min(S, H)).
    """

    kind: str = "energy"
    value: float = 0.99

    def __post_init__(self):
        if self.kind not in RANK_RULES:
            raise ValueError(f"rank rule {self.kind!r} is not one of {RANK_RULES}")
        if self.kind == "energy" and not 0 < self.value <= 1:
            raise ValueError(f"energy share must lie in (0, 1], got {self.value}")

    def rank(self, s: torch.Tensor) -> torch.Tensor:
        """Rank per matrix from its singular values s (..., k), sorted descending."""
        k = s.shape[-1]
        if self.kind == "fixed":
            return torch.full(s.shape[:-1], min(int(self.value), k), dtype=torch.long, device=s.device)
        if self.kind == "tol":
            return (s > self.value * s[..., :1]).sum(-1)
        e = (s**2).cumsum(-1)
        total = e[..., -1:].clamp_min(torch.finfo(s.dtype).tiny)
        # the first index whose cumulative share reaches q, plus one (tolerant to rounding at q = 1)
        return ((e / total) < self.value - 1e-12).sum(-1).clamp(max=k - 1) + 1

    def describe(self) -> str:
        return {"energy": f"smallest r holding {self.value:.0%} of the spectral energy",
                "tol": f"numerical rank, sigma > {self.value:g} sigma_max",
                "fixed": f"fixed r = {int(self.value)}"}[self.kind]


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(dim)


def erank_from_singular_values(s: torch.Tensor) -> torch.Tensor:
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(s.dtype).tiny)
    er = torch.exp(_entropy(p))
    return torch.where(total.squeeze(-1) > 0, er, torch.zeros_like(er))  # the zero matrix has eRank 0


def erank(x: torch.Tensor) -> torch.Tensor:
    """Effective rank of each (S, H) matrix."""
    return erank_from_singular_values(torch.linalg.svdvals(_f64(x)))


@dataclass
class RID:
    dS: torch.Tensor
    dD: torch.Tensor
    rank: torch.Tensor  # r used for the projectors of X
    erank_in: torch.Tensor
    erank_out: torch.Tensor

    @property
    def rid(self) -> torch.Tensor:
        return self.dS + self.dD


def rid(x: torch.Tensor, x_new: torch.Tensor, rule: RankRule = RankRule()) -> RID:
    """Residual innovation dimension of the update x -> x_new (both (..., S, H))."""
    if x.shape != x_new.shape:
        raise ValueError(f"rid needs equal shapes, got {tuple(x.shape)} and {tuple(x_new.shape)}")
    x, y = _f64(x), _f64(x_new)
    S, H = x.shape[-2:]
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    s_new = torch.linalg.svdvals(y)
    er_in, er_out = erank_from_singular_values(s), erank_from_singular_values(s_new)
    dS = (er_out - er_in).abs() / min(S, H)
    r = rule.rank(s)
    keep = (torch.arange(s.shape[-1], device=s.device) < r[..., None]).to(x.dtype)  # (..., k)
    ur = u * keep[..., None, :]
    vr = vh * keep[..., :, None]
    col_resid = y - ur @ (ur.transpose(-1, -2) @ y)
    row_resid = y - (y @ vr.transpose(-1, -2)) @ vr
    norm = torch.linalg.matrix_norm(y).clamp_min(torch.finfo(y.dtype).tiny)
    dD = (torch.linalg.matrix_norm(col_resid) + torch.linalg.matrix_norm(row_resid)) / (2 * norm)
    return RID(dS=dS, dD=dD, rank=r, erank_in=er_in, erank_out=er_out)


def tme(x: torch.Tensor) -> torch.Tensor:
    """Token-mixing entropy: mean over tokens of the entropy (nats) of the cosine-similarity mixing distribution."""
    x = _f64(x)
    xn = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-300)
    w = (xn @ xn.transpose(-1, -2) + 1.0) / 2.0
    p = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
    return _entropy(p).mean(-1)


def mixig(x: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
    """Token-mixing information gain of the update x -> x_new."""
    return tme(x_new) - tme(x)


def update_metrics(x: torch.Tensor, dx: torch.Tensor, rule: RankRule = RankRule()) -> dict[str, torch.Tensor]:
    """Every metric of one update x -> x + dx, in one place (keys: erank_in, erank_out, dS, dD, rid, mixig, rank)."""
    x = _f64(x)
    y = x + _f64(dx)
    r = rid(x, y, rule)
    t_in, t_out = tme(x), tme(y)
    return {"erank_in": r.erank_in, "erank_out": r.erank_out, "dS": r.dS, "dD": r.dD, "rid": r.rid,
            "mixig": t_out - t_in, "tme_in": t_in, "rank": r.rank.to(torch.float64)}
