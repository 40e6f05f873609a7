"""What a results page found, computed from the run's own numbers: for each claim of the paper that the page
tests, whether this run shows it, judged by the claim's 95% interval, with the numbers.

A page computes its claims with one `*_verdicts` function and shows `verdict(claims, out_dir)` at its top, which
also writes `<out_dir>/verdicts.json` (the landing page's scorecard reads these files). Each claim has one of three
outcomes (`lostattn.stats`): it holds when its interval lies on the claimed side (or inside ±margin for "barely
changes", a TOST), does not hold when it lies on the other side (wholly outside ±margin), and is inconclusive at this
n otherwise, with the number of samples that would decide it. The wording is fixed per claim; the numbers, their
precision and the outcome come from the run. Thresholds a claim needs are module constants named in its text.

`table1_claims` and `table2_claims` judge point estimates (the aggregated matrix of `lostattn.paper.aggregate`,
which holds no per-sample values); the pages use the interval-based `*_verdicts`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lostattn.stats import (FAILS, HOLDS, INCONCLUSIVE, Interval, bootstrap_mean, decide_sign, decide_within)

# Table 1: attention's RID counts as "near eps_RoPE" up to this multiple of it (the paper: 0.06 against 0.062).
NEAR_EPS_FACTOR = 2.0
# Table 2 and the sweeps: a change of accuracy up to this many points counts as "barely changes" (the paper's quoted
# cells move by 1.45 and 2.03 points).
BARELY_POINTS = 3.0

UNTESTED = "not tested"
# marks drawn from text (no emoji font needed); the book's CSS colours `verdict-<outcome>` spans
_MARK = {HOLDS: "HOLDS", FAILS: "DOES NOT HOLD", INCONCLUSIVE: "INCONCLUSIVE", UNTESTED: "NOT TESTED"}
VERDICTS_FILE = "verdicts.json"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and what this run says of it: `outcome` HOLDS, FAILS, INCONCLUSIVE or UNTESTED;
    `estimate`, `low`, `high` (95% interval, in `unit`) of the quantity that decides it, over `n` samples, and
    `n_needed` the samples that would decide an inconclusive one (None when decided)."""

    text: str
    outcome: str
    evidence: str
    scope: str = ""
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    unit: str = ""
    n: int | None = None
    n_needed: int | None = None
    slack: float | None = None  # how far the interval clears (or misses) its boundary, in `unit`
    leans: bool | None = None  # whether the estimate lies on the claimed side (where more samples would take it)

    def to_dict(self, page: str | None = None) -> dict:
        """The scorecard's record: page, claim, scope, outcome, estimate, low, high, unit, n, n_needed."""
        def num(v):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        return {"page": page, "claim": self.text, "scope": self.scope, "outcome": self.outcome,
                "estimate": num(self.estimate), "low": num(self.low), "high": num(self.high), "unit": self.unit,
                "n": None if self.n is None else int(self.n),
                "n_needed": None if self.n_needed is None else int(self.n_needed)}


def _claim(text: str, ok: bool | None, evidence: str, scope: str = "") -> Claim:
    """A claim judged on point estimates (no interval): holds or does not hold, or not tested when `ok` is None."""
    return Claim(text, UNTESTED if ok is None else HOLDS if ok else FAILS, evidence, scope)


def judged(text: str, iv: Interval, *, above: float | None = None, below: float | None = None,
           within: float | None = None, scope: str = "", label: str = "", note: str = "") -> Claim:
    """A claim decided by the interval `iv`: "above `above`", "below `below`" or "inside ±`within`"."""
    if within is not None:
        outcome, need = decide_within(iv, within)
        slack, leans = min(within - iv.high, iv.low + within), abs(iv.estimate) < within
    elif above is not None:
        outcome, need = decide_sign(iv, True, above)
        slack, leans = iv.low - above, iv.estimate > above
    else:
        outcome, need = decide_sign(iv, False, below)
        slack, leans = below - iv.high, iv.estimate < below
    evidence = f"{label + ' ' if label else ''}{iv.text()} (95% interval, n = {iv.n})"
    if outcome == INCONCLUSIVE:
        evidence += f"; about {need} samples would decide it" if need else "; no sample size decides it"
    if note:
        evidence += f"; {note}"
    return Claim(text, outcome, evidence, scope, iv.estimate, iv.low, iv.high, iv.unit, iv.n, need, slack, leans)


def every(text: str, parts: list[tuple[str, Claim]], scope: str = "", note: str = "") -> Claim:
    """A claim made of parts (name, claim) that must all hold: it does not hold when one part does not, holds when
    all do, and is inconclusive otherwise. The numbers shown are the deciding part's: the first failing one, the
    undecided one needing the most samples, or (when all hold) the one closest to failing."""
    return _combine(text, parts, scope, note, need_all=True)


def some(text: str, parts: list[tuple[str, Claim]], scope: str = "", note: str = "") -> Claim:
    """A claim that one of the parts (name, claim) holds: holds when one does, does not hold when none can (all
    do not hold), inconclusive otherwise (with the undecided part needing the fewest samples)."""
    return _combine(text, parts, scope, note, need_all=False)


def _combine(text, parts, scope, note, need_all):
    if not parts:
        return Claim(text, UNTESTED, "nothing measured", scope)
    outs = [c.outcome for _, c in parts]
    if need_all:
        outcome = FAILS if FAILS in outs else HOLDS if all(o == HOLDS for o in outs) else INCONCLUSIVE
    else:
        outcome = HOLDS if HOLDS in outs else FAILS if all(o == FAILS for o in outs) else INCONCLUSIVE
    if outcome == INCONCLUSIVE:
        pick = _deciding_part([kc for kc in parts if kc[1].outcome == INCONCLUSIVE], need_all)
    elif (outcome == FAILS) == need_all:  # one part decided it: the first such
        pick = next(kc for kc in parts if kc[1].outcome == outcome)
    else:  # every part decided it: the one closest to its boundary
        pick = min(parts, key=lambda kc: kc[1].slack if kc[1].slack is not None else math.inf)
    name, c = pick
    counts = f"{outs.count(HOLDS)} of {len(parts)} hold, {outs.count(FAILS)} do not, {outs.count(INCONCLUSIVE)} " \
             f"inconclusive"
    evidence = f"{counts}; {name}: {c.evidence}" + (f"; {note}" if note else "")
    return Claim(text, outcome, evidence, scope, c.estimate, c.low, c.high, c.unit, c.n,
                 c.n_needed if outcome == INCONCLUSIVE else None, c.slack, c.leans)


def _deciding_part(undecided, need_all):
    """The undecided part whose sample size would decide the combined claim the way the estimates lean: for "all
    hold", a part leaning against it decides it alone (the one needing fewest samples), else every part must hold
    (the one needing most); for "one holds", the reverse."""
    def need(kc):
        return kc[1].n_needed or math.inf
    alone = [kc for kc in undecided if kc[1].leans is (not need_all)]
    return min(alone, key=need) if alone else max(undecided, key=need)


def verdict_markdown(claims: list[Claim], title: str = "Verdict: what this run shows") -> str:
    """A MyST admonition with the class `verdict`: one line per claim, its outcome (a text mark), scope and numbers."""
    lines = [f":::{{admonition}} {title}", ":class: verdict", ""]
    for c in claims:
        scope = f" *({c.scope})*" if c.scope else ""
        lines.append(f"- **[{_MARK[c.outcome]}]** {c.text}{scope}: {c.evidence}")
    if not claims:
        lines.append("- **[NOT TESTED]** this page tests no claim of the paper on this run")
    outs = [c.outcome for c in claims]
    tested = sum(o != UNTESTED for o in outs)
    lines += ["", f"{outs.count(HOLDS)} of {tested} tested claims hold on this run, {outs.count(FAILS)} do not, "
                  f"{outs.count(INCONCLUSIVE)} are inconclusive at this sample size (95% intervals).", ":::"]
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
        return pd.DataFrame([c.to_dict() for c in self.claims]).drop(columns="page")

    def save(self, out_dir: str | Path, page: str | None = None) -> Path:
        """`<out_dir>/verdicts.json`: the tested claims as the scorecard reads them (`Claim.to_dict`); `page`
        defaults to the output folder's name, which is the notebook's."""
        out_dir = Path(out_dir)
        page = page or out_dir.name
        rows = [c.to_dict(page) for c in self.claims if c.outcome != UNTESTED]
        path = out_dir / VERDICTS_FILE
        path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return path


def verdict(claims: list[Claim], out_dir: str | Path | None = None, title: str = "Verdict: what this run shows",
            page: str | None = None) -> Verdict:
    """The verdict box of `claims`; with `out_dir`, also written to `<out_dir>/verdicts.json`."""
    v = Verdict(claims, title)
    if out_dir is not None:
        v.save(out_dir, page)
    return v


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


# ---- the pages' verdicts, judged by intervals ------------------------------------------------------------------
def _pair(per: pd.DataFrame, x: str, y: str, col: str) -> np.ndarray:
    """Per-sample values of module `y` minus module `x` (samples in both)."""
    a = per[per["module"] == x].set_index("sample")[col]
    b = per[per["module"] == y].set_index("sample")[col]
    common = a.index.intersection(b.index)
    return (b.loc[common] - a.loc[common]).to_numpy()


def table1_verdicts(per: pd.DataFrame, eps: pd.Series, scope: str = "", seed: int = 0) -> list[Claim]:
    """Table 1's claims from per-sample module means `per` (`lostattn.paper.tables.per_sample_means`) and per-sample
    ε_RoPE `eps` (`eps_per_sample`), each decided by a bootstrap interval over samples; comparisons are paired per
    sample."""
    mods = set(per["module"])
    out = []

    def boot(v, unit="RID"):
        return bootstrap_mean(v, seed=seed, unit=unit)

    if "Attention" in mods and len(eps):
        a = per[per["module"] == "Attention"].set_index("sample")["rid"]
        common = a.index.intersection(eps.index)
        iv = bootstrap_mean((a.loc[common] - NEAR_EPS_FACTOR * eps.loc[common]).to_numpy(), seed=seed, unit="RID")
        out.append(judged(f"Attention barely expands the subspace: its RID is near ε_RoPE (below {NEAR_EPS_FACTOR:g}× "
                          f"ε_RoPE)", iv, below=0.0, scope=scope, label=f"attention RID − {NEAR_EPS_FACTOR:g}·ε_RoPE",
                          note=f"attention RID {boot(a).text()}, ε_RoPE {boot(eps).text()}"))
    if {"Attention", "FFN"} <= mods:
        out.append(judged("The FFN expands the subspace more than attention (RID of the FFN above attention's)",
                          boot(_pair(per, "Attention", "FFN", "rid")), above=0.0, scope=scope,
                          label="RID FFN − attention"))
        out.append(judged("Attention mixes tokens: its MixIG is positive",
                          boot(per[per["module"] == "Attention"]["mixig"], "MixIG"), above=0.0, scope=scope,
                          label="attention MixIG"))
        out.append(judged("Attention mixes more than the FFN (MixIG of attention above the FFN's)",
                          boot(_pair(per, "FFN", "Attention", "mixig"), "MixIG"), above=0.0, scope=scope,
                          label="MixIG attention − FFN"))
    for label in ("Noise Δ", "Noise QKV"):
        if {label, "Attention"} <= mods:
            out.append(judged(f"{label} in attention's place expands more than attention (RID above attention's)",
                              boot(_pair(per, "Attention", label, "rid")), above=0.0, scope=scope,
                              label=f"RID {label} − attention"))
            out.append(judged(f"{label} in attention's place mixes negatively (MixIG below 0)",
                              boot(per[per["module"] == label]["mixig"], "MixIG"), below=0.0, scope=scope,
                              label=f"{label} MixIG"))
    return out


def layer_verdicts(metrics: pd.DataFrame, scope: str = "all", seed: int = 0, spec: str = "") -> list[Claim]:
    """Table 1's two orderings layer by layer (vanilla): in each layer the per-sample difference's interval; a
    claim holds when it is shown in most layers, does not hold when the opposite is shown in at least half."""
    v = metrics[(metrics["condition"] == "vanilla") & (metrics["scope"] == scope)]
    out = []
    for text, col, low_mod, high_mod in (
            ("Attention's RID stays below the FFN's, layer by layer (in most layers)", "rid", "attention", "ffn"),
            ("Attention's MixIG stays above the FFN's, layer by layer (in most layers)", "mixig", "ffn", "attention")):
        parts = []
        for layer, g in v.groupby("layer"):
            d = _pair(g, low_mod, high_mod, col)
            if len(d):
                parts.append((f"layer {layer}", judged(text, bootstrap_mean(d, seed=seed, unit=col), above=0.0)))
        if not parts:
            out.append(Claim(text, UNTESTED, "no layer measured"))
            continue
        outs = [c.outcome for _, c in parts]
        k, L = outs.count(HOLDS), len(parts)
        outcome = HOLDS if k > L / 2 else FAILS if outs.count(FAILS) >= L / 2 else INCONCLUSIVE
        per_sample = (v[v["module"] == high_mod].set_index(["sample", "layer"])[col]
                      - v[v["module"] == low_mod].set_index(["sample", "layer"])[col]).groupby("sample").mean()
        whole = bootstrap_mean(per_sample.dropna(), seed=seed, unit=col)
        need = None
        if outcome == INCONCLUSIVE:  # the samples that would decide the layer that tips the majority
            needs = sorted(c.n_needed for _, c in parts if c.outcome == INCONCLUSIVE and c.n_needed)
            short = math.floor(L / 2) + 1 - k
            need = needs[short - 1] if 0 < short <= len(needs) else None
        sc = f"{scope} tokens, {L} layers" + (f", metric spec {spec}" if spec else "")
        out.append(Claim(text, outcome, f"shown in {k} of {L} layers, the opposite in {outs.count(FAILS)}; "
                                        f"difference over layers {whole.text()}", sc, whole.estimate, whole.low,
                         whole.high, col, parts[0][1].n, need))
    return out


def scope_verdicts(per_by_scope: dict[str, pd.DataFrame], seed: int = 0) -> list[Claim]:
    """Table 1's two orderings (FFN RID above attention's; attention MixIG above the FFN's) on each token scope,
    from per-sample module means per scope; a scope holds when both are shown."""
    out = []
    for scope, per in per_by_scope.items():
        text = (f"Table 1's ordering holds on {scope} tokens (FFN RID above attention's, attention MixIG above the "
                f"FFN's)")
        if not {"Attention", "FFN"} <= set(per["module"]):
            out.append(Claim(text, UNTESTED, "too few tokens in this scope", f"{scope} tokens"))
            continue
        rid = judged(text, bootstrap_mean(_pair(per, "Attention", "FFN", "rid"), seed=seed, unit="RID"), above=0.0)
        mix = judged(text, bootstrap_mean(_pair(per, "FFN", "Attention", "mixig"), seed=seed, unit="MixIG"),
                     above=0.0)
        out.append(every(text, [("RID FFN − attention", rid), ("MixIG attention − FFN", mix)],
                         scope=f"{scope} tokens"))
    return out


def sap_scope(protocol: str, cfg, lam: float) -> str:
    """The scope a Table 2 verdict names: protocol, replaced layers, head window, λ."""
    if cfg is None:
        return f"{protocol} protocol"
    layers = "every layer but 0" if cfg.layers == "all" else "layers " + ",".join(map(str, cfg.layers))
    lo, hi = cfg.head_percentile
    heads = "every head" if (lo, hi) == (0.0, 1.0) else f"heads at score percentiles {lo:g}–{hi:g}"
    return f"{protocol} protocol, {layers}, {heads}, λ = {lam:g}"


def barely_changes_text(mode: str, where: str = "") -> str:
    """The one wording of the SAP claim, shared by pages 20 and 21."""
    return (f"Replacing learned attention over the image with {mode} barely changes the benchmark score "
            f"(|Δ| below {BARELY_POINTS:g} points){where}")


def sap_verdicts(delta: pd.DataFrame, protocol: str, modes: list[str], scope: str,
                 paper_deltas: dict[str, float] | None = None) -> list[Claim]:
    """Table 2's claims under one protocol, from `lostattn.paper.tables.deltas` (Δ per condition and family, with
    the whole benchmark as `ALL`): per mode, "barely changes" by TOST on the whole benchmark's Δ; "sometimes
    higher" by any cell's interval above 0; the blind control by every family's interval below 0."""
    from lostattn.paper.tables import ALL

    d = delta[delta["protocol"] == protocol]
    whole = d[d["family"] == ALL] if (d["family"] == ALL).any() else d

    def iv(row):
        return Interval(row["delta"], row["ci_low"], row["ci_high"], int(row["n"]), "points", row["p_value"])

    out = []
    quoted = ("paper: " + ", ".join(f"{b} {v:+.2f}" for b, v in paper_deltas.items())) if paper_deltas else ""
    for mode in modes:
        r = whole[whole["condition"] == mode]
        if r.empty:
            continue
        row = r.iloc[0]
        out.append(judged(barely_changes_text(mode), iv(row), within=BARELY_POINTS, scope=scope, label="Δ",
                          note=f"McNemar p = {row['p_value']:.2g}" + (f"; {quoted}" if quoted else "")))
    cells = d[(d["condition"].isin(modes)) & (d["family"] != ALL)]
    parts = [(f"{r.family}, {r.condition}", judged("", iv(r._asdict()), above=0.0, label="Δ"))
             for r in cells.itertuples(index=False)]
    if parts:
        out.append(some("Predefined attention sometimes scores higher than the learned one (a family × mode cell "
                        "with Δ above 0)", parts, scope=scope))
    blind = d[(d["condition"] == "blind") & (d["family"] != ALL)]
    if len(blind):
        parts = [(r.family, judged("", iv(r._asdict()), below=0.0, label="blind − vanilla"))
                 for r in blind.itertuples(index=False)]
        out.append(every("Control: the families need the image (removing it lowers every family's score)", parts,
                         scope=f"{protocol} protocol"))
    if not out:
        out.append(Claim(barely_changes_text("SAP"), UNTESTED, "no SAP run", scope))
    return out


def sweep_verdicts(lam_deltas: pd.DataFrame, window_deltas: pd.DataFrame, mode: str, scope: str) -> list[Claim]:
    """The sweeps told in page 20's words: "barely changes" at every λ (against λ = 0), and in every window of
    layers (λ = 1, against the vanilla model), each by TOST on the whole benchmark's Δ."""
    from lostattn.paper.tables import ALL

    def parts(d, key, name):
        w = d[d["family"] == ALL] if (d["family"] == ALL).any() else d
        return [(f"{name} {r[key]}", judged("", Interval(r["delta"], r["ci_low"], r["ci_high"], int(r["n"]),
                                                         "points", r["p_value"]), within=BARELY_POINTS, label="Δ"))
                for _, r in w.iterrows()]

    return [every(barely_changes_text(mode, " at every λ"), parts(lam_deltas, "lam", "λ ="),
                  scope=f"{scope}, every layer but 0, λ against λ = 0"),
            every(barely_changes_text(mode, " in any one window of layers"), parts(window_deltas, "window", "layers"),
                  scope=f"{scope}, λ = 1, against the vanilla model")]


def accuracy_verdicts(records: pd.DataFrame, chance: dict[str, float] | None, scope: str = "") -> list[Claim]:
    """The model is fit to be analysed: every family's accuracy above chance, by its Wilson interval."""
    from lostattn.stats import accuracy_ci

    text = "The model answers every family above chance (the precondition for reading Tables 1 and 2 on it)"
    if not chance:
        return [Claim(text, UNTESTED, "chance is not known for this benchmark", scope)]
    parts = [(fam, judged("", accuracy_ci(g["correct"].astype(int)), above=chance[fam], label="accuracy",
                          note=f"chance {chance[fam]:.1f}%"))
             for fam, g in records.groupby("family") if fam in chance]
    return [every(text, parts, scope=scope)]


__all__ = ["Claim", "Verdict", "verdict", "verdict_markdown", "judged", "every", "some", "table1_claims",
           "table2_claims", "table1_verdicts", "layer_verdicts", "scope_verdicts", "sap_verdicts", "sweep_verdicts",
           "accuracy_verdicts", "sap_scope", "barely_changes_text", "HOLDS", "FAILS", "INCONCLUSIVE", "UNTESTED"]
