"""Cost measurements as ratios against a baseline measured in the same run: SAP vs a vanilla SDPA forward,
residual capture vs a plain forward, and the peak memory of a run."""
from __future__ import annotations

import statistics
import time
import torch

from lostattn.residual.capture import ResidualCapture
from lostattn.sap.replace import SAPConfig, sap


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _interleaved(fns: dict, device, repeats: int) -> dict[str, float]:
    """Median time per function, runs interleaved so that drifts in machine load hit all alike."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            _sync(device)
            t = time.perf_counter()
            f()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def sap_overhead(lm, inputs, cfg: SAPConfig = SAPConfig(), repeats: int = 5) -> dict:
    """Prefill forward time with SAP (default: all layers but 0, last query) over a vanilla SDPA forward on the
    same processor `inputs`; the SAP time includes drawing the predefined values."""

    def vanilla():
        with torch.no_grad():
            lm.model(**inputs)

    def with_sap():
        with torch.no_grad(), sap(lm, cfg, inputs):
            lm.model(**inputs)

    t = _interleaved({"vanilla": vanilla, "sap": with_sap}, lm.device, repeats)
    return {"batch": int(inputs["input_ids"].shape[0]), "vanilla_ms": 1e3 * t["vanilla"], "sap_ms": 1e3 * t["sap"],
            "sap_over_vanilla": t["sap"] / t["vanilla"], "mode": cfg.mode}


def capture_overhead(lm, inputs, repeats: int = 5, on_layer=None) -> dict:
    """Forward time with residual capture (hooks handing each layer to `on_layer`) over a plain forward."""
    sink = on_layer or (lambda rec: None)

    def plain():
        with torch.no_grad():
            lm.model(**inputs)

    def captured():
        with torch.no_grad(), ResidualCapture(lm, on_layer=sink):
            lm.model(**inputs)

    t = _interleaved({"plain": plain, "capture": captured}, lm.device, repeats)
    return {"plain_ms": 1e3 * t["plain"], "capture_ms": 1e3 * t["capture"],
            "capture_over_plain": t["capture"] / t["plain"]}


def peak_memory(fn, device) -> dict:
    """Peak memory of one call: CUDA's allocator peak on a GPU, the process's max resident set on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        fn()
        return {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}
    import resource

    fn()
    return {"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def peak_memory_text(device) -> str:
    """This process's peak memory so far, in words: CUDA's allocator peak on a GPU (what the tensors took), the
    process's peak resident set on CPU (weights, activations and the interpreter)."""
    if torch.device(device).type == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (allocated tensors)"
    import resource

    return f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (whole process)"


__all__ = ["sap_overhead", "capture_overhead", "peak_memory", "peak_memory_text"]
