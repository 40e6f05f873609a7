"""Small reporting helpers shared by the CLI and the notebooks: accuracy tables, paper numbers, provenance stamps."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .tasks.synthetic import CHANCE, SyntheticBenchmark
from .evaluate import RunSpec, evaluate
from .provenance import REPO_ROOT, provenance
from .tasks.scoring import summarize

PAPER_DIR = REPO_ROOT / "data" / "paper"


def paper_table(name: str) -> pd.DataFrame:
    """A table of the paper's reported numbers (data/paper/<name>.csv)."""
    path = PAPER_DIR / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no paper table {path}")
    return pd.read_csv(path, comment="#")


def accuracy_report(lm, samples, records_file: str | Path, spec: RunSpec, batch_size: int = 64,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score `samples` (resumable records in `records_file`); returns (per-family table, per-sample records).

    Synthetic families get a `chance` column: the accuracy of guessing among the answers a question admits.
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
    spec = RunSpec(model=lm.name, benchmark="synthetic")
    samples = SyntheticBenchmark().samples("test", limit_per_family=limit_per_family)
    table, _ = accuracy_report(lm, samples, out_csv.with_suffix(".jsonl"), spec, batch_size, progress)
    table.to_csv(out_csv, index=False)
    out_csv.with_suffix(".meta.json").write_text(json.dumps(provenance(seed=spec.seed, model=lm.name), indent=2))
    return table
