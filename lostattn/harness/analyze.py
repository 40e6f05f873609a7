"""`lostattn analyze` over a benchmark: the metrics of every sample, resumable and data parallel through the same
runner as `lostattn eval` (`lostattn.harness.runner`): one record per sample holding its metric rows and its eps_RoPE rows,
keyed by every input that changes them."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lostattn.harness import distributed

from lostattn.harness import runner
from lostattn.residual.analysis import NOISE_CONDITIONS, residual_metrics, rope_baseline
from lostattn.residual.metrics import as_spec
from lostattn.provenance import provenance


def analyze_key(lm, spec, scopes, layers, conditions, controls, seed, batch_size, model, benchmark, data,
                split) -> dict:
    """Every input that changes an analysis record."""
    return {"analysis": "residual", "model": model, **lm.identity(), "benchmark": benchmark, "data": data,
            "split": split, "spec": spec.to_dict(), "controls": controls, "scopes": list(scopes), "layers": layers,
            "conditions": list(conditions), "seed": seed, "batch_size": batch_size}


def analyze_run(lm, samples, out_file: str | Path, spec=None, scopes=("all",), layers=None, conditions=NOISE_CONDITIONS,
                controls: str | None = None, batch_size: int = 8, seed: int = 0, model: str = "", benchmark: str = "",
                data: str | None = None, split: str = "test", world: distributed.World | None = None,
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metric rows, eps_RoPE rows) of every sample, each row naming the `process_rank` that computed it (its
    `projector_rank` is r, the rank of the projectors P_C, P_R); finished samples
    are read back from `out_file`, the others computed and appended batch by batch."""
    spec = as_spec(spec)
    key = analyze_key(lm, spec, scopes, layers, conditions, controls, seed, batch_size, model, benchmark, data, split)

    def work(batch):
        m = residual_metrics(lm, batch, layers, tuple(scopes), spec, conditions, batch_size=len(batch), seed=seed,
                             progress=False, controls=controls)
        e = rope_baseline(lm, batch, layers, tuple(scopes), spec, batch_size=len(batch), progress=False)
        by_m = {sid: g.to_dict("records") for sid, g in m.groupby("sample", sort=False)} if len(m) else {}
        by_e = {sid: g.to_dict("records") for sid, g in e.groupby("sample", sort=False)} if len(e) else {}
        return [{"id": s.id, "metrics": by_m.get(s.id, []), "eps_rope": by_e.get(s.id, [])} for s in batch]

    done = runner.run(out_file, key, samples, work, provenance(seed=seed), batch_size, world, progress,
                      desc=f"analyze {benchmark}")
    metrics = pd.DataFrame([{**row, "process_rank": rec.get("process_rank", 0)} for rec in done.values() for row in rec["metrics"]])
    eps = pd.DataFrame([{**row, "process_rank": rec.get("process_rank", 0)} for rec in done.values() for row in rec["eps_rope"]])
    return metrics, eps
