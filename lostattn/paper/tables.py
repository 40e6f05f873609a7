"""What the notebooks compute around the harness, so that a notebook only calls and plots: accuracy tables with
their Wilson intervals, the conditions of Table 2 under a protocol (the random SAP modes over several seeds), paired
changes Δ with their intervals and McNemar p-values, the λ and layer-window sweeps, Table 1's module means with
bootstrap intervals over samples, and the paper's numbers beside ours.

Units (`lostattn.stats`): accuracy in percent, Δ in points, metric means in the metric's own unit; every interval is
a 95% interval in the columns `ci_low`, `ci_high` (`<metric>_ci_low`, `<metric>_ci_high` where a row has several
means)."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from lostattn.harness.evaluate import EvalSettings, evaluate
from lostattn.provenance import REPO_ROOT, data_identity, provenance
from lostattn.sap.replace import SAPConfig
from lostattn.tasks.registry import get_benchmark
from lostattn.tasks.scoring import summarize
from lostattn.tasks.synthetic import CHANCE, SyntheticBenchmark
from lostattn.stats import accuracy_ci, bootstrap_mean, paired_difference

PAPER_DIR = REPO_ROOT / "data" / "paper"
ALL = "all families"  # the row of a benchmark's overall score (n-weighted over its families)
# The SAP modes that draw random numbers (lostattn.sap.distributions): run over several seeds
RANDOM_MODES = ("gaussian_noise", "key")


def paper_table(name: str) -> pd.DataFrame:
    """A table of the paper's reported numbers (data/paper/<name>.csv)."""
    path = PAPER_DIR / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no paper table {path}")
    return pd.read_csv(path, comment="#")


def paper_eps_rope() -> float:
    """The eps_RoPE the paper reports (data/paper/eps_rope.csv)."""
    return float(paper_table("eps_rope").set_index("quantity").loc["eps_RoPE", "value"])


def accuracy_report(lm, samples, records_file: str | Path, spec: EvalSettings, batch_size: int = 64,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score `samples` (resumable records in `records_file`); returns (per-family table, per-sample records).

    The table carries each family's Wilson interval (`ci_low`, `ci_high`, percent); synthetic families get a
    `chance` column (percent): the accuracy of guessing among the answers a question admits.
    """
    records = evaluate(lm, samples, records_file, spec, batch_size=batch_size, progress=progress)
    table = with_accuracy_ci(summarize(records), records)
    if spec.benchmark == "synthetic":
        table["chance"] = table["family"].map(CHANCE)
    return table, records


def embedded_test_report(lm, out_csv: str | Path, batch_size: int = 64, limit_per_family: int | None = None,
                         progress: bool = True) -> pd.DataFrame:
    """Per-family accuracy of a model on the whole synthetic test split, written to `out_csv` with provenance."""
    out_csv = Path(out_csv)
    spec = EvalSettings(model=lm.name, benchmark="synthetic")
    samples = SyntheticBenchmark().samples("test", limit_per_family=limit_per_family)
    table, _ = accuracy_report(lm, samples, out_csv.with_suffix(".jsonl"), spec, batch_size, progress)
    table.to_csv(out_csv, index=False)
    out_csv.with_suffix(".meta.json").write_text(json.dumps(provenance(seed=spec.seed, model=lm.name), indent=2))
    return table


# ---- Table 2 --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    """One column of Table 2: a run of the harness (vanilla, blind, or SAP in one mode) under one protocol."""

    name: str  # vanilla, blind, or the SAP mode
    spec: EvalSettings
    sap: SAPConfig | None = None

    @property
    def file_name(self) -> str:
        """Its records' file: the protocol, the condition and, for SAP, every SAP setting (`SAPConfig.tag`)."""
        return f"{self.spec.protocol}-{self.sap.tag() if self.sap else self.name}.jsonl"


def sap_conditions(lm, model: str, benchmark: str, data=None, split: str = "test", protocol: str = "official",
                   modes=("gaussian_noise",), lam: float = 1.0, layers=None, head_window=None, queries=None,
                   blind: bool = True, reasoning: bool = False, max_new_tokens: int | None = None,
                   seed: int = 42, sap_seeds: int = 1) -> list[Condition]:
    """Vanilla, (blind,) and one SAP run per mode under `protocol` (the random modes, `RANDOM_MODES`, once per seed
    `seed`, `seed + 1`, ... `sap_seeds` seeds in all); `layers`, `head_window` and `queries` None take the
    protocol's preset for the model's family ("all", "18,19,20" or a tuple of ints for layers)."""
    if sap_seeds < 1:
        raise ValueError(f"sap_seeds must be at least 1 (the number of seeds of the random SAP modes); got {sap_seeds}")
    base = EvalSettings(model=model, benchmark=benchmark, data=data_identity(data), split=split, protocol=protocol,
                   reasoning=reasoning, max_new_tokens=max_new_tokens, seed=seed)
    preset = base.resolve(lm)
    over = {"seed": seed, "layers": layers, "queries": queries, "head_percentile": head_window}
    out = [Condition("vanilla", base)]
    if blind:
        out.append(Condition("blind", replace(base, blind=True)))
    for mode in modes:
        for s in range(sap_seeds if mode in RANDOM_MODES else 1):
            cfg = preset.sap_config(mode, lam=lam, **{**over, "seed": seed + s})
            out.append(Condition(mode, replace(base, sap=cfg.to_dict()), cfg))
    return out


def score_conditions(lm, samples, out_dir: str | Path, conditions: list[Condition], batch_size: int = 64,
                     progress: bool = False) -> pd.DataFrame:
    """Per family and condition: n, accuracy (and F1 / yes ratio for yes/no families) with its Wilson interval
    (`ci_low`, `ci_high`), the protocol and the SAP seed named; records resumable under
    `out_dir/<protocol>-<condition>.jsonl`. `condition_records` gives the per-sample outcomes."""
    return scores_of(condition_records(lm, samples, out_dir, conditions, batch_size, progress))


def condition_records(lm, samples, out_dir: str | Path, conditions: list[Condition], batch_size: int = 64,
                      progress: bool = False) -> pd.DataFrame:
    """Every sample's outcome under every condition: protocol, condition, seed (None for non-random conditions),
    id, family, kind, prediction, answer, correct."""
    frames = []
    for c in conditions:
        recs = evaluate(lm, samples, Path(out_dir) / c.file_name, c.spec, batch_size=batch_size, sap_cfg=c.sap,
                        progress=progress)
        seed = c.sap.seed if c.sap is not None and c.name in RANDOM_MODES else None
        keep = [k for k in ("id", "family", "kind", "prediction", "answer", "correct") if k in recs]
        frames.append(recs[keep].assign(protocol=c.spec.protocol, condition=c.name, seed=seed))
    return pd.concat(frames, ignore_index=True)


def with_accuracy_ci(table: pd.DataFrame, records: pd.DataFrame, by: tuple[str, ...] = ("family",)) -> pd.DataFrame:
    """`table` (one row per `by` group of `records`) with the Wilson interval of each group's accuracy, percent."""
    ivs = {k if isinstance(k, tuple) else (k,): accuracy_ci(g["correct"].astype(int))
           for k, g in records.groupby(list(by), sort=False)}
    keys = list(zip(*(table[b] for b in by)))
    out = table.copy()
    at = out.columns.get_loc("accuracy") + 1  # beside the accuracy they belong to
    out.insert(at, "ci_low", [ivs[k].low for k in keys])
    out.insert(at + 1, "ci_high", [ivs[k].high for k in keys])
    return out


def scores_of(records: pd.DataFrame) -> pd.DataFrame:
    """`summarize` per protocol, condition, seed and family of `condition_records`, with Wilson intervals."""
    rows = []
    for (protocol, condition, seed), g in records.groupby(["protocol", "condition", records["seed"].fillna(-1)],
                                                         sort=False):
        t = with_accuracy_ci(summarize(g), g)
        t["condition"], t["protocol"], t["seed"] = condition, protocol, None if seed == -1 else int(seed)
        rows.append(t)
    return pd.concat(rows, ignore_index=True)


def first_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each condition's first SAP seed (and the non-random conditions): one run per condition, as the
    paper reports it and the reference stores it."""
    if "seed" not in frame or frame["seed"].isna().all():
        return frame
    first = frame.groupby(["protocol", "condition"])["seed"].transform("min")
    return frame[frame["seed"].isna() | (frame["seed"] == first)].reset_index(drop=True)


def deltas(records: pd.DataFrame, reference: str = "vanilla", by_family: bool = True) -> pd.DataFrame:
    """Δ = accuracy(condition) − accuracy(`reference`) in points, paired on the same samples, per protocol,
    condition (its first seed) and family, plus the whole benchmark (`ALL`): delta, ci_low, ci_high (Agresti–Min
    95%), p_value (exact McNemar), n."""
    rec = first_seed(records)
    rows = []
    for protocol, p in rec.groupby("protocol", sort=False):
        ref = p[p["condition"] == reference].set_index("id")["correct"].astype(int)
        for cond, g in p[p["condition"] != reference].groupby("condition", sort=False):
            g = g[g["id"].isin(ref.index)]
            groups = list(g.groupby("family", sort=True)) if by_family else []
            if g["family"].nunique() > 1 or not by_family:
                groups.append((ALL, g))
            for fam, part in groups:
                iv = paired_difference(ref.loc[part["id"]].to_numpy(), part["correct"].astype(int).to_numpy())
                rows.append({"protocol": protocol, "condition": cond, "family": fam, "n": iv.n, "delta": iv.estimate,
                             "ci_low": iv.low, "ci_high": iv.high, "p_value": iv.p_value})
    return pd.DataFrame(rows, columns=["protocol", "condition", "family", "n", "delta", "ci_low", "ci_high",
                                       "p_value"])


def seed_spread(scores: pd.DataFrame) -> pd.DataFrame:
    """Per protocol, random SAP mode and family (and the whole benchmark): the accuracy's mean and standard
    deviation across seeds (percent) and the number of seeds, to show beside the first seed's within-run interval."""
    rnd = scores[scores["condition"].isin(RANDOM_MODES) & scores["seed"].notna()]
    rows = []
    for (protocol, cond), g in rnd.groupby(["protocol", "condition"], sort=False):
        per_seed = {fam: f.set_index("seed")["accuracy"] for fam, f in g.groupby("family")}
        per_seed[ALL] = g.groupby("seed").apply(lambda f: weighted_accuracy(f)[0])
        for fam, acc in per_seed.items():
            rows.append({"protocol": protocol, "condition": cond, "family": fam, "seeds": len(acc),
                         "seed_mean": float(acc.mean()), "seed_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0})
    return pd.DataFrame(rows, columns=["protocol", "condition", "family", "seeds", "seed_mean", "seed_sd"])


def weighted_accuracy(scores: pd.DataFrame) -> tuple[float, int]:
    """(accuracy over all samples of the rows' families, their count): the n-weighted mean of the rows' accuracy;
    (NaN, 0) when no row has one."""
    g = scores[scores["accuracy"].notna()]
    n = g["n"].astype(float)
    return (float((g["accuracy"] * n).sum() / n.sum()), int(n.sum())) if len(g) and n.sum() > 0 else (float("nan"), 0)


def overall(scores: pd.DataFrame, by: tuple[str, ...] = ("condition",)) -> pd.DataFrame:
    """The benchmark's score per `by` group: accuracy over all its samples (`weighted_accuracy` of its families)."""
    rows = []
    for key, g in scores.groupby(list(by), sort=False):
        acc, n = weighted_accuracy(g)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "n": n, "accuracy": acc})
    return pd.DataFrame(rows, columns=[*by, "n", "accuracy"])


def accuracy_wide(scores: pd.DataFrame, conditions: list[str], protocol: str | None = None) -> pd.DataFrame:
    """Accuracy per family (rows, then the overall row when there are several families) and condition (columns, in
    the order given), with one `Δ <mode>` column per SAP condition (its accuracy minus vanilla's)."""
    s = first_seed(scores if protocol is None else scores[scores["protocol"] == protocol])
    wide = s.pivot(index="family", columns="condition", values="accuracy")
    if wide.shape[0] > 1:
        tot = overall(s).set_index("condition")["accuracy"]
        wide.loc[ALL] = tot
    wide = wide[[c for c in conditions if c in wide.columns]]
    for c in conditions:
        if c not in ("vanilla", "blind") and c in wide.columns and "vanilla" in wide.columns:
            wide[f"Δ {c}"] = wide[c] - wide["vanilla"]
    wide.columns.name = None
    return wide


def protocol_comparison(scores: pd.DataFrame, protocol: str, other: str, mode: str = "gaussian_noise") -> pd.DataFrame:
    """Accuracy per family (and overall) with `mode` and vanilla under `protocol` and `other`, and each protocol's
    change `Δ <protocol>` (points)."""
    pair = first_seed(scores[scores["condition"].isin(["vanilla", mode])])
    both = accuracy_wide(pair.assign(condition=pair["protocol"] + " " + pair["condition"]),
                         [f"{p} {c}" for p in (protocol, other) for c in ("vanilla", mode)])
    both = both[[c for c in both.columns if not c.startswith("Δ ")]]
    for p in (protocol, other):
        both[f"Δ {p}"] = both[f"{p} {mode}"] - both[f"{p} vanilla"]
    return both


def paper_beside(scores: pd.DataFrame, benchmark: str, model_name: str, protocol: str | None = None) -> pd.DataFrame:
    """The paper's Table 2 cells beside this run's, per (paper benchmark, condition): for a real benchmark its overall
    score against the cells reported for `model_name`; for the synthetic benchmark, each family against the
    benchmark it stands for (any model the paper reports). Cells the paper does not report stay missing."""
    paper = paper_table("table2")
    s = scores if protocol is None else scores[scores["protocol"] == protocol]
    bench = get_benchmark(benchmark)
    rows = []
    if bench.analogues:
        pairs = [(fam, name, s[s["family"] == fam]) for fam, name in bench.analogues.items()]
        known = paper
    else:
        pairs = [(ALL, bench.display_name, s)]
        known = paper[paper["model"].str.lower() == str(model_name).lower()]
    for fam, name, part in pairs:
        if part.empty:
            continue
        ours = overall(part).set_index("condition")["accuracy"]
        theirs = known[known["benchmark"] == name].set_index("condition")["value"]
        models = sorted(set(known[known["benchmark"] == name]["model"]))
        for cond in ("vanilla", "gaussian_noise"):
            rows.append({"paper benchmark": name, "this run": fam, "condition": cond,
                         "paper model": ", ".join(models) if models else None,
                         "paper": theirs.get(cond), "this run (%)": ours.get(cond)})
    out = pd.DataFrame(rows, columns=["paper benchmark", "this run", "condition", "paper model", "paper",
                                      "this run (%)"])
    return out


def paper_deltas(beside: pd.DataFrame) -> dict[str, float]:
    """benchmark -> the paper's change under noise, where it reports both cells."""
    out = {}
    for name, g in beside.groupby("paper benchmark", sort=False):
        p = g.set_index("condition")["paper"]
        if pd.notna(p.get("vanilla")) and pd.notna(p.get("gaussian_noise")):
            out[name] = float(p["gaussian_noise"] - p["vanilla"])
    return out


# ---- the sweeps (page 21) -----------------------------------------------------------------------------------------
def layer_windows(n_layers: int, window: int) -> list[tuple[int, ...]]:
    """Consecutive windows of `window` decoder layers, from layer 1 (layer 0 is never replaced)."""
    return [tuple(range(a, min(a + window, n_layers))) for a in range(1, n_layers, window)]


def window_name(layers: tuple[int, ...]) -> str:
    return f"{layers[0]}-{layers[-1]}"


def lambda_sweep(lm, samples, out_dir, lams, mode: str = "gaussian_noise", batch_size: int = 64,
                 **condition_kw) -> pd.DataFrame:
    """Per-sample outcomes with `mode` on every layer but 0 at each λ of `lams` (column `lam`); `condition_kw` as
    `sap_conditions` takes them (model, benchmark, data, split, protocol, reasoning, max_new_tokens)."""
    frames = []
    for lam in lams:
        c = sap_conditions(lm, modes=[mode], lam=lam, layers="all", blind=False, **condition_kw)
        rec = condition_records(lm, samples, out_dir, c, batch_size)
        frames.append(first_seed(rec[rec["condition"] == mode]).assign(lam=lam))
    return pd.concat(frames, ignore_index=True)


def window_sweep(lm, samples, out_dir, window: int, mode: str = "gaussian_noise", batch_size: int = 64,
                 **condition_kw) -> pd.DataFrame:
    """Per-sample outcomes of the vanilla model (window "none") and of full replacement (λ = 1) confined to each
    window of `window` consecutive layers (column `window`, e.g. "1-2")."""
    frames = []
    for w in layer_windows(lm.adapter.num_layers, window):
        c = sap_conditions(lm, modes=[mode], lam=1.0, layers=",".join(map(str, w)), blind=False, **condition_kw)
        rec = first_seed(condition_records(lm, samples, out_dir, c, batch_size))
        if not frames:
            frames.append(rec[rec["condition"] == "vanilla"].assign(window="none"))
        frames.append(rec[rec["condition"] == mode].assign(window=window_name(w)))
    return pd.concat(frames, ignore_index=True)


def sweep_table(records: pd.DataFrame, key: str) -> pd.DataFrame:
    """Accuracy (percent) with its Wilson interval per family and sweep setting `key` (lam or window), in the
    settings' order, with the protocol and condition named."""
    rows = []
    for value, g in records.groupby(key, sort=False):
        t = with_accuracy_ci(summarize(g), g)
        t[key], t["condition"], t["protocol"] = value, g["condition"].iloc[0], g["protocol"].iloc[0]
        rows.append(t)
    return pd.concat(rows, ignore_index=True)


def sweep_deltas(records: pd.DataFrame, key: str, reference) -> pd.DataFrame:
    """Δ (points) of each sweep setting against the setting `reference` (λ = 0, or window "none"), paired on the same
    samples, per family and over the whole benchmark (`deltas`' columns, `condition` holding the setting)."""
    rec = records.assign(condition=records[key].astype(str), seed=None)
    out = deltas(rec, reference=str(reference))
    return out.rename(columns={"condition": key})


# ---- Table 1 and the per-layer metrics with intervals over samples -------------------------------------------------
def per_sample_means(metrics: pd.DataFrame, scope: str = "all", cols=("rid", "mixig", "dS", "dD")) -> pd.DataFrame:
    """Each sample's mean over layers of `cols` per Table 1 row (`module` labelled as in Table 1): the unit the
    bootstrap resamples."""
    from lostattn.residual.analysis import TABLE1_ROWS

    df = metrics[metrics["scope"] == scope]
    frames = []
    for (cond, module), label in TABLE1_ROWS.items():
        g = df[(df["condition"] == cond) & (df["module"] == module)]
        if len(g):
            frames.append(g.groupby("sample", sort=False)[list(cols)].mean().reset_index().assign(module=label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["sample", "module", *cols])


def table1_intervals(metrics: pd.DataFrame, scope: str = "all", seed: int = 0) -> pd.DataFrame:
    """Table 1 (`lostattn.residual.analysis.table1`) with the 95% bootstrap interval over samples of each module's
    RID and MixIG (`RID_ci_low`, `RID_ci_high`, `MixIG_ci_low`, `MixIG_ci_high`) and the number of samples."""
    from lostattn.residual.analysis import table1

    t1 = table1(metrics, scope)
    per = per_sample_means(metrics, scope)
    for col, name in (("rid", "RID"), ("mixig", "MixIG")):
        ivs = {m: bootstrap_mean(g[col], seed=seed) for m, g in per.groupby("module")}
        t1[f"{name}_ci_low"] = t1["module"].map({m: iv.low for m, iv in ivs.items()})
        t1[f"{name}_ci_high"] = t1["module"].map({m: iv.high for m, iv in ivs.items()})
    t1["samples"] = t1["module"].map(per.groupby("module")["sample"].nunique())
    return t1


def eps_per_sample(eps: pd.DataFrame, scope: str = "all") -> pd.Series:
    """ε_RoPE of each sample: its mean over layers (the bootstrap's unit)."""
    return eps[eps["scope"] == scope].groupby("sample", sort=False)["rid"].mean()


def eps_interval(eps: pd.DataFrame, scope: str = "all", seed: int = 0):
    """ε_RoPE (the mean over samples and layers) with its 95% bootstrap interval over samples."""
    return bootstrap_mean(eps_per_sample(eps, scope), seed=seed, unit="RID")


def means_with_intervals(metrics: pd.DataFrame, by: list[str], cols, seed: int = 0) -> pd.DataFrame:
    """Means of `cols` per `by` group over samples (each sample's mean within the group first), with
    `<col>_ci_low`, `<col>_ci_high` from a bootstrap over samples."""
    rows = []
    for key, g in metrics.groupby(by, sort=True):
        per = g.groupby("sample")[list(cols)].mean()
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for c in cols:
            iv = bootstrap_mean(per[c], seed=seed)
            row[c], row[f"{c}_ci_low"], row[f"{c}_ci_high"] = g[c].mean(), iv.low, iv.high
        row["samples"] = len(per)
        rows.append(row)
    return pd.DataFrame(rows)


# ---- the embedded model's page ----------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle")


def question_probe(lm, n_images: int = 6, split: str = "test") -> pd.DataFrame:
    """The same synthetic images asked for the colour of each shape in turn: one row per image (its objects and the
    reply for each shape asked). A model that binds the question to the image answers differently per shape."""
    from lostattn.harness.evaluate import generate_batch
    from lostattn.tasks.types import VQASample

    bench = SyntheticBenchmark()
    probe = [VQASample(id=f"probe-{i}-{shape}", question=f"What colour is the {shape}? Answer with one word.",
                       answer="", family="probe", kind="short", image=lambda i=i: bench.image(split, i))
             for i in range(n_images) for shape in SHAPES]
    replies = generate_batch(lm, probe, max_new_tokens=3)
    rows = []
    for i in range(n_images):
        scene = bench.scenes[split][i]
        row = {"image": i, "objects": ", ".join(o.name for o in scene.objects)}
        for shape, r in zip(SHAPES, replies[len(SHAPES) * i:len(SHAPES) * (i + 1)]):
            row[f"colour of the {shape}?"] = r.strip()
        rows.append(row)
    return pd.DataFrame(rows)


def probe_claim(probe: pd.DataFrame):
    """Whether the replies depend on the shape asked: the share of images whose three answers are not all the same,
    above one half by its Wilson interval."""
    from lostattn.paper.verdicts import judged

    answers = probe[[c for c in probe.columns if c.startswith("colour of")]]
    varied = (answers.nunique(axis=1) > 1).astype(int)
    return judged("Control: the model reads the image according to the question (answers differ with the shape "
                  "asked, on more than half of the images)", accuracy_ci(varied), above=50.0,
                  scope=f"{len(probe)} probe images", label="images with differing answers (%)")
