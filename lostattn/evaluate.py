"""The benchmark harness: batched greedy generation over a benchmark, vanilla or with SAP, resumable.

Each finished sample is appended to a JSON-lines file at once; the file's first line records the run (model,
benchmark, SAP config, prompt settings, versions, seed, commit). Rerunning with the same file skips the finished
samples; a file written by a different run is refused rather than mixed.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from .tasks.scoring import extract, is_correct, summarize
from .tasks.types import VQASample
from .prompts import prepare_inputs
from .provenance import provenance
from .sap import SAPConfig, sap


@dataclass(frozen=True)
class RunSpec:
    """What identifies a run: two runs with equal specs can share a results file."""

    model: str
    benchmark: str
    sap: dict | None = None
    blind: bool = False
    max_new_tokens: int = 8
    seed: int = 42

    def key(self) -> dict:
        return {"model": self.model, "benchmark": self.benchmark, "sap": self.sap, "blind": self.blind,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}


def _read_done(path: Path, spec: RunSpec, weights: str = "") -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not path.exists() or path.stat().st_size == 0:
        return done
    with path.open() as f:
        lines = f.read().splitlines()
    head = json.loads(lines[0])
    if head.get("run") != spec.key():
        raise ValueError(f"{path} holds a different run ({head.get('run')}); "
                         f"this run is {spec.key()}. Use another file or delete it.")
    if weights and head.get("weights") and head["weights"] != weights:
        raise ValueError(f"{path} holds records of {spec.model!r} with other weights (fingerprint {head['weights']}; "
                         f"the model loaded now is {weights}): it was retrained or replaced. Delete the file or use "
                         f"another one; finished records are only resumed with the weights that wrote them.")
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by an interruption: that sample is redone
            continue
        done[rec["id"]] = rec
    return done


def generate_batch(lm, samples: list[VQASample], max_new_tokens: int, sap_cfg: SAPConfig | None = None,
                   blind: bool = False) -> list[str]:
    """Greedy replies for a batch (left padding); SAP, when given, is active for the whole generation."""
    inputs = prepare_inputs(lm, samples, blind)
    has_img = "pixel_values" in inputs
    ctx = sap(lm, sap_cfg, inputs, [s.id for s in samples]) if (sap_cfg is not None and has_img) else nullcontext()
    with torch.no_grad(), ctx:
        out = lm.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, num_beams=1)
    new = out[:, inputs["input_ids"].shape[1]:]
    return lm.processor.batch_decode(new, skip_special_tokens=True)


def evaluate(lm, samples: list[VQASample], out_file: str | Path, spec: RunSpec, batch_size: int = 16,
             sap_cfg: SAPConfig | None = None, progress: bool = True) -> pd.DataFrame:
    """Score `samples`, appending per-sample records to `out_file`; returns all records of the run."""
    path = Path(out_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    if (sap_cfg.to_dict() if sap_cfg else None) != spec.sap:
        raise ValueError("spec.sap must equal sap_cfg.to_dict() (or both be None)")
    weights = getattr(lm, "fingerprint", "")
    done = _read_done(path, spec, weights)
    todo = [s for s in samples if s.id not in done]
    if not path.exists() or path.stat().st_size == 0:
        path.write_text(json.dumps({"run": spec.key(), "weights": weights, "provenance": provenance(seed=spec.seed)})
                        + "\n")
    torch.manual_seed(spec.seed)
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"eval {spec.benchmark}",
               disable=not progress)
    with path.open("a") as f:
        for a in range(0, len(todo), batch_size):
            batch = todo[a:a + batch_size]
            replies = generate_batch(lm, batch, spec.max_new_tokens, sap_cfg, spec.blind)
            for s, r in zip(batch, replies):
                pred = extract(s.kind, r, s.options)
                rec = {"id": s.id, "benchmark": s.benchmark, "family": s.family, "kind": s.kind,
                       "subtype": s.meta.get("subtype", ""), "answer": s.answer, "reply": r, "prediction": pred,
                       "correct": bool(is_correct(s.kind, pred, s.answer))}
                f.write(json.dumps(rec) + "\n")
                done[s.id] = rec
            f.flush()
            bar.update(len(batch))
    bar.close()
    return pd.DataFrame([done[s.id] for s in samples if s.id in done])


def throughput(lm, samples: list[VQASample], batch_size: int, max_new_tokens: int = 8, repeats: int = 1) -> dict:
    """Samples per second of batched vs one-at-a-time generation over the same samples, measured together."""
    def run(bs: int) -> float:
        t = time.perf_counter()
        for _ in range(repeats):
            for a in range(0, len(samples), bs):
                generate_batch(lm, samples[a:a + bs], max_new_tokens)
        return repeats * len(samples) / (time.perf_counter() - t)

    run(batch_size)  # warm-up
    batched, single = run(batch_size), run(1)
    return {"batched_samples_per_s": batched, "unbatched_samples_per_s": single, "speedup": batched / single,
            "batch_size": batch_size, "n": len(samples)}


__all__ = ["RunSpec", "evaluate", "generate_batch", "summarize", "throughput"]
