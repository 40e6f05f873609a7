"""Peak memory and time of one layer's residual metrics on a large state, whole against in column blocks (the
metric engine's `CHUNK_BYTES`), each measurement in a fresh process, repeats interleaved.

    python benchmarks/metrics_blocks.py                        # OneVision-7B at 1024x768: 4,760 tokens x 3,584
    python benchmarks/metrics_blocks.py --tokens 2400 --hidden 4096 --repeats 5

The step is `Stream.layer` (what `residual_metrics` runs per sample and layer: both modules of the vanilla
condition, the official spec and the paper-text one) on residual-like bfloat16 states, as the model hands them over.
"whole" holds every state in float64 (CHUNK_BYTES set above the state's size), "blocks" the default. Printed and
written to benchmarks/results/metrics_blocks.json: the extra peak resident memory of the step (VmHWM after it less
VmRSS before it, the inputs allocated before), wall and CPU seconds (min, median, spread = (max - min) / median),
the ratios blocks / whole of the medians, and the largest difference of any output between the two.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _process import add_child_arguments, answer, reset_peak, run_child, vm  # noqa: E402


def child(a) -> dict:
    import torch

    from lostattn.residual import metrics

    torch.set_num_threads(a.threads)
    if a.variant == "whole":
        metrics.CHUNK_BYTES = 2**62
    g = torch.Generator().manual_seed(0)
    S, H = a.tokens, a.hidden
    x = torch.randn(1, S, H, generator=g)
    x += (torch.randn(1, S, 3, generator=g) * torch.tensor([20.0, 8.0, 3.0])) @ torch.randn(1, 3, H, generator=g)
    mid = x + 0.3 * torch.randn(1, S, H, generator=g)
    out = mid + 0.3 * torch.tanh(mid[..., torch.randperm(H, generator=g)])
    x, mid, out = (t.bfloat16() for t in (x, mid, out))
    before = reset_peak()
    t, c = time.perf_counter(), time.process_time()
    res = metrics.Stream(a.spec).layer(x, mid, out, keep_output=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    values = {f"{m}.{k}": float(v[0]) for m, r in res.items() for k, v in r.items()}
    return {"extra_peak_mib": vm("VmHWM") - before, "wall_s": wall, "cpu_s": cpu, "values": values,
            "state_float64_mib": S * H * 8 / 2**20}


def _stats(v: list[float]) -> dict:
    med = statistics.median(v)
    return {"min": min(v), "median": med, "spread": (max(v) - min(v)) / med if med else 0.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4760)
    p.add_argument("--hidden", type=int, default=3584)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--specs", default="official,paper_text")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "metrics_blocks.json"))
    add_child_arguments(p, "variant", "spec")
    a = p.parse_args(argv)
    if answer(a, child):
        return 0

    from lostattn.provenance import provenance

    rows = []
    for spec in a.specs.split(","):
        runs = {"whole": [], "blocks": []}
        for _ in range(a.repeats):
            for variant in runs:
                args = ["--variant", variant, "--spec", spec, "--tokens", str(a.tokens), "--hidden", str(a.hidden),
                        "--threads", str(a.threads)]
                runs[variant].append(run_child(__file__, args, f"{spec} {variant}"))
        w, b = runs["whole"], runs["blocks"]
        row = {"spec": spec, "tokens": a.tokens, "hidden": a.hidden, "state_float64_mib": w[0]["state_float64_mib"]}
        for variant, rs in runs.items():
            row[variant] = {k: _stats([r[k] for r in rs]) for k in ("extra_peak_mib", "wall_s", "cpu_s")}
        row["peak_blocks_over_whole"] = row["blocks"]["extra_peak_mib"]["median"] / \
            row["whole"]["extra_peak_mib"]["median"]
        row["cpu_blocks_over_whole"] = row["blocks"]["cpu_s"]["median"] / row["whole"]["cpu_s"]["median"]
        row["largest_difference"] = max(abs(b[0]["values"][k] - w[0]["values"][k]) for k in w[0]["values"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"what": "one layer's residual metrics (Stream.layer, both modules) on bfloat16 states, every state "
                      "whole in float64 against column blocks, each run in a fresh process, repeats interleaved",
              "threads": a.threads, "repeats": a.repeats, "rows": rows, "provenance": provenance()}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
