"""The paper's information-geometric metrics of a residual update X -> X' = X + dX (X: S tokens x H hidden), in
two presets of one `MetricSpec`:

- eRank(X) = exp(-sum_i p_i log p_i), p_i = sigma_i / sum_j sigma_j.
- RID = dS + dD, dS = |eRank(X') - eRank(X_ref)| / min(S, H); with r_col = ||(I - P_C) X'||_F / ||X'||_F and
  r_row = ||X' (I - P_R)||_F / ||X'||_F (P_C, P_R the projectors on the rank-r column and row spaces of X_ref),
  dD = (r_col + r_row) / 2 (paper text, "mean"), sqrt(r_col^2 + r_row^2) (official code, "l2") or r_col + r_row.
- TME(X): entropy of P_t., P_tj proportional to w_tj = ((cos(x_t, x_j) + 1) / 2)^alpha, over the rows t of the last
  token ("last") or averaged over all tokens ("mean"), optionally divided by log S; MixIG = TME(X') - TME(X)
  (on states) or TME(dX) - TME(X) (on the update itself).

`MetricSpec.official()` is what `utils/interp_utils.py` of the official repository computes (alpha = 8, last row,
/ log S, "l2", numerical rank, the FFN measured against the layer input); `MetricSpec.paper_text()` is the paper's
formulas as written (alpha = 1, mean over rows, nats, "mean", 99% spectral energy, the FFN against X + dX_attn).

Not reproduced from the official code: its 1e-12 regularisers (below 1e-8 here), its unnormalised dD for an
all-zero X_in, and its arithmetic in the states' dtype: in float32, ||X'||^2 - ||P_C X'||^2 leaves an r_col of 0
or up to ~3e-4 (rounding decides) where the numerical rank is full and r_col is exactly 0. Everything here is
float64 unless asked.

How the numbers are computed (the values of thin SVDs, to ~1e-11): with m = min(S, H), each state's m x m Gram
G = Z Z^T (Z = X, or X^T when S > H) gives sigma_i^2 and the singular vectors U of the smaller side by a symmetric
eigendecomposition, and the TME's cosines. The residuals are written through the update D = X' - X_ref and
C = Z_D Z_ref^T: ||(I - P) X'||^2 = sum_{i>r} sigma_i^2 + 2 sum_{i>r} u_i^T C u_i + ||D||^2 - (D's kept part),
the other side's kept part being sum_{i<=r} ||C u_i||^2 / sigma_i^2; so a small update on a large state (the usual
case at full numerical rank) cancels nothing, and with r ~ 30 (energy rule) every product is thin, O(S H r).
The Gram squares the condition number: a matrix with sigma_min / sigma_max below 1e-5 (rank-deficient states, e.g.
repeated tokens at the embedding layer, or low-rank test inputs) is decomposed by an SVD instead. That matters
for the float64 numerical-rank rule (threshold max(S, H) * 2.2e-16 * sigma_max), which counts exactly those tiny
singular values; the official float32 rule (max(S, H) * 1.2e-7 * sigma_max, ~5e-4 sigma_max at 4096) is
resolved by the Gram. A residual still below 1e-6 of its terms (an update almost inside the subspaces) is
recomputed explicitly.
Functions accept (..., S, H) on any device and return (...); `State` and `Stream` keep each state's spectrum,
basis and TME so that nothing is computed twice along the residual stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

RANK_RULES = ("energy", "tol", "fixed", "numerical")
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
FLOAT64_EPS = float(torch.finfo(torch.float64).eps)


@dataclass(frozen=True)
class RankRule:
    """How many singular directions span the subspaces P_C and P_R.

    - ("energy", q): the smallest r whose top singular values hold a share q of sum(sigma^2) (default q = 0.99);
    - ("tol", t): sigma_i > t * sigma_max;
    - ("fixed", r): r directions (capped at min(S, H));
    - ("numerical", eps): numerical rank, sigma_i > max(S, H) * eps * sigma_max, the official code's rule with eps
      the machine epsilon of its states' dtype (float32: 1.19e-7).
    """

    kind: str = "energy"
    value: float = 0.99

    def __post_init__(self):
        if self.kind not in RANK_RULES:
            raise ValueError(f"rank rule {self.kind!r} is not one of {RANK_RULES}")
        if self.kind == "energy" and not 0 < self.value <= 1:
            raise ValueError(f"energy share must lie in (0, 1], got {self.value}")
        if self.kind in ("tol", "numerical") and not self.value >= 0:
            raise ValueError(f"{self.kind} threshold must be >= 0, got {self.value}")

    def rank(self, s: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Rank per matrix from its singular values s (..., k), sorted descending; `size` = max(S, H) (needed by
        the numerical rule)."""
        k = s.shape[-1]
        if self.kind == "fixed":
            return torch.full(s.shape[:-1], min(int(self.value), k), dtype=torch.long, device=s.device)
        if self.kind == "tol":
            return (s > self.value * s[..., :1]).sum(-1)
        if self.kind == "numerical":
            if size is None:
                raise ValueError("the numerical rank rule needs size = max(S, H)")
            return (s > size * self.value * s[..., :1]).sum(-1)
        e = (s**2).cumsum(-1)
        total = e[..., -1:].clamp_min(torch.finfo(s.dtype).tiny)
        # the first index whose cumulative share reaches q, plus one (tolerant to rounding at q = 1)
        return ((e / total) < self.value - 1e-12).sum(-1).clamp(max=k - 1) + 1

    def describe(self) -> str:
        return {"energy": f"smallest r holding {self.value:.0%} of the spectral energy",
                "tol": f"numerical rank, sigma > {self.value:g} sigma_max",
                "fixed": f"fixed r = {int(self.value)}",
                "numerical": f"numerical rank, sigma > max(S, H) * {self.value:.3g} * sigma_max"}[self.kind]

    def label(self) -> str:
        return f"{self.kind}:{self.value:g}"


TME_ROWS = ("last", "mean")
DD_COMBINE = ("mean", "l2", "sum")
FFN_REFERENCE = ("input", "mid")
MIXIG_ON = ("states", "updates")
SPEC_NAMES = ("official", "paper_text")


@dataclass(frozen=True)
class MetricSpec:
    """Every choice that differs between the paper's text and the official code (defaults: the official code).

    - tme_alpha: sharpening exponent alpha of w = ((cos + 1) / 2)^alpha (official 8, text 1);
    - tme_rows: "last" (the last token's row only, official) or "mean" (mean over all rows, text);
    - tme_normalize: entropy divided by log S (official; TME in [0, 1], MixIG in [-1, 1]) or in nats (text);
    - mixig_on: "states": MixIG = TME(X') - TME(X); "updates": MixIG = TME(dX) - TME(X). The official code has a
      TME of states (`tme_state_3xnlayer`) and of updates (`tme_delta_2xnlayer`) but no difference; both are
      always reported (`mixig_state`, `mixig_delta`), this field picks the one called `mixig`;
    - dd_combine: "mean" ((r_col + r_row) / 2, text), "l2" (sqrt(r_col^2 + r_row^2), official) or "sum";
    - rank: the `RankRule` of P_C, P_R (official: numerical rank at float32's eps; text: 99% energy);
    - ffn_reference: the state the FFN update's RID is measured against: "input" (the layer input X_in, official)
      or "mid" (X + dX_attn, the stream the FFN adds to, text). MixIG of the FFN is TME(X_out) - TME(X + dX_attn)
      either way.
    """

    tme_alpha: float = 8.0
    tme_rows: str = "last"
    tme_normalize: bool = True
    mixig_on: str = "states"
    dd_combine: str = "l2"
    rank: RankRule = RankRule("numerical", FLOAT32_EPS)
    ffn_reference: str = "input"

    def __post_init__(self):
        for f, allowed in (("tme_rows", TME_ROWS), ("dd_combine", DD_COMBINE), ("ffn_reference", FFN_REFERENCE),
                           ("mixig_on", MIXIG_ON)):
            if getattr(self, f) not in allowed:
                raise ValueError(f"{f} {getattr(self, f)!r} is not one of {allowed}")
        if not isinstance(self.rank, RankRule):
            raise TypeError(f"rank must be a RankRule, got {type(self.rank).__name__}")
        if not self.tme_alpha > 0:
            raise ValueError(f"tme_alpha must be > 0, got {self.tme_alpha}")

    @classmethod
    def official(cls) -> "MetricSpec":
        return cls()

    @classmethod
    def paper_text(cls) -> "MetricSpec":
        return cls(tme_alpha=1.0, tme_rows="mean", tme_normalize=False, mixig_on="states", dd_combine="mean",
                   rank=RankRule("energy", 0.99), ffn_reference="mid")

    @classmethod
    def named(cls, name: str, rank_rule: str | None = None, rank_value: float = 0.99) -> "MetricSpec":
        """The preset `name`, with its rank rule replaced by RankRule(rank_rule, rank_value) when one is given (the
        notebooks' and the command line's `rank_rule` / `rank_value`)."""
        if name not in SPEC_NAMES:
            raise ValueError(f"metric spec {name!r} is not one of {SPEC_NAMES}")
        spec = getattr(cls, name)()
        return replace(spec, rank=RankRule(rank_rule, rank_value)) if rank_rule else spec

    @classmethod
    def from_dict(cls, d: dict) -> "MetricSpec":
        """The spec `to_dict` wrote (its name and description are ignored)."""
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        if isinstance(kw.get("rank"), dict):
            kw["rank"] = RankRule(kw["rank"]["kind"], kw["rank"]["value"])
        return cls(**kw)

    def _diff(self, other: "MetricSpec") -> list[str]:
        out = []
        for f in fields(self):
            a = getattr(self, f.name)
            if a != getattr(other, f.name):
                out.append(f"{f.name}={a.label() if isinstance(a, RankRule) else a}")
        return out

    @property
    def name(self) -> str:
        """"official" or "paper_text" for the presets, else the closest preset with the differing fields,
        e.g. "official[tme_rows=mean]"."""
        diffs = {n: self._diff(MetricSpec.named(n)) for n in SPEC_NAMES}
        base = min(SPEC_NAMES, key=lambda n: len(diffs[n]))
        return base if not diffs[base] else f"{base}[{','.join(diffs[base])}]"

    @property
    def base(self) -> str:
        """The preset this spec is (or is closest to)."""
        return self.name.split("[")[0]

    def to_dict(self) -> dict:
        d = {"name": self.name}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = {"kind": v.kind, "value": v.value} if isinstance(v, RankRule) else v
        d["describe"] = self.describe()
        return d

    def describe(self) -> str:
        alpha = f"^{self.tme_alpha:g}" if self.tme_alpha != 1 else ""
        rows = "last token's row" if self.tme_rows == "last" else "mean over rows"
        norm = "/ log S" if self.tme_normalize else "nats"
        dd = {"mean": "(r_col + r_row)/2", "l2": "sqrt(r_col^2 + r_row^2)", "sum": "r_col + r_row"}[self.dd_combine]
        ref = "X_in" if self.ffn_reference == "input" else "X + dX_attn"
        return (f"{self.name}: TME ((cos+1)/2){alpha}, {rows}, {norm}; MixIG on {self.mixig_on}; dD = {dd}; "
                f"r: {self.rank.describe()}; FFN against {ref}")


def as_spec(spec) -> MetricSpec:
    """A MetricSpec from a spec, a preset name, None (the official preset) or a RankRule (the paper-text preset
    with that rank rule: how callers passed a rule before specs existed)."""
    if spec is None:
        return MetricSpec.official()
    if isinstance(spec, MetricSpec):
        return spec
    if isinstance(spec, str):
        return MetricSpec.named(spec)
    if isinstance(spec, RankRule):
        return replace(MetricSpec.paper_text(), rank=spec)
    raise TypeError(f"expected a MetricSpec, a preset name {SPEC_NAMES} or a RankRule, got {type(spec).__name__}")


# --- numerics -------------------------------------------------------------------------------------------------------

def _eps(dtype) -> float:
    return float(torch.finfo(dtype).eps)


def _gram_floor(dtype) -> float:
    """Smallest sigma_min / sigma_max the Gram path resolves (float64: 1e-5, scaled with sqrt(eps) for others).
    At 1e-5 the eigenvalue error eps * lambda_max is 2e-6 of lambda_min: eRank agrees with the SVD's to ~1e-11."""
    return 1e-5 * math.sqrt(_eps(dtype) / FLOAT64_EPS)


def _explicit_floor(dtype) -> float:
    """Below this share of the terms it is summed from, a residual has cancelled too much and is recomputed."""
    return 1e-6 * _eps(dtype) / FLOAT64_EPS


def sym_gram(z: torch.Tensor | None = None, blocks=None) -> torch.Tensor:
    """Z Z^T for z (B, m, n), or the sum of Z_c Z_c^T over `blocks`, the column blocks Z_c (B, m, w) of a Z never
    held whole. On CPU each product is formed from lower block rows and mirrored once at the end (5/8 of the flops
    of one gemm, as a BLAS syrk does); elsewhere batched matmuls, which a GPU runs faster than many small ones."""
    g = None
    for zc in ([z] if blocks is None else blocks):
        g = _add_gram(zc, g)
    m = g.shape[-1]
    if g.device.type != "cpu" or m < 256:
        return (g + g.transpose(-1, -2)) / 2  # exactly symmetric, as eigh assumes
    for a, e in _gram_edges(m):
        g[..., :a, a:e] = g[..., a:e, :a].transpose(-1, -2)
        d = g[..., a:e, a:e]
        g[..., a:e, a:e] = (d + d.transpose(-1, -2)) / 2  # a gemm's diagonal block is symmetric only to rounding
    return g


def _gram_edges(m: int, nb: int = 4) -> list[tuple[int, int]]:
    edges = [round(i * m / nb) for i in range(nb + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _add_gram(z: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """g + Z Z^T (g None: a new one); on CPU (m >= 256) the lower block rows only, diagonal blocks whole."""
    m = z.shape[-2]
    if z.device.type != "cpu" or m < 256:
        return z @ z.transpose(-1, -2) if g is None else g.baddbmm_(z, z.transpose(-1, -2))
    if g is None:
        g = z.new_empty(z.shape[:-2] + (m, m))
        for a, e in _gram_edges(m):
            g[..., a:e, :e] = z[..., a:e, :] @ z[..., :e, :].transpose(-1, -2)  # rows a:e against rows 0:e
    else:
        for a, e in _gram_edges(m):
            g[..., a:e, :e].baddbmm_(z[..., a:e, :], z[..., :e, :].transpose(-1, -2))
    return g


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(dim)


def erank_from_singular_values(s: torch.Tensor) -> torch.Tensor:
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(s.dtype).tiny)
    er = torch.exp(_entropy(p))
    return torch.where(total.squeeze(-1) > 0, er, torch.zeros_like(er))  # the zero matrix has eRank 0


def _tme_from_cos(cos: torch.Tensor, alpha: float, normalize: bool, S: int) -> torch.Tensor:
    """TME from cosines (B, R, S) of R query rows against all S tokens: mean over rows of the row entropies."""
    w = ((cos + 1.0) / 2.0).clamp(0.0, 1.0)
    if alpha != 1.0:
        w = w**alpha
    p = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
    h = _entropy(p).mean(-1)
    if normalize:
        h = h / math.log(S) if S > 1 else torch.zeros_like(h)
    return h


CHUNK_BYTES = 32 * 2**20
"""A state over twice this size in the metric dtype is never held whole: its products run over column blocks of Z
of about this size, each converted from the model's tensors when used (float64 states of 4,725 OneVision tokens
would take 130 MiB each, five at a time)."""


class State:
    """One state X (..., S, H) of the residual stream and what the metrics need of it, each computed once: the
    Gram matrix of its smaller side, its singular values (and, on request, singular vectors), eRank and TME.

    X is a tensor, or the signed sum of the model's tensors (`terms`, summed left to right in the metric dtype: an
    update X' - X); a large one (`CHUNK_BYTES`) is converted in column blocks of Z whenever a product needs it,
    and its Gram is released once decomposed, so no state is held whole in float64."""

    def __init__(self, x: torch.Tensor | None = None, dtype: torch.dtype = torch.float64, basis: bool = False,
                 terms: tuple | None = None):
        if terms is None:
            if x.dim() < 2:
                raise ValueError(f"a state is (..., S, H), got shape {tuple(x.shape)}")
            terms = ((1, x),)
        src = terms[0][1]
        self.lead = tuple(src.shape[:-2])
        self.S, self.H = src.shape[-2:]
        self._terms = tuple((sign, t.reshape((-1, self.S, self.H))) for sign, t in terms)
        self.B = self._terms[0][1].shape[0]
        self.dtype = dtype
        self.m, self.n = min(self.S, self.H), max(self.S, self.H)
        self.t = self.S > self.H  # the Gram is taken on the smaller side: X^T X when tokens outnumber dimensions
        size = dtype.itemsize
        self.width = max(1, CHUNK_BYTES // (self.B * self.m * size))  # columns of Z per block
        self.lazy = self.B * self.m * self.n * size > 2 * CHUNK_BYTES
        self._x = None if self.lazy else self._block()
        self._want_basis = basis
        self._gram = self._tok_gram = self._s = self._u = self._exact = self._sqn = None
        self._v: dict[int, torch.Tensor] = {}  # right singular vectors (n, m) of the matrices decomposed by an SVD
        self._tme: dict = {}

    @staticmethod
    def diff(a: "State", b: "State") -> "State":
        """The state a - b (an update), in a's dtype."""
        return State(dtype=a.dtype, terms=a._terms + tuple((-sign, t) for sign, t in b._terms))

    def plus(self, other: "State") -> "State":
        return State(dtype=self.dtype, terms=self._terms + other._terms)

    def _block(self, cols: slice = slice(None), idx=None) -> torch.Tensor:
        """X in the metric dtype, restricted to the columns `cols` of Z (tokens when S > H, else dimensions) and
        the matrices `idx`."""
        out = None
        for sign, t in self._terms:
            v = t[:, cols, :] if self.t else t[:, :, cols]
            v = (v if idx is None else v[idx]).to(self.dtype)
            out = (v if sign > 0 else -v) if out is None else (out + v if sign > 0 else out - v)
        return out

    @property
    def x(self) -> torch.Tensor:
        """The whole state (B, S, H) in the metric dtype (built anew each time for a large state)."""
        return self._x if self._x is not None else self._block()

    @property
    def z(self) -> torch.Tensor:
        return self.x.transpose(-1, -2) if self.t else self.x

    def z_of(self, idx) -> torch.Tensor:
        """Z of the matrix idx (an int) or the matrices idx (an index tensor), whole."""
        if self._x is not None:
            return self.z[idx]
        if isinstance(idx, int):
            return self.z_of(torch.tensor([idx]))[0]
        x = self._block(idx=idx)
        return x.transpose(-1, -2) if self.t else x

    def blocks(self, idx=None):
        """Z (B, m, n) of the matrices idx in column blocks (B, m, w); one block, Z itself, for a small state."""
        if not self.lazy:
            z = self.z
            yield z if idx is None else z[idx]
            return
        for a in range(0, self.n, self.width):
            v = self._block(slice(a, a + self.width), idx)
            yield v.transpose(-1, -2) if self.t else v

    def gram(self) -> torch.Tensor:
        if self._gram is None:
            self._gram = sym_gram(blocks=self.blocks())
            self._sqn = self._gram.diagonal(dim1=-2, dim2=-1).sum(-1)
        return self._gram

    def sq_norm(self) -> torch.Tensor:
        if self._sqn is None:
            self.gram()
        return self._sqn

    def _decompose(self, basis: bool):
        g = self.gram()
        if basis:
            lam, u = torch.linalg.eigh(g)
            u = u.flip(-1)
        else:
            lam, u = torch.linalg.eigvalsh(g), None
        if self.lazy and self.t:  # the Gram of dimensions serves nothing else: let it go
            self._gram = None
        s = lam.flip(-1).clamp_min(0).sqrt()
        exact = s[:, -1] < _gram_floor(self.dtype) * s[:, 0]
        if bool(exact.any()):
            idx = exact.nonzero().squeeze(1)
            z = self.z_of(idx)
            if basis:
                ue, se, vhe = torch.linalg.svd(z, full_matrices=False)
                u[idx] = ue
                self._v = {int(i): vhe[j].transpose(-1, -2) for j, i in enumerate(idx.tolist())}
            else:
                se = torch.linalg.svdvals(z)
            s[idx] = se
        self._s, self._u, self._exact = s, u, exact

    @property
    def s(self) -> torch.Tensor:
        """Singular values (B, m), descending."""
        if self._s is None:
            self._decompose(self._want_basis)
        return self._s

    @property
    def u(self) -> torch.Tensor:
        """Singular vectors of the smaller side (B, m, m) as columns, in the order of `s`."""
        if self._u is None:
            self._decompose(True)
        return self._u

    @property
    def exact(self) -> torch.Tensor:
        """Per matrix: decomposed by an SVD (its spectrum too wide for the Gram path)."""
        if self._exact is None:
            self._decompose(self._want_basis)
        return self._exact

    def v(self, i: int) -> torch.Tensor:
        """Right singular vectors (n, m) of matrix i, which must have been decomposed by an SVD."""
        self.u
        return self._v[i]

    def erank(self) -> torch.Tensor:
        return erank_from_singular_values(self.s)

    def token_gram(self) -> torch.Tensor:
        if not self.t:
            return self.gram()
        if self._tok_gram is None:
            self._tok_gram = sym_gram(self.x)
        return self._tok_gram

    def _token_blocks(self):
        """(first token, X's token rows (B, k, H)) in blocks (a large state with S > H) or whole."""
        if self.lazy and self.t:
            for a, z in zip(range(0, self.n, self.width), self.blocks()):
                yield a, z.transpose(-1, -2)
        else:
            yield 0, self.x

    def _last_row_cosines(self) -> torch.Tensor:
        """Cosines (B, 1, S) of the last token against every token: O(S H), no Gram."""
        tiny = torch.finfo(self.dtype).tiny
        if self._gram is not None and not self.t:
            g, sq = self._gram[:, -1:, :], self._gram.diagonal(dim1=-2, dim2=-1)
        elif self.lazy and not self.t:  # blocks of dimensions: sums over them
            g = sq = 0
            for zc in self.blocks():
                g = g + zc[:, -1:, :] @ zc.transpose(-1, -2)
                sq = sq + (zc * zc).sum(-1)
        else:
            last = self._block(slice(self.S - 1, self.S)) if self.lazy else self.x[:, -1:, :]
            gs, sqs = zip(*((last @ xb.transpose(-1, -2), (xb * xb).sum(-1)) for _, xb in self._token_blocks()))
            g, sq = torch.cat(gs, -1), torch.cat(sqs, -1)
        return g / (sq[:, -1:, None] * sq[:, None, :]).sqrt().clamp_min(tiny)

    def _mean_row_entropy(self, alpha: float, normalize: bool) -> torch.Tensor:
        """The mean over token rows of the TME row entropies; for a large state with S > H, rows in blocks (the
        S x S cosines are never held)."""
        tiny = torch.finfo(self.dtype).tiny
        if not (self.lazy and self.t):
            g = self.token_gram()
            nrm = g.diagonal(dim1=-2, dim2=-1).sqrt()
            return _tme_from_cos(g / (nrm[:, :, None] * nrm[:, None, :]).clamp_min(tiny), alpha, normalize, self.S)
        nrm = torch.cat([(xb * xb).sum(-1) for _, xb in self._token_blocks()], -1).sqrt()
        total = 0
        for a, xa in self._token_blocks():
            g = torch.cat([xa @ xb.transpose(-1, -2) for _, xb in self._token_blocks()], -1)
            cos = g / (nrm[:, a:a + xa.shape[1], None] * nrm[:, None, :]).clamp_min(tiny)
            total = total + _tme_from_cos(cos, alpha, normalize, self.S) * xa.shape[1]
        return total / self.S

    def tme(self, alpha: float, rows: str, normalize: bool) -> torch.Tensor:
        key = (alpha, rows, normalize)
        if key not in self._tme:
            if rows == "last":
                self._tme[key] = _tme_from_cos(self._last_row_cosines(), alpha, normalize, self.S)
            else:
                self._tme[key] = self._mean_row_entropy(alpha, normalize)
        return self._tme[key]

    def spec_tme(self, spec: MetricSpec) -> torch.Tensor:
        return self.tme(spec.tme_alpha, spec.tme_rows, spec.tme_normalize)

    def unflatten(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(self.lead + v.shape[1:])


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a_i, b_i> of each matrix of two (B, m, n) batches, as one BLAS dot each (no temporary)."""
    return (a.reshape(a.shape[0], 1, -1) @ b.reshape(b.shape[0], -1, 1)).reshape(-1)


def _sq(a: torch.Tensor) -> torch.Tensor:
    return _dot(a, a)


def _residuals(ref: State, out: State, dr: State, r: torch.Tensor):
    """||(I - P_C) X'||^2 and ||X' (I - P_R)||^2 (a: the smaller side of Z, b: the other) and ||X'||^2, for
    X' = X_ref + D (dr holds D = X' - X_ref).

    With U, sigma the eigen-basis of X_ref's Gram and C = Z_D Z_ref^T, both residuals are
    sum_{i>r} sigma_i^2 + 2 sum_{i>r} u_i^T C u_i + ||D||^2 - (the kept part of D): ||U_r^T Z_D||^2 on side a
    (or, with few directions dropped, the dropped part ||U_tail^T Z_D||^2 added instead of ||D||^2 - kept),
    sum_{i<=r} ||C u_i||^2 / sigma_i^2 on side b. Written through D rather than X', nothing cancels when a small
    update lands on a large state (the usual case at full rank, where only D's part outside the row space
    remains)."""
    m, n = ref.m, ref.n
    ny2 = out.sq_norm()
    ra2, rb2 = ny2.clone(), ny2.clone()  # no kept direction: the whole of X' is residual
    scale = ny2.clone()
    full_a, full_b = r >= m, r >= n  # the projector is the identity on that side
    fast = (~ref.exact) & (r > 0)
    if bool(fast.any()):
        fi = slice(None) if bool(fast.all()) else fast.nonzero().squeeze(1)  # a slice keeps views, no copies
        need_a = not bool(full_a[fi].all())
        a2, rb2[fi], scale[fi] = _gram_residuals(ref, dr, r[fi], fi, need_a)
        if need_a:
            ra2[fi] = a2
    floor = _explicit_floor(ref.dtype) * scale
    redo_a = (r > 0) & ~full_a & (ref.exact | (ra2 < floor))
    redo_b = (r > 0) & ~full_b & (ref.exact | (rb2 < floor))
    if bool((redo_a | redo_b).any()):
        _explicit_residuals(ref, out, r, redo_a, redo_b, ra2, rb2)
    ra2 = torch.where(full_a, torch.zeros_like(ra2), ra2)
    rb2 = torch.where(full_b, torch.zeros_like(rb2), rb2)
    return ra2, rb2, ny2


def _gram_residuals(ref: State, dr: State, rr: torch.Tensor, fi, need_a: bool):
    """Side a's and side b's squared residuals and their cancellation scale, from X_ref's Gram eigen-basis, for the
    samples `fi` (ranks `rr`); side a is None when `need_a` is False (the projector is the identity there)."""
    m, dt = ref.m, ref.dtype
    rmax = int(rr.max())
    lam = ref.s[fi].pow(2)
    keep = torch.arange(m, device=rr.device) < rr[:, None]
    inv = torch.where(keep & (lam > 0), 1.0 / lam.clamp_min(torch.finfo(dt).tiny), torch.zeros_like(lam))
    tail_s = (lam * ~keep).sum(-1)
    if 2 * rmax < m:  # few kept directions: thin products through Z_ref^T U_r, O(m n r)
        tail_c, proj_b, proj_a, nd2 = _thin_terms(ref.u[fi, :, :rmax], ref, dr, fi, keep[:, :rmax],
                                                  inv[:, :rmax], need_a)
        common = tail_s + 2 * tail_c + nd2
        a2 = (common - proj_a).clamp_min(0) if need_a else None
    else:
        tail_c, proj_b, tail_d, nd2 = _complete_basis_terms(ref.u[fi], ref, dr, fi, keep, inv, int(rr.min()),
                                                            need_a)
        common = tail_s + 2 * tail_c + nd2
        a2 = (tail_s + 2 * tail_c + tail_d).clamp_min(0) if need_a else None
    return a2, (common - proj_b).clamp_min(0), tail_s + 2 * tail_c.abs() + nd2


def _pairs(ref: State, dr: State, fi):
    """(Z_D, Z_ref) column blocks of the matrices fi, side by side (one pair, the whole Zs, for small states)."""
    return zip(dr.blocks(fi), ref.blocks(fi))


def _thin_terms(u, ref: State, dr: State, fi, keep, inv, need_a: bool):
    """With the r kept directions U_r: (sum_{i>r} u_i^T C u_i, side b's kept part, side a's kept part or None,
    ||D||^2), in one pass over the column blocks of Z_D and Z_ref."""
    ut = u.transpose(-1, -2)
    use_gram = need_a and dr._gram is not None
    cu_t = dot = nd2 = pa = 0
    for zd, zr in _pairs(ref, dr, fi):
        # C U_r = Z_D Z_ref^T U_r, formed as ((U_r^T Z_ref) Z_D^T)^T: a thin right factor against a transposed big
        # operand takes a slow BLAS path (10-20x), a thin left factor does not
        cu_t = cu_t + (ut @ zr) @ zd.transpose(-1, -2)
        dot = dot + _dot(zd, zr)
        nd2 = nd2 + _sq(zd)
        if need_a and not use_gram:
            pa = pa + (ut @ zd).pow(2).sum(-1)
    cu = cu_t.transpose(-1, -2)
    head = ((cu * u).sum(-2) * keep).sum(-1)
    tail_c = dot - head  # tr C - sum_{i<=r} u_i^T C u_i
    proj_b = (cu.pow(2).sum(-2) * inv).sum(-1)
    proj_a = None
    if need_a:
        if use_gram:
            pa = ((dr.gram()[fi] @ u) * u).sum(-2)
        proj_a = (pa * keep).sum(-1)
    return tail_c, proj_b, proj_a, nd2


def _complete_basis_terms(u, ref: State, dr: State, fi, keep, inv, rmin: int, need_a: bool):
    """With the complete basis U of the smaller side: (sum_{i>r} u_i^T C u_i, side b's kept part, side a's dropped
    part or None, ||D||^2). I - P_C = U_tail U_tail^T, so the few dropped directions give side a without any
    subtraction."""
    c = None
    nd2 = tail_d = 0
    u_tail = u[:, :, rmin:].transpose(-1, -2)
    for zd, zr in _pairs(ref, dr, fi):
        c = zd @ zr.transpose(-1, -2) if c is None else c.baddbmm_(zd, zr.transpose(-1, -2))
        nd2 = nd2 + _sq(zd)
        if need_a:
            tail_d = tail_d + (u_tail @ zd).pow(2).sum(-1)
    cu = c @ u
    del c
    tail_c = ((cu * u).sum(-2) * ~keep).sum(-1)
    proj_b = (cu.pow_(2).sum(-2) * inv).sum(-1)
    if need_a:
        tail_d = (tail_d * ~keep[:, rmin:]).sum(-1)
    return tail_c, proj_b, tail_d if need_a else None, nd2


def _explicit_residuals(ref: State, out: State, r, redo_a, redo_b, ra2, rb2) -> None:
    """Recompute, in place, the residuals the Gram route cannot give safely (rare: rank-deficient references,
    cancellation) from X' and explicit projectors."""
    for i in (redo_a | redo_b).nonzero().squeeze(1).tolist():
        ri = int(r[i])
        zy = out.z_of(i)
        u = ref.u[i, :, :ri]
        if bool(redo_a[i]):
            ra2[i] = (zy - u @ (u.transpose(-1, -2) @ zy)).pow(2).sum()
        if bool(redo_b[i]):
            if bool(ref.exact[i]):
                v = ref.v(i)[:, :ri]
            else:
                v = (u.transpose(-1, -2) @ ref.z_of(i)).transpose(-1, -2) / ref.s[i, :ri]
            rb2[i] = (zy - (zy @ v) @ v.transpose(-1, -2)).pow(2).sum()


def _combine(a: torch.Tensor, b: torch.Tensor, how: str) -> torch.Tensor:
    if how == "mean":
        return (a + b) / 2
    if how == "l2":
        return (a * a + b * b).sqrt()
    return a + b


def _check_pair(a: State, b: State):
    if (a.S, a.H) != (b.S, b.H) or a.B != b.B:
        raise ValueError(f"rid needs equal shapes, got {a.lead + (a.S, a.H)} and {b.lead + (b.S, b.H)}")


def _rid(ref: State, out: State, dr: State, spec: MetricSpec) -> dict[str, torch.Tensor]:
    _check_pair(ref, out)
    r = spec.rank.rank(ref.s, ref.n)
    er_in, er_out = ref.erank(), out.erank()  # spectra first: a large state's Gram is gone before the residuals
    ra2, rb2, ny2 = _residuals(ref, out, dr, r)
    den = ny2.clamp_min(torch.finfo(ref.dtype).tiny)
    a, b = (ra2 / den).sqrt(), (rb2 / den).sqrt()
    dS = (er_out - er_in).abs() / ref.m
    dD = _combine(a, b, spec.dd_combine)
    return {"erank_in": er_in, "erank_out": er_out, "dS": dS, "dD": dD, "rid": dS + dD, "projector_rank": r}


def state_rid(ref: State, out: State, spec=None) -> dict[str, torch.Tensor]:
    """RID of the state out against the state ref (equal shapes): dS, dD, rid, projector_rank, erank_in, erank_out, each
    (...)."""
    spec = as_spec(spec)
    m = _rid(ref, out, State.diff(out, ref), spec)
    return {k: ref.unflatten(v) for k, v in m.items()}


def measure(ref: State, x: State, x_new: State, delta: State, spec: MetricSpec,
            delta_ref: State | None = None) -> dict[str, torch.Tensor]:
    """Every metric of the update delta = x_new - x, its RID against the state ref (x itself, or the layer input
    for the official FFN; then delta_ref = x_new - ref). Keys (each (...)): erank_in = eRank(X_ref),
    erank_out = eRank(X'), dS, dD, rid, projector_rank (r of X_ref), tme_in = TME(X), tme_out = TME(X'), tme_delta = TME(dX),
    mixig_state = TME(X') - TME(X), mixig_delta = TME(dX) - TME(X), mixig (the one `spec.mixig_on` names)."""
    out = _rid(ref, x_new, delta if delta_ref is None else delta_ref, spec)
    t_in, t_out, t_d = x.spec_tme(spec), x_new.spec_tme(spec), delta.spec_tme(spec)
    out.update(tme_in=t_in, tme_out=t_out, tme_delta=t_d, mixig_state=t_out - t_in, mixig_delta=t_d - t_in)
    out["mixig"] = out["mixig_state"] if spec.mixig_on == "states" else out["mixig_delta"]
    out["projector_rank"] = out["projector_rank"].to(ref.dtype)
    return {k: ref.unflatten(v) for k, v in out.items()}


# --- the public functions -------------------------------------------------------------------------------------------

def erank(x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """eRank of each (S, H) matrix."""
    st = State(x, dtype)
    return st.unflatten(st.erank())


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


def rid(x: torch.Tensor, x_new: torch.Tensor, spec=None, dtype: torch.dtype = torch.float64) -> RID:
    """RID = dS + dD of x_new (..., S, H) against the subspaces and eRank of x; `spec` a MetricSpec, a preset name
    or a RankRule (the paper-text preset with that rule)."""
    if x.shape != x_new.shape:
        raise ValueError(f"rid needs equal shapes, got {tuple(x.shape)} and {tuple(x_new.shape)}")
    spec = as_spec(spec)
    m = state_rid(State(x, dtype, basis=True), State(x_new, dtype), spec)
    return RID(dS=m["dS"], dD=m["dD"], rank=m["projector_rank"], erank_in=m["erank_in"], erank_out=m["erank_out"])


def tme(x: torch.Tensor, spec=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Token-mixing entropy of each (S, H) matrix under `spec` (official: normalised, last row, alpha = 8)."""
    spec = as_spec(spec)
    st = State(x, dtype)
    return st.unflatten(st.spec_tme(spec))


def mixig(x: torch.Tensor, x_new: torch.Tensor, spec=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """MixIG = TME(x_new) - TME(x) of the update x -> x_new."""
    return tme(x_new, spec, dtype) - tme(x, spec, dtype)


def update_metrics(x: torch.Tensor, dx: torch.Tensor, spec=None, *, reference: torch.Tensor | None = None,
                   dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Every metric of the update x -> X' = x + dx (see `measure` for the keys), RID against `reference` (default
    x). `spec`: a MetricSpec, a preset name, None (official) or a RankRule (paper text with that rule)."""
    spec = as_spec(spec)
    if x.shape != dx.shape:
        raise ValueError(f"update_metrics needs equal shapes, got {tuple(x.shape)} and {tuple(dx.shape)}")
    xs = State(x, dtype, basis=reference is None)
    d = State(dx, dtype)
    y = xs.plus(d)
    if reference is None:
        return measure(xs, xs, y, d, spec)
    ref = State(reference, dtype, basis=True)
    return measure(ref, xs, y, d, spec, delta_ref=State.diff(y, ref))


MODULES = ("attention", "ffn")


class Stream:
    """The metrics of each layer's attention and FFN updates along one residual stream (a batch of equal-shape
    samples), from the model's states X_in, X_mid = X_in + dX_attn and X_out = X_mid + dX_ffn, the updates being
    their differences (as the official code takes them). X_mid is the FFN's input and X_out the next layer's
    input, so each state's Gram, spectrum, basis and TME are computed once (`reuse=False` recomputes the layer
    input, for checking). `counts` records the states built and reused."""

    def __init__(self, spec=None, dtype: torch.dtype = torch.float64, reuse: bool = True):
        self.spec = as_spec(spec)
        self.dtype = dtype
        self.reuse = reuse
        self._prev: tuple[torch.Tensor, State] | None = None
        self.counts = {"built": 0, "reused": 0}

    def _state(self, x, basis=False):
        self.counts["built"] += 1
        return State(x, self.dtype, basis=basis)

    def _diff(self, a: State, b: State) -> State:
        self.counts["built"] += 1
        return State.diff(a, b)

    def layer(self, x_in, x_mid, x_out, modules=MODULES, keep_output: bool = True) -> dict[str, dict]:
        """{module: the metrics of `measure`} for the modules asked, each (B,) for states (B, S, H); keep_output:
        X_out will be the next layer's input (its basis is then computed now and kept)."""
        spec = self.spec
        ffn_on_input = spec.ffn_reference == "input"
        prev, self._prev = self._prev, None
        if self.reuse and prev is not None and prev[0].shape == x_in.shape and prev[0].dtype == x_in.dtype \
                and prev[0].device == x_in.device and torch.equal(prev[0], x_in):
            s_in = prev[1]
            self.counts["reused"] += 1
        else:
            s_in = self._state(x_in, basis=True)
        s_mid = self._state(x_mid, basis="ffn" in modules and not ffn_on_input)
        res = {}
        if "attention" in modules:
            res["attention"] = measure(s_in, s_in, s_mid, self._diff(s_mid, s_in), spec)
        if "ffn" in modules:
            s_out = self._state(x_out, basis=keep_output)
            d_ffn = self._diff(s_out, s_mid)
            if ffn_on_input:
                res["ffn"] = measure(s_in, s_mid, s_out, d_ffn, spec, delta_ref=self._diff(s_out, s_in))
            else:
                res["ffn"] = measure(s_mid, s_mid, s_out, d_ffn, spec)
            if keep_output:
                self._prev = (x_out, s_out)
        return res


__all__ = ["RankRule", "MetricSpec", "as_spec", "State", "Stream", "measure", "state_rid", "erank", "rid", "RID", "tme",
           "mixig", "update_metrics", "erank_from_singular_values", "sym_gram", "MODULES", "FLOAT32_EPS"]
