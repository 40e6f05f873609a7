"""Cost of the residual metrics at the paper's scale, against a plain float64 thin-SVD implementation of the same
formulas measured in the same process, and the estimated cost of the paper's Table-1 workload.

    python benchmarks/metrics_cost.py                  # CPU, one thread
    python benchmarks/metrics_cost.py --device cuda    # plus the batched GPU cost in float64 and float32

Printed and written to benchmarks/results/metrics_cost[_cuda].json (with provenance):
- `update_metrics` on one 640 x 4096 update (LLaVA-1.5's 576 visual + 64 text tokens, hidden 4096) against
  `plain_metrics` below (numpy, two thin SVDs, explicit projections), both specs, residual-like and Gaussian
  inputs: wall and CPU time (min, median, spread = (max - min) / median over interleaved repeats), the ratio of the
  CPU-time medians, and the largest absolute difference of every output;
- the per-layer cost of the analysis (`Stream.layer`, what `residual_metrics` runs per sample x layer: both
  modules of the vanilla condition, each state's spectrum reused; also with reuse off and for one module, as the
  controls measure) on a synthetic residual-like stream of that size;
- the Table-1 workload: 15 models x 32 layers x 1000 samples x (2 modules vanilla + 3 controls x 1 module, i.e.
  x2.5 the vanilla layer), in core-hours (CPU, one thread) and GPU-hours (batched).
"""
from __future__ import annotations

import os

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_k] = "1"  # numpy's BLAS reads these at import: one thread for both implementations

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lostattn.residual.metrics import MetricSpec, Stream, update_metrics  # noqa: E402
from lostattn.provenance import provenance  # noqa: E402

WORKLOAD = {"models": 15, "layers": 32, "samples": 1000, "controls_factor": 2.5}


# --- the plain implementation: the formulas of lostattn.residual.metrics written with two thin SVDs -------------------------

def _entropy(p):
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _erank(s):
    t = s.sum()
    return 0.0 if t == 0 else math.exp(_entropy(s / t))


def _rank(s, rule, size):
    if rule.kind == "numerical":
        return int((s > size * rule.value * s[0]).sum())
    if rule.kind == "tol":
        return int((s > rule.value * s[0]).sum())
    if rule.kind == "fixed":
        return min(int(rule.value), len(s))
    e = np.cumsum(s**2) / max((s**2).sum(), np.finfo(float).tiny)
    return int(min((e < rule.value - 1e-12).sum(), len(s) - 1) + 1)


def _tme(x, spec):
    nrm = np.linalg.norm(x, axis=1)
    xn = x / np.where(nrm > 0, nrm, 1.0)[:, None]
    q = xn[-1:] if spec.tme_rows == "last" else xn
    w = ((q @ xn.T + 1) / 2).clip(0, 1) ** spec.tme_alpha
    p = w / w.sum(1, keepdims=True)
    h = float(np.mean(-(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(1)))
    return h / math.log(x.shape[0]) if spec.tme_normalize else h


def plain_metrics(x: np.ndarray, dx: np.ndarray, spec: MetricSpec, reference: np.ndarray | None = None
                  ) -> dict[str, float]:
    y = x + dx
    u, s, vt = np.linalg.svd(x if reference is None else reference, full_matrices=False)
    s_new = np.linalg.svd(y, compute_uv=False)
    r = _rank(s, spec.rank, max(x.shape))
    ur, vr = u[:, :r], vt[:r].T
    ny = np.linalg.norm(y)
    a = np.linalg.norm(y - ur @ (ur.T @ y)) / ny
    b = np.linalg.norm(y - (y @ vr) @ vr.T) / ny
    dD = {"mean": (a + b) / 2, "l2": math.hypot(a, b), "sum": a + b}[spec.dd_combine]
    e_in, e_out = _erank(s), _erank(s_new)
    dS = abs(e_out - e_in) / min(x.shape)
    t_in, t_out, t_d = _tme(x, spec), _tme(y, spec), _tme(dx, spec)
    mix_s, mix_d = t_out - t_in, t_d - t_in
    return {"erank_in": e_in, "erank_out": e_out, "dS": dS, "dD": dD, "rid": dS + dD, "projector_rank": float(r),
            "tme_in": t_in, "tme_out": t_out, "tme_delta": t_d, "mixig_state": mix_s, "mixig_delta": mix_d,
            "mixig": mix_s if spec.mixig_on == "states" else mix_d}


# --- inputs ---------------------------------------------------------------------------------------------------------

def residual_like(S: int, H: int, rng: np.random.Generator) -> np.ndarray:
    """A few large shared directions plus noise, and two tokens with massive activations, as LVLM states look."""
    x = rng.standard_normal((S, H))
    k = 4
    x += (rng.standard_normal((S, k)) * np.array([30.0, 10.0, 5.0, 2.0])) @ rng.standard_normal((k, H))
    x[0] *= 30.0
    x[1] *= 10.0
    return x


def update_pair(kind: str, S: int, H: int, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal((S, H)), rng.standard_normal((S, H))
    x = residual_like(S, H, rng)
    return x, 0.3 * rng.standard_normal((S, H)) + 0.1 * x


def synthetic_stream(L: int, B: int, S: int, H: int, seed: int, device, dtype=torch.float32):
    """Per layer (x_in, x_mid, x_out), (B, S, H) in float32 like a model's states: attention as a causal running
    mean of a low-rank map of the stream, the FFN a low-rank tanh MLP."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.stack([residual_like(S, H, rng) for _ in range(B)])).to(dtype)
    steps = torch.arange(1, S + 1, dtype=dtype).view(1, S, 1)
    out = []
    for _ in range(L):
        wa = torch.randn(H, 64, generator=g, dtype=dtype) / H**0.5
        wb = torch.randn(64, H, generator=g, dtype=dtype) / 8
        w1 = torch.randn(H, 256, generator=g, dtype=dtype) / H**0.5
        w2 = torch.randn(256, H, generator=g, dtype=dtype) / 16
        xn = x / x.norm(dim=-1, keepdim=True)
        d_attn = (xn @ wa @ wb).cumsum(1) / steps * 4
        x_mid = x + d_attn
        d_ffn = torch.tanh(x_mid / x_mid.norm(dim=-1, keepdim=True) * H**0.5 @ w1) @ w2 * 2
        x_out = x_mid + d_ffn
        out.append(tuple(t.to(device) for t in (x, x_mid, x_out)))
        x = x_out
    return out


# --- timing ---------------------------------------------------------------------------------------------------------

def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, repeats: int, device="cpu") -> dict:
    """Wall and CPU seconds per function (min, median, spread), runs interleaved so that load drifts hit all."""
    for f in fns.values():
        f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            _sync(device)
            c, t = time.process_time(), time.perf_counter()
            f()
            _sync(device)
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)

    def summary(v):
        med = statistics.median(v)
        return {"min": min(v), "median": med, "spread": (max(v) - min(v)) / med if med else 0.0}

    return {k: {"wall": summary(wall[k]), "cpu": summary(cpu[k])} for k in fns}


# --- the measurements -----------------------------------------------------------------------------------------------

def single_update(repeats: int) -> dict:
    S, H = 640, 4096
    out = {}
    for kind in ("residual_like", "gaussian"):
        x, dx = update_pair(kind, S, H, seed=0)
        xt, dxt = torch.from_numpy(x), torch.from_numpy(dx)
        for name in ("official", "paper_text"):
            spec = MetricSpec.named(name)
            ref = plain_metrics(x, dx, spec)
            got = {k: float(v) for k, v in update_metrics(xt, dxt, spec).items()}
            diff = {k: abs(got[k] - ref[k]) for k in ref}
            t = interleaved({"plain": lambda: plain_metrics(x, dx, spec),
                             "update_metrics": lambda: update_metrics(xt, dxt, spec)}, repeats)
            out[f"{kind}/{name}"] = {
                "shape": [S, H], "timing_s": t,
                "cpu_ratio_median": t["update_metrics"]["cpu"]["median"] / t["plain"]["cpu"]["median"],
                "cpu_ratio_min": t["update_metrics"]["cpu"]["min"] / t["plain"]["cpu"]["min"],
                "wall_ratio_median": t["update_metrics"]["wall"]["median"] / t["plain"]["wall"]["median"],
                "max_abs_diff": diff, "max_abs_diff_all": max(diff.values()), "projector_rank": ref["projector_rank"], "dD": ref["dD"]}
    return out


def stream_cost(device: str, B: int, L: int, repeats: int, dtype=torch.float64, S=640, H=4096) -> dict:
    """Seconds per sample x layer of the analysis on a synthetic stream (batched over B samples)."""
    layers = synthetic_stream(L, B, S, H, seed=1, device=device)
    res = {}
    for name in ("official", "paper_text"):
        spec = MetricSpec.named(name)

        def run(reuse=True, modules=("attention", "ffn")):
            st = Stream(spec, dtype=dtype, reuse=reuse)
            for i, (x, xm, xo) in enumerate(layers):
                st.layer(x, xm, xo, modules=modules, keep_output=i + 1 < L)

        t = interleaved({"vanilla": run, "vanilla_no_reuse": lambda: run(False),
                         "one_module": lambda: run(True, ("attention",))}, repeats, device)
        per = {k: {m: v[m]["median"] / (B * L) for m in ("wall", "cpu")} for k, v in t.items()}
        res[name] = {"batch": B, "layers": L, "per_sample_layer_s": per, "timing_s": t,
                     "reuse_saving": 1 - per["vanilla"]["wall"] / per["vanilla_no_reuse"]["wall"]}
    return res


def plain_layer_cost(repeats: int) -> dict:
    """Seconds per sample x layer of the plain implementation: one call per module, nothing reused."""
    (x, xm, xo), = synthetic_stream(1, 1, 640, 4096, seed=1, device="cpu")
    x, xm, xo = (t[0].double().numpy() for t in (x, xm, xo))
    da, df = xm - x, xo - xm
    res = {}
    for name in ("official", "paper_text"):
        spec = MetricSpec.named(name)
        ref = x if spec.ffn_reference == "input" else None
        t = interleaved({"layer": lambda: (plain_metrics(x, da, spec), plain_metrics(xm, df, spec, ref))}, repeats)
        res[name] = {"per_sample_layer_s": {m: t["layer"][m]["median"] for m in ("wall", "cpu")}}
    return res


def workload_hours(per_layer_s: float) -> float:
    w = WORKLOAD
    return per_layer_s * w["models"] * w["layers"] * w["samples"] * w["controls_factor"] / 3600


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--gpu-batch", type=int, default=16)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    report = {"provenance": provenance(seed=0, device=a.device, threads=1), "workload": WORKLOAD}

    report["update_metrics_640x4096"] = single_update(a.repeats)
    report["analysis_cpu"] = stream_cost("cpu", 1, a.layers, max(3, a.repeats // 2))
    report["plain_cpu"] = plain_layer_cost(max(3, a.repeats // 2))
    est = {}
    for name in ("official", "paper_text"):
        fast = report["analysis_cpu"][name]["per_sample_layer_s"]["vanilla"]["cpu"]
        plain = report["plain_cpu"][name]["per_sample_layer_s"]["cpu"]
        est[name] = {"cpu_core_hours": workload_hours(fast), "plain_cpu_core_hours": workload_hours(plain),
                     "layer_ratio": fast / plain}
    if a.device == "cuda":
        gpu = {}
        for label, dt in (("float64", torch.float64), ("float32", torch.float32)):
            gpu[label] = stream_cost("cuda", a.gpu_batch, a.layers, max(3, a.repeats // 2), dtype=dt)
            for name in ("official", "paper_text"):
                per = gpu[label][name]["per_sample_layer_s"]["vanilla"]["wall"]
                est[name][f"gpu_hours_{label}"] = workload_hours(per)
        gpu["agreement_with_cpu_float64"] = device_agreement(a.gpu_batch, "cuda")
        report["analysis_cuda"] = gpu
    report["table1_estimate"] = est

    out = Path(a.out) if a.out else Path(__file__).resolve().parent / "results" / (
        "metrics_cost.json" if a.device == "cpu" else f"metrics_cost_{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

    print("update_metrics at 640x4096 vs plain float64 thin SVD (numpy), same process, one thread:")
    for k, r in report["update_metrics_640x4096"].items():
        p, u = r["timing_s"]["plain"]["cpu"], r["timing_s"]["update_metrics"]["cpu"]
        print(f"  {k:26s} plain cpu {p['median']:.3f}s (min {p['min']:.3f}, spread {p['spread']:.0%})  "
              f"update_metrics cpu {u['median']:.3f}s (min {u['min']:.3f}, spread {u['spread']:.0%}); "
              f"ratio cpu {r['cpu_ratio_median']:.3f} (min/min {r['cpu_ratio_min']:.3f}), "
              f"wall {r['wall_ratio_median']:.3f}; max |diff| {r['max_abs_diff_all']:.1e}")
    for name in ("official", "paper_text"):
        s = report["analysis_cpu"][name]["per_sample_layer_s"]
        print(f"analysis per sample x layer ({name}, CPU): vanilla {s['vanilla']['cpu']:.3f}s, without reuse "
              f"{s['vanilla_no_reuse']['cpu']:.3f}s, one module {s['one_module']['cpu']:.3f}s; plain "
              f"{report['plain_cpu'][name]['per_sample_layer_s']['cpu']:.3f}s")
        e = est[name]
        line = (f"Table-1 workload ({name}): {e['cpu_core_hours']:.0f} core-hours "
                f"(plain {e['plain_cpu_core_hours']:.0f})")
        for label in ("float64", "float32"):
            if f"gpu_hours_{label}" in e:
                line += f"; GPU {label} {e[f'gpu_hours_{label}']:.1f} GPU-hours"
        print(line)
    print(f"written {out}")
    return 0


def device_agreement(B: int, device: str) -> dict:
    """Largest absolute difference of the results on `device` (float64, float32) from the CPU float64 ones."""
    layers = synthetic_stream(1, B, 640, 4096, seed=2, device="cpu")
    x, xm, xo = layers[0]
    out = {}
    for name in ("official", "paper_text"):
        spec = MetricSpec.named(name)
        ref = Stream(spec).layer(x, xm, xo)
        for label, dt in (("float64", torch.float64), ("float32", torch.float32)):
            got = Stream(spec, dtype=dt).layer(*(t.to(device) for t in (x, xm, xo)))
            out[f"{name}/{label}"] = {f"{mod}/{k}": float((got[mod][k].double().cpu() - v).abs().max())
                                      for mod in ref for k, v in ref[mod].items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
