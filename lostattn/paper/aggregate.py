"""The paper's tables over a profile's whole matrix: Table 1 per model and its mean over models, Table 2 as model ×
benchmark × condition, each beside the paper's values where the paper reports them.

The inputs are the cells' outputs, found through the profile's plan (`lostattn.pipeline.reproduce.plan`): notebook 10's
table1.csv (module, RID, dS, dD, MixIG, ..., n) and notebook 20's table2_scores.csv (family, n, accuracy, f1,
yes_ratio, condition), each with its .meta.json sidecar. A cell without outputs, or whose last run failed or was
interrupted, stays missing (NaN, shown as —); nothing is filled in. Every table is checked before it is read
(`cell_state`): a cell whose key, stored when it ran, is not the key of its inputs and code now is 'stale'; a table
changed since its run finished (the marker keeps its digest), cut short, unparseable or lacking a column or module is
'unreadable'; both are left out and named with the reason. Cells that reproduce did not run (outputs copied in) and
that come from different commits stay in, each marked with its commit.

- Table 1: a model's row pools its benchmarks (the n-weighted mean of each cell's module means, as if one cell had
  measured them all); the mean over models weighs every model alike, as the paper's average over 15 LVLMs.
- Table 2: a benchmark's score is the n-weighted accuracy over its families. The synthetic benchmark is shown whole
  and family by family, each family under the paper benchmark it stands for (the registry's `analogues`).
- The paper's values (data/paper/table1.csv, table2.csv) join on the module, and on the model's name in the profile
  and the benchmark's paper name (`lostattn.tasks.registry.display_name`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lostattn.provenance import REPO_ROOT, provenance
from lostattn.pipeline.folders import file_digest, read_marker
from lostattn.pipeline.keys import CacheKeys
from lostattn.pipeline.plan import MatrixCell, plan
from lostattn.pipeline.profiles import load_profile

TABLE1 = ("10_table1_rid_mixig", "table1.csv")  # (notebook, file) each cell writes
TABLE2 = ("20_table2_sap", "table2_scores.csv")
BASE_CONDITIONS = ("vanilla", "blind")
MEAN = "mean over models"
EPS = "ε_RoPE"  # Table 1's baseline row: the cells' eps_rope.csv (RID of the output with vs without RoPE)
STATES = ("done", "not run", "running or interrupted", "failed", "other run", "stale", "unreadable")


@dataclass
class Matrix:
    """A profile's cells and what they wrote: the inputs of every table below."""

    profile: str
    models: list[str]  # the profile's names, in its order
    benchmarks: list[str]  # registry names, in the profile's order
    conditions: list[str]  # Table 2's: vanilla, blind, then the profile's SAP modes
    coverage: pd.DataFrame  # cell, model, benchmark, notebook, state
    table1_cells: pd.DataFrame  # model, benchmark, module, metrics..., n
    table2_cells: pd.DataFrame  # model, benchmark, family, condition, n, accuracy, ...


def output_folder(out_dir: str | Path) -> Path:
    """Where the aggregated tables are written: `out_dir` (relative to the repository), or under LOSTATTN_OUT_ROOT
    when the test suite sets it, as `lostattn.pages.setup.start` does."""
    out = Path(out_dir)
    if os.environ.get("LOSTATTN_OUT_ROOT"):
        out = Path(os.environ["LOSTATTN_OUT_ROOT"]) / out.name
    elif not out.is_absolute():
        out = REPO_ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    return out


def _same_model(meta_model, cell_model_path) -> bool:
    if meta_model is None or cell_model_path is None:
        return True
    a, b = str(meta_model), str(cell_model_path)
    return a == b or Path(a).name == Path(b).name


def _meta(table: Path) -> dict:
    """The provenance sidecar of a table file ({} when it has none or it is unreadable)."""
    try:
        meta = json.loads(table.with_suffix(".meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


# What a finished cell's table must hold to be read: its columns, and for Table 1 the modules every run measures.
REQUIRED = {TABLE1[1]: {"columns": ("module", "RID", "n"), "module": ("Attention", "FFN")},
            TABLE2[1]: {"columns": ("family", "n", "accuracy", "condition")}}


def table_problem(path: Path, marker: dict | None) -> str | None:
    """Why a finished cell's table cannot be used (None when it can): changed since its run finished (the marker
    keeps each table's digest), cut short (no final newline: every table is written whole), unparseable, a column
    or module missing, or a row with an empty or non-numeric count or metric."""
    digests = (marker or {}).get("digests") or {}
    rel = path.name
    if rel in digests and file_digest(path) != digests[rel]:
        return f"{rel} changed since its run finished (cut short or edited)"
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        return f"{rel} is cut short (its last line is incomplete)"
    try:
        df = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as e:
        return f"{rel} cannot be parsed ({' '.join(str(e).split())[:80]})"
    need = REQUIRED.get(rel, {})
    missing = [c for c in need.get("columns", ()) if c not in df.columns]
    if missing:
        return f"{rel} lacks column(s) {', '.join(missing)}"
    lost = [m for m in need.get("module", ()) if m not in set(df["module"])]
    if lost:
        return f"{rel} lacks the row(s) of {', '.join(lost)}"
    numeric = [c for c in ("n", "RID", "accuracy") if c in df.columns]
    bad = [c for c in numeric if not pd.api.types.is_numeric_dtype(df[c]) or (c != "accuracy" and df[c].isna().any())]
    if bad:
        return f"{rel} has empty or non-numeric values in {', '.join(bad)}"
    return None


def cell_state(cell: MatrixCell, file: str, current_key: str | None = None) -> tuple[str, str]:
    """Whether a cell's `file` can be used, and why not: ('done', ''), ('not run', ''), ('running or
    interrupted', ''), ('failed', ''), ('other run', the sidecar's model or benchmark), ('stale', why: the cell's
    key, stored when it ran, differs from `current_key`: its inputs or code changed since), or ('unreadable', why:
    `table_problem`)."""
    path = cell.out_dir / file
    marker = read_marker(cell.out_dir) if cell.out_dir.is_dir() else None
    if marker is not None and marker.get("state") in ("failed",):
        return "failed", ""
    if marker is not None and marker.get("state") in ("running", "interrupted"):
        return "running or interrupted", ""
    if not path.is_file():
        return "not run", ""
    meta = _meta(path)
    if meta:
        if (cell.benchmark and meta.get("benchmark") not in (None, cell.benchmark)) or \
                not _same_model(meta.get("model"), cell.params.get("model")):
            return "other run", f"its sidecar names {meta.get('model')} on {meta.get('benchmark')}"
    if marker is not None and current_key is not None and marker.get("key") != current_key:
        return "stale", "its inputs or the code it runs changed since it ran: rerun it (lostattn reproduce)"
    problem = table_problem(path, marker)
    if problem:
        return "unreadable", problem + ": rerun the cell"
    return "done", ""


def collect(profile: str = "tiny", config: str | Path | None = None, results: str | Path | None = None) -> Matrix:
    """Read every cell's table files for the profile `profile` (its file `config`, results under `results`)."""
    # Relative paths are the repository's, wherever the kernel runs (the test suite runs it in notebooks/).
    config = REPO_ROOT / config if config and not Path(config).is_absolute() else config
    results = REPO_ROOT / results if results and not Path(results).is_absolute() else results
    prof = load_profile(profile, config)
    cells = plan(prof, results)
    models = [m["name"] for m in prof.models]
    benches = [b["name"] for b in prof.benchmarks]
    conditions = list(BASE_CONDITIONS)
    cov, t1, t2 = [], [], []
    keys = CacheKeys(cells)
    for c in cells:
        for (nb, file), sink in ((TABLE1, t1), (TABLE2, t2)):
            if c.notebook != nb:
                continue
            state, why = cell_state(c, file, keys.key(c) if _has_marker(c) else None)
            code = _meta(c.out_dir / file).get("git_commit") if state == "done" else None
            cov.append({"cell": c.number, "model": c.model, "benchmark": c.benchmark, "notebook": nb,
                        "state": state, "why": why, "code": code})
            if nb == TABLE2[0]:
                for m in c.params.get("modes") or []:
                    if m not in conditions:
                        conditions.append(m)
            if state == "done":
                df = pd.read_csv(c.out_dir / file)
                if "protocol" in df.columns and df["protocol"].nunique() > 1:
                    # a cell may also score a few conditions under a second protocol: the table is its main one's
                    main = _meta(c.out_dir / file).get("protocol") or df["protocol"].iloc[0]
                    df = df[df["protocol"] == main]
                if nb == TABLE1[0]:
                    df = _with_eps_row(df, c.out_dir / "eps_rope.csv")
                df.insert(0, "benchmark", c.benchmark)
                df.insert(0, "model", c.model)
                sink.append(df)
    t2df = pd.concat(t2, ignore_index=True) if t2 else pd.DataFrame(
        columns=["model", "benchmark", "family", "n", "accuracy", "condition"])
    for cond in t2df["condition"].dropna().unique():
        if cond not in conditions:
            conditions.append(cond)
    coverage = pd.DataFrame(cov, columns=["cell", "model", "benchmark", "notebook", "state", "why", "code"])
    _mark_mixed_code(coverage)
    return Matrix(prof.name, models, benches, conditions, coverage.drop(columns="code"),
                  pd.concat(t1, ignore_index=True) if t1 else pd.DataFrame(columns=["model", "benchmark", "module"]),
                  t2df)


def _has_marker(cell: MatrixCell) -> bool:
    return cell.out_dir.is_dir() and read_marker(cell.out_dir) is not None


def _mark_mixed_code(coverage: pd.DataFrame) -> None:
    """Cells written by different code versions (their sidecars' commits differ) stay in the tables, each marked
    with the commit that wrote it, so a mix is never silent; cells reproduce ran are checked by key instead."""
    done = coverage[coverage["state"] == "done"]
    commits = done["code"].dropna().unique()
    if len(commits) > 1:
        for i in done.index:
            if pd.notna(coverage.at[i, "code"]):
                coverage.at[i, "why"] = (f"written by commit {str(coverage.at[i, 'code'])[:12]}; the cells behind "
                                         f"these tables come from {len(commits)} code versions")


def _with_eps_row(t1: pd.DataFrame, eps_file: Path) -> pd.DataFrame:
    """Table 1 of a cell with its eps_RoPE as one more row (RID, dS, dD: means over samples and layers)."""
    if not eps_file.is_file():
        return t1
    eps = pd.read_csv(eps_file)
    row = {"module": EPS, "RID": eps["rid"].mean(), "dS": eps["dS"].mean(), "dD": eps["dD"].mean(), "n": len(eps)}
    return pd.concat([t1, pd.DataFrame([row])], ignore_index=True)


# ---- Table 1 -----------------------------------------------------------------------------------------------------
def table1_metrics(m: Matrix) -> list[str]:
    """The metric columns of Table 1 (RID, dS, dD, MixIG, ... as the cells wrote them; spreads and counts left
    out)."""
    skip = {"model", "benchmark", "module", "n"}
    return [c for c in m.table1_cells.columns if c not in skip and not c.endswith("_sd")
            and pd.api.types.is_numeric_dtype(m.table1_cells[c])]


def _modules(m: Matrix) -> list[str]:
    return list(dict.fromkeys(m.table1_cells["module"])) if len(m.table1_cells) else []


def table1_per_model(m: Matrix) -> pd.DataFrame:
    """One row per model and module: each metric pooled over the model's benchmarks (n-weighted), and how many
    benchmark cells it pools; NaN for a model without a finished cell."""
    metrics = table1_metrics(m)
    rows = []
    for model in m.models:
        g = m.table1_cells[m.table1_cells["model"] == model]
        for module in _modules(m):
            h = g[g["module"] == module]
            row = {"model": model, "module": module, "benchmarks": int(h["benchmark"].nunique())}
            w = h["n"].astype(float) if "n" in h and h["n"].notna().all() else pd.Series(1.0, index=h.index)
            for c in metrics:
                ok = h[c].notna()
                row[c] = float(np.average(h.loc[ok, c], weights=w[ok])) if ok.any() and w[ok].sum() > 0 else np.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=["model", "module", *metrics, "benchmarks"])


def table1_mean(m: Matrix) -> pd.DataFrame:
    """Table 1 as the paper prints it: per module the mean over models (each model alike, those with a value),
    how many models it averages, and the paper's values beside."""
    from lostattn.paper.tables import paper_eps_rope, paper_table

    per = table1_per_model(m)
    metrics = table1_metrics(m)
    rows = []
    for module in _modules(m):
        g = per[per["module"] == module]
        row = {"module": module, "models": int(g[metrics[0]].notna().sum()) if metrics else 0}
        for c in metrics:
            row[c] = g[c].mean() if g[c].notna().any() else np.nan
        rows.append(row)
    out = pd.DataFrame(rows, columns=["module", *metrics, "models"])
    paper = paper_table("table1")
    paper = pd.concat([paper, pd.DataFrame([{"module": EPS, "RID": paper_eps_rope()}])], ignore_index=True)
    for c in [c for c in paper.columns if c != "module"]:
        out[f"{c} paper"] = out["module"].map(paper.set_index("module")[c])
    order = ["module"]
    for c in metrics:
        order += [c] + ([f"{c} paper"] if f"{c} paper" in out else [])
    return out[order + ["models"]]


def table1_layout(m: Matrix, metric: str = "RID") -> pd.DataFrame:
    """`metric` with a row per model and a last row, the mean over models; a column per module."""
    per = table1_per_model(m)
    wide = per.pivot(index="model", columns="module", values=metric).reindex(index=m.models, columns=_modules(m))
    wide.loc[MEAN] = wide.mean(axis=0, skipna=True)
    wide.index.name = "model"
    wide.columns.name = None
    return wide.reset_index()


# ---- Table 2 -----------------------------------------------------------------------------------------------------
def table2_scores(m: Matrix) -> pd.DataFrame:
    """Model × benchmark × condition: the n-weighted accuracy (%) over the benchmark's families and its n, the
    paper's value beside where it reports one; the synthetic benchmark also family by family, under the paper
    benchmark each family stands for. Every combination of the plan is a row; missing scores are NaN."""
    from lostattn.paper.tables import paper_table, weighted_accuracy
    from lostattn.tasks.registry import get_benchmark

    paper = paper_table("table2").set_index(["model", "benchmark", "condition"])["value"]
    paper = paper[~paper.index.duplicated()]
    df = m.table2_cells
    rows = []
    for model in m.models:
        for bench in m.benchmarks:
            b = get_benchmark(bench)
            groups = [(b.display_name, None, None)]  # (label, families, paper benchmark)
            groups += [(f"{b.display_name}: {fam} ≈ {analog}", [fam], analog) for fam, analog in b.analogues.items()]
            if not b.analogues:
                groups[0] = (b.display_name, None, b.display_name)
            for cond in m.conditions:
                g = df[(df["model"] == model) & (df["benchmark"] == bench) & (df["condition"] == cond)]
                for label, fams, analog in groups:
                    acc, n = weighted_accuracy(g if fams is None else g[g["family"].isin(fams)])
                    rows.append({"model": model, "benchmark": label, "condition": cond, "n": n, "accuracy": acc,
                                 "paper benchmark": analog,
                                 "paper": paper.get((model, analog, cond), np.nan) if analog else np.nan})
    return pd.DataFrame(rows, columns=["model", "benchmark", "condition", "n", "accuracy", "paper benchmark",
                                       "paper"])


def table2_layout(m: Matrix) -> pd.DataFrame:
    """Table 2 for the page: a row per model and benchmark, a column per condition, each followed by the paper's
    value for it wherever the paper reports one for a shown row."""
    s = table2_scores(m)
    out = s[["model", "benchmark"]].drop_duplicates().reset_index(drop=True)
    for cond in m.conditions:
        g = s[s["condition"] == cond].set_index(["model", "benchmark"])
        out[cond] = [g["accuracy"].get((r.model, r.benchmark), np.nan) for r in out.itertuples()]
        if g["paper"].notna().any():
            out[f"{cond} (paper)"] = [g["paper"].get((r.model, r.benchmark), np.nan) for r in out.itertuples()]
    return out


# ---- the page's figure and words -----------------------------------------------------------------------------------
def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def matrix_text(m: Matrix) -> str:
    """'3 models × 2 benchmarks; 12 of 12 cells ... finished': the matrix behind the tables, in words."""
    done = int((m.coverage["state"] == "done").sum())
    return (f"{_count(len(m.models), 'model', 'models')} × {_count(len(m.benchmarks), 'benchmark', 'benchmarks')}; "
            f"{done} of {_count(len(m.coverage), 'cell', 'cells')} behind these tables "
            f"{'has' if done == 1 else 'have'} finished outputs")


def sap_deltas(m: Matrix) -> pd.DataFrame:
    """Table 2's change under SAP: per model, whole benchmark and SAP mode, accuracy minus the vanilla accuracy
    (Δ, points); columns model, benchmark, condition, accuracy, Δ."""
    s = table2_scores(m)
    whole = s[~s["benchmark"].str.contains("≈")].copy()
    base = whole[whole["condition"] == "vanilla"].set_index(["model", "benchmark"])["accuracy"]
    whole["Δ"] = [a - base.get((mo, b), np.nan) for mo, b, a in zip(whole["model"], whole["benchmark"],
                                                                      whole["accuracy"])]
    modes = [c for c in m.conditions if c not in BASE_CONDITIONS]
    return whole[whole["condition"].isin(modes)][["model", "benchmark", "condition", "accuracy", "Δ"]]


def paper_tables_figure(m: Matrix, barely: float | None = None):
    """The page's figure: Table 1's RID and MixIG per module (the paper's mean over 15 LVLMs, ours over models,
    one dot per model) above Table 2's Δ accuracy under each SAP mode, one row per model · benchmark, on a scale
    that shows the ±`barely` band (the verdicts' 'barely changes', BARELY_POINTS) even when every Δ is 0."""
    import matplotlib.pyplot as plt

    from lostattn.pages.display import PAGE_WIDTH_IN, legend_below
    from lostattn.paper.verdicts import BARELY_POINTS

    barely = BARELY_POINTS if barely is None else barely
    per = table1_per_model(m)
    per = per[per["module"] != EPS]
    mean = table1_mean(m)
    mean = mean[mean["module"] != EPS]
    d = sap_deltas(m)
    rows = list(dict.fromkeys(f"{a} · {b}" for a, b in zip(d["model"], d["benchmark"])))
    # Table 2's panel: room for its title and x label, and a legible band per row (one row too).
    t2_height = 1.3 + 0.3 * max(len(rows), 2)
    fig = plt.figure(figsize=(PAGE_WIDTH_IN, 2.8 + t2_height), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.8, t2_height])
    modules = list(mean["module"])
    x = np.arange(len(modules))
    axes = list(top.subplots(1, 2))
    for ax, col in zip(axes, ("RID", "MixIG")):
        if col not in mean:
            ax.set_visible(False)
            continue
        paper_col = mean[f"{col} paper"] if f"{col} paper" in mean else pd.Series(np.nan, index=mean.index)
        ax.bar(x - 0.2, paper_col.fillna(0), width=0.4, color="0.75", label="paper (mean of 15 LVLMs)")
        ax.bar(x + 0.2, mean[col], width=0.4, color="tab:blue", label=f"this run ({MEAN})")
        for j, (_, g) in enumerate(per.groupby("model", sort=False)):
            g = g.set_index("module").reindex(modules)
            ax.scatter(x + 0.2, g[col], s=14, color="black", zorder=3, label="one model" if j == 0 else None)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x, modules, rotation=30, ha="right", fontsize=9)
        ax.set(title=f"Table 1: {col}", ylabel=col)
    ax = bottom.subplots()
    markers = "osD^v<>"
    modes = list(dict.fromkeys(d["condition"]))
    ax.axvspan(-barely, barely, color="tab:green", alpha=0.12, lw=0, label=f"±{barely:g} points ('barely changes')")
    ax.axvline(0, color="0.4", lw=0.8)
    for j, mode in enumerate(modes):
        g = d[d["condition"] == mode]
        y = [rows.index(f"{a} · {b}") + (j - (len(modes) - 1) / 2) * 0.18 for a, b in zip(g["model"], g["benchmark"])]
        ax.scatter(g["Δ"], y, s=30, marker=markers[j % len(markers)], zorder=3, label=mode)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    span = max(barely * 2, float(np.nanmax(np.abs(d["Δ"]))) * 1.15 if d["Δ"].notna().any() else 0)
    ax.set_xlim(-span, span)
    ax.set_xlabel("Δ accuracy, SAP minus vanilla (points)", fontsize=10)
    ax.set_title("Table 2: SAP minus vanilla, per model · benchmark")
    ax.grid(axis="x", color="0.9")
    legend_below(fig, [*axes, ax], ncol=3)
    return fig


# ---- coverage, saving ----------------------------------------------------------------------------------------------
def coverage_counts(m: Matrix) -> pd.DataFrame:
    """How many cells of each table are in each state."""
    cov = m.coverage
    rows = []
    for nb in dict.fromkeys(cov["notebook"]):
        g = cov[cov["notebook"] == nb]
        rows.append({"notebook": nb, **{s: int((g["state"] == s).sum()) for s in STATES}, "cells": len(g)})
    return pd.DataFrame(rows, columns=["notebook", *STATES, "cells"])


def save_tables(m: Matrix, out_dir: str | Path) -> dict[str, Path]:
    """Write the aggregated tables as CSVs under `out_dir`, each with a .meta.json provenance sidecar."""
    out = output_folder(out_dir)
    tables = {"table1_per_model": table1_per_model(m), "table1": table1_mean(m), "table2": table2_scores(m),
              "coverage": m.coverage}
    meta = provenance(profile=m.profile, models=m.models, benchmarks=m.benchmarks,
                      cells_done=int((m.coverage["state"] == "done").sum()), cells=len(m.coverage))
    paths = {}
    for name, df in tables.items():
        p = out / f"{name}.csv"
        df.to_csv(p, index=False)
        p.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        paths[name] = p
    return paths


def print_tables(profile: str = "tiny", config: str | Path | None = None, results: str | Path | None = None,
                 out_dir: str | Path | None = None) -> int:
    """The aggregated tables in a terminal (what notebooks/30_paper_tables shows), written as CSVs to `out_dir`
    when given; returns 0."""
    from lostattn.pages.display import table

    # From a command line, relative paths are the caller's (the notebook takes the repository's).
    config, results, out_dir = (Path(p).resolve() if p is not None else None for p in (config, results, out_dir))
    m = collect(profile, config, results)
    print(f"profile {m.profile}: {matrix_text(m)}\n")
    missing = m.coverage[m.coverage["state"] != "done"]
    if len(missing):
        print(repr(table(missing, caption="Cells left out of the tables (shown as —)")), "\n")
    marked = m.coverage[(m.coverage["state"] == "done") & (m.coverage["why"] != "")]
    if len(marked):
        print(repr(table(marked, caption="Cells in the tables, marked")), "\n")
    print(repr(table(table1_mean(m), caption="Table 1: the mean over models, beside the paper's")), "\n")
    for metric in [c for c in ("RID", "MixIG") if c in table1_metrics(m)]:
        print(repr(table(table1_layout(m, metric), caption=f"{metric} per model and module")), "\n")
    print(repr(table(table2_layout(m), digits=1, caption="Table 2: accuracy (%) by model, benchmark and condition")))
    if out_dir is not None:
        paths = save_tables(m, out_dir)
        print(f"\ntables written to {Path(next(iter(paths.values()))).parent}")
    return 0


# ---- what the matrix shows -----------------------------------------------------------------------------------------
def claims(m: Matrix) -> list:
    """The paper's claims tested on the whole matrix: Table 1's orderings on the mean over models (with the mean
    eps_RoPE), Table 2's on every model × benchmark cell (`lostattn.paper.verdicts`)."""
    from lostattn.paper.tables import paper_eps_rope, paper_table
    from lostattn.paper.verdicts import table1_claims, table2_claims

    out = []
    mean = table1_mean(m)
    if len(mean):
        eps_row = mean[mean["module"] == EPS]
        eps = float(eps_row["RID"].iloc[0]) if len(eps_row) and pd.notna(eps_row["RID"].iloc[0]) else None
        out += table1_claims(mean[mean["module"] != EPS], eps, paper_table("table1"), paper_eps_rope())
    s = table2_scores(m)
    whole = s[~s["benchmark"].str.contains("≈")]
    wide = whole.pivot_table(index=["model", "benchmark"], columns="condition", values="accuracy")
    wide.index = [f"{a} · {b}" for a, b in wide.index]
    modes = [c for c in m.conditions if c not in BASE_CONDITIONS]
    if len(wide):
        out += table2_claims(wide, modes, rows="model · benchmark")
    return out
