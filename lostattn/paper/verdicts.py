"""What a results page found, computed from the run's own numbers: for each claim of the paper that the page
tests, whether this run shows it, with the numbers.

A page calls one `*_claims` function with its tables and shows `verdict(claims)` at its top. Nothing here is typed
prose about a particular run: the wording is fixed per claim, the numbers and the outcome come from the tables, so
the box changes when the numbers change. The thresholds a claim needs (how close is "near", how small is "barely")
are module constants, named in the claim's text.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

# Table 1: attention's RID counts as "near eps_RoPE" up to this multiple of it (the paper: 0.06 against 0.062).
NEAR_EPS_FACTOR = 2.0
# Table 2 and the sweeps: a change of accuracy up to this many points counts as "barely changes" (the paper's quoted
# cells move by 1.45 and 2.03 points).
BARELY_POINTS = 3.0

HOLDS, FAILS, UNTESTED = "holds", "does not hold", "not tested"
_MARK = {HOLDS: "✅", FAILS: "❌", UNTESTED: "➖"}


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and what this run says of it."""

    text: str  # the claim, as the paper makes it (with the threshold used, when one is needed)
    outcome: str  # HOLDS, FAILS or UNTESTED
    evidence: str  # this run's numbers (and the paper's, where it reports them)

    def to_dict(self) -> dict:
        return {"claim": self.text, "outcome": self.outcome, "evidence": self.evidence}


def _claim(text: str, ok: bool | None, evidence: str) -> Claim:
    return Claim(text, UNTESTED if ok is None else HOLDS if ok else FAILS, evidence)


def verdict_markdown(claims: list[Claim], title: str = "Verdict: what this run shows") -> str:
    """A MyST admonition with the class `verdict`: one line per claim, its outcome and its numbers."""
    lines = [f":::{{admonition}} {title}", ":class: verdict", ""]
    for c in claims:
        lines.append(f"- {_MARK[c.outcome]} **{c.text}** — {c.outcome}: {c.evidence}")
    if not claims:
        lines.append("- ➖ this page tests no claim of the paper on this run")
    held = sum(c.outcome == HOLDS for c in claims)
    tested = sum(c.outcome != UNTESTED for c in claims)
    lines += ["", f"{held} of {tested} tested claims hold on this run.", ":::"]
    return "\n".join(lines)


class Verdict:
    """The verdict box as a display object: MyST markdown in the book, plain text in a terminal."""

    def __init__(self, claims: list[Claim], title: str = "Verdict: what this run shows"):
        self.claims, self.title = list(claims), title

    def _repr_markdown_(self) -> str:
        return verdict_markdown(self.claims, self.title)

    def __repr__(self) -> str:
        body = "\n".join(f"[{c.outcome}] {c.text}: {c.evidence}" for c in self.claims)
        return f"{self.title}\n{body}"

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.to_dict() for c in self.claims], columns=["claim", "outcome", "evidence"])


def verdict(claims: list[Claim], title: str = "Verdict: what this run shows") -> Verdict:
    return Verdict(claims, title)


def _f(v: float, digits: int = 3) -> str:
    return "—" if v is None or pd.isna(v) else f"{v:.{digits}f}"


def _pts(v: float) -> str:
    return f"{v:+.1f}"


# ---- the pages' claims -------------------------------------------------------------------------------------
def table1_claims(t1: pd.DataFrame, eps: float, paper: pd.DataFrame | None = None,
                  paper_eps: float | None = None) -> list[Claim]:
    """The claims of Table 1 from this run's module-level means `t1` (columns module, RID, MixIG; rows labelled as
    in `lostattn.residual.analysis.TABLE1_ROWS`) and eps_RoPE; `paper` (module, RID, MixIG) adds the reported values."""
    run = t1.set_index("module")
    rep = paper.set_index("module") if paper is not None else None

    def get(module, col, table=run):
        return float(table.loc[module, col]) if table is not None and module in table.index else None

    def both(module, col):
        mine, theirs = get(module, col), get(module, col, rep)
        return f"{_f(mine)}" + (f" (paper {theirs:g})" if theirs is not None else "")

    attn_rid, ffn_rid = get("Attention", "RID"), get("FFN", "RID")
    attn_mix, ffn_mix = get("Attention", "MixIG"), get("FFN", "MixIG")
    out = []
    ok = None if attn_rid is None or eps is None else attn_rid <= NEAR_EPS_FACTOR * eps
    out.append(_claim(f"Attention barely expands the subspace: its RID is near ε_RoPE (at most {NEAR_EPS_FACTOR:g}×)",
                      ok, f"attention RID {both('Attention', 'RID')}, ε_RoPE {_f(eps)}"
                          + (f" (paper {paper_eps:g})" if paper_eps is not None else "")))
    ok = None if attn_rid is None or ffn_rid is None else ffn_rid > attn_rid
    out.append(_claim("The FFN expands the subspace more than attention (RID of the FFN above attention's)", ok,
                      f"FFN {both('FFN', 'RID')}, attention {both('Attention', 'RID')}"))
    ok = None if attn_mix is None or ffn_mix is None else (attn_mix > 0 and attn_mix > ffn_mix)
    out.append(_claim("Attention mixes tokens: its MixIG is positive and above the FFN's", ok,
                      f"attention {both('Attention', 'MixIG')}, FFN {both('FFN', 'MixIG')}"))
    for label in ("Noise Δ", "Noise QKV"):
        rid, mix = get(label, "RID"), get(label, "MixIG")
        ok = None if rid is None or mix is None or attn_rid is None else (rid > attn_rid and mix < 0)
        out.append(_claim(f"{label} in attention's place expands more than attention and mixes negatively "
                          f"(RID above attention's, MixIG below 0)", ok,
                          f"RID {both(label, 'RID')}, MixIG {both(label, 'MixIG')}"))
    return out


def layer_claims(curves: pd.DataFrame, scope: str = "all") -> list[Claim]:
    """Table 1's ordering layer by layer, from `lostattn.residual.analysis.layer_curves` (vanilla condition)."""
    v = curves[(curves["condition"] == "vanilla") & (curves["scope"] == scope)]
    a = v[v["module"] == "attention"].set_index("layer")
    f = v[v["module"] == "ffn"].set_index("layer")
    layers = a.index.intersection(f.index)
    n = len(layers)
    if n == 0:
        return [_claim("Attention's RID stays below the FFN's, layer by layer", None, "no layer measured")]
    rid_below = int((a.loc[layers, "rid"] < f.loc[layers, "rid"]).sum())
    mix_above = int((a.loc[layers, "mixig"] > f.loc[layers, "mixig"]).sum())
    return [
        _claim("Attention's RID stays below the FFN's, layer by layer (in most layers)", rid_below > n / 2,
               f"in {rid_below} of {n} layers"),
        _claim("Attention's MixIG stays above the FFN's, layer by layer (in most layers)", mix_above > n / 2,
               f"in {mix_above} of {n} layers"),
    ]


def scope_claims(t1_by_scope: dict[str, pd.DataFrame]) -> list[Claim]:
    """Table 1's two orderings (FFN RID above attention's; attention MixIG above the FFN's) on each token scope."""
    out = []
    for scope, t in t1_by_scope.items():
        r = t.set_index("module")
        if not {"Attention", "FFN"} <= set(r.index):
            out.append(_claim(f"Table 1's ordering holds on {scope} tokens", None, "too few tokens in this scope"))
            continue
        a, f = r.loc["Attention"], r.loc["FFN"]
        ok = bool(f["RID"] > a["RID"] and a["MixIG"] > f["MixIG"])
        out.append(_claim(f"Table 1's ordering holds on {scope} tokens (FFN RID above attention's, attention MixIG "
                          f"above the FFN's)", ok,
                          f"RID attention {_f(a['RID'])} / FFN {_f(f['RID'])}; MixIG attention {_f(a['MixIG'])} / "
                          f"FFN {_f(f['MixIG'])}"))
    return out


def table2_claims(wide: pd.DataFrame, modes: list[str], paper_deltas: dict[str, float] | None = None,
                  rows: str = "family") -> list[Claim]:
    """The claims of Table 2 from accuracy per family (rows; `rows` names what a row is) and condition (columns:
    vanilla, the SAP modes, and optionally blind). `paper_deltas` (benchmark -> reported change under noise) is
    quoted beside."""
    modes = [m for m in modes if m in wide.columns]
    out = []
    if "vanilla" not in wide.columns or not modes:
        return [_claim("Replacing learned attention over the image barely changes scores", None, "no SAP run")]
    delta = wide[modes].sub(wide["vanilla"], axis=0)
    flat = delta.stack()
    worst = flat.abs().idxmax()
    quoted = ""
    if paper_deltas:
        quoted = " (paper: " + ", ".join(f"{b} {d:+.2f}" for b, d in paper_deltas.items()) + ")"
    out.append(_claim(f"Replacing learned attention over the image barely changes scores (every change within "
                      f"±{BARELY_POINTS:g} points)", bool(flat.abs().max() <= BARELY_POINTS),
                      f"largest change {_pts(flat[worst])} points ({worst[0]}, {worst[1]}); "
                      f"{int((flat.abs() <= BARELY_POINTS).sum())} of {len(flat)} {rows} × mode cells within "
                      f"±{BARELY_POINTS:g}{quoted}"))
    rises = flat[flat > 0]
    out.append(_claim("Predefined attention sometimes scores higher than the learned one", len(rises) > 0,
                      (f"{len(rises)} of {len(flat)} cells rise, most {_pts(rises.max())} points "
                       f"({rises.idxmax()[0]}, {rises.idxmax()[1]})") if len(rises) else
                      f"no cell rises (the highest is {_pts(flat.max())} points)"))
    if "blind" in wide.columns:
        drop = (wide["blind"] - wide["vanilla"])
        out.append(_claim("Control: the families need the image (removing it lowers the score)",
                          bool((drop < 0).all()),
                          # one cell, or every cell alike: one number, not a range from x to x
                          f"blind minus vanilla {_pts(drop.min())} points" if drop.min() == drop.max() else
                          f"blind minus vanilla from {_pts(drop.min())} to {_pts(drop.max())} points"))
    return out


def sweep_claims(lam_table: pd.DataFrame, window_table: pd.DataFrame) -> list[Claim]:
    """How much the score depends on how much attention is replaced (λ) and where (layer windows): accuracy per
    family (rows) and λ (columns), and per family and window (columns, "none" the vanilla model)."""
    out = []
    span = (lam_table.max(axis=1) - lam_table.min(axis=1))
    fam = span.idxmax()
    out.append(_claim(f"The score barely depends on how much attention is replaced (every family within "
                      f"{BARELY_POINTS:g} points over λ)", bool(span.max() <= BARELY_POINTS),
                      f"widest range {span.max():.1f} points ({fam}, λ from {lam_table.columns.min():g} to "
                      f"{lam_table.columns.max():g})"))
    if "none" in window_table.columns and window_table.shape[1] > 1:
        d = window_table.drop(columns="none").sub(window_table["none"], axis=0).stack()
        worst = d.abs().idxmax()
        out.append(_claim(f"Replacing attention in any one window of layers barely changes the score (within "
                          f"±{BARELY_POINTS:g} points)", bool(d.abs().max() <= BARELY_POINTS),
                          f"largest change {_pts(d[worst])} points ({worst[0]}, layers {worst[1]})"))
    return out


def accuracy_claims(acc: pd.DataFrame) -> list[Claim]:
    """The model is fit to be analysed: every family above chance (when chance is known)."""
    if "chance" not in acc or acc["chance"].isna().all():
        lo = acc.loc[acc["accuracy"].idxmin()]
        return [_claim("Every family is scored", None, f"accuracy from {lo['accuracy']:.1f}% ({lo['family']}) to "
                                                         f"{acc['accuracy'].max():.1f}%; chance is not known here")]
    margin = acc["accuracy"] - acc["chance"]  # both in percent
    low = acc.loc[margin.idxmin()]
    return [_claim("The model answers every family above chance (the precondition for reading Tables 1 and 2 on it)",
                   bool((margin > 0).all()), f"smallest margin {margin.min():+.1f} points ({low['family']}: "
                                             f"{low['accuracy']:.1f}% against chance {low['chance']:.1f}%)")]


__all__ = ["Claim", "Verdict", "verdict", "verdict_markdown", "table1_claims", "layer_claims", "scope_claims",
           "table2_claims", "sweep_claims", "accuracy_claims", "HOLDS", "FAILS", "UNTESTED"]
