"""What the notebooks compute around the harness, so that a notebook only calls and plots: accuracy tables, the
conditions of Table 2 under a protocol, accuracy per family and condition, and the paper's numbers beside ours."""
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

PAPER_DIR = REPO_ROOT / "data" / "paper"
ALL = "all families"  # the row of a benchmark's overall score (n-weighted over its families)


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

    Synthetic families get a `chance` column (percent): the accuracy of guessing among the answers a question
    admits.
    """
    records = evaluate(lm, samples, records_file, spec, batch_size=batch_size, progress=progress)
    table = summarize(records)
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
                   seed: int = 42) -> list[Condition]:
    """Vanilla, (blind,) and one SAP run per mode under `protocol`; `layers`, `head_window` and `queries` None take
    the protocol's preset for the model's family ("all", "18,19,20" or a tuple of ints for layers)."""
    base = EvalSettings(model=model, benchmark=benchmark, data=data_identity(data), split=split, protocol=protocol,
                   reasoning=reasoning, max_new_tokens=max_new_tokens, seed=seed)
    preset = base.resolve(lm)
    over = {"seed": seed, "layers": layers, "queries": queries, "head_percentile": head_window}
    out = [Condition("vanilla", base)]
    if blind:
        out.append(Condition("blind", replace(base, blind=True)))
    for mode in modes:
        cfg = preset.sap_config(mode, lam=lam, **over)
        out.append(Condition(mode, replace(base, sap=cfg.to_dict()), cfg))
    return out


def score_conditions(lm, samples, out_dir: str | Path, conditions: list[Condition], batch_size: int = 64,
                     progress: bool = False) -> pd.DataFrame:
    """Per family and condition: n, accuracy (and F1 / yes ratio for yes/no families), with the protocol named;
    records resumable under `out_dir/<protocol>-<condition>.jsonl`."""
    tables = []
    for c in conditions:
        recs = evaluate(lm, samples, Path(out_dir) / c.file_name, c.spec, batch_size=batch_size, sap_cfg=c.sap,
                        progress=progress)
        t = summarize(recs)
        t["condition"], t["protocol"] = c.name, c.spec.protocol
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


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
    s = scores if protocol is None else scores[scores["protocol"] == protocol]
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
    """Whether the replies depend on the shape asked: images whose three answers are not all the same."""
    from lostattn.paper.verdicts import _claim

    answers = probe[[c for c in probe.columns if c.startswith("colour of")]]
    varied = int((answers.nunique(axis=1) > 1).sum())
    return _claim("Control: the model reads the image according to the question (answers differ with the shape "
                  "asked)", varied > len(probe) / 2, f"on {varied} of {len(probe)} images the answers differ")
