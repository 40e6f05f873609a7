"""Peak memory and time at the published widths, depth cut to 2 decoder layers, as ratios to a plain forward of the
same model on the same input measured in the same run.

    python benchmarks/memory_published.py                      # the default cases (a few minutes on 2 CPU cores)
    python benchmarks/memory_published.py --families qwen2_5_vl --photo 2000x1500
    python benchmarks/memory_published.py --families qwen2_5_vl --steps vis_enc_attn --vis-photo 4000x3000 --append

Each model is built with the real transformers classes from the published configuration (`random_checkpoints`,
size "published": hidden sizes, heads, KV heads, vision towers and processor settings of llava-1.5-7b,
llava-onevision-qwen2-7b, Qwen2.5-VL-7B; a small tokenizer, so the vocabulary is a few hundred tokens) with 2 decoder
layers and random weights, in bfloat16. Every measurement runs in a fresh process: the model is built, its peak
resident set is reset (/proc/self/clear_refs), the step runs once, and the peak resident set (VmHWM) is read, weights
included. The steps:

- plain: `model(**inputs, logits_to_keep=1)`, the forward `generate` runs at prefill (the baseline);
- analyze: `residual_metrics` with every condition under the official controls (vanilla, Noise Delta, Noise QKV,
  Noise FFN), one analysed layer, float64 metrics;
- eval_<mode>: one greedy token with SAP in that mode, under the controlled protocol (SDPA) and the official one
  (eager attention in the model's dtype, every layer);
- vis_enc_attn: the guide alone (the vision tower with the attention of its read layer accumulated in chunks).

Each row names its `run`; `runs` holds each run's provenance (versions, git commit), taken when it starts, so rows
added with --append keep the code that measured them. Time: wall and CPU seconds of the step; `repeats` interleaved repetitions of the plain forward against SDPA and
official eager (prefill, vanilla) give min, median and spread of the eager / SDPA ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _process import add_child_arguments, answer, reset_peak, run_child, vm  # noqa: E402

FAMILIES = ("qwen2_5_vl", "llava", "llava_onevision")
MODES = ("gaussian_noise", "vis_enc_attn", "complexity")


def build(family: str, depth: int, dtype):
    """A LoadedModel of `family` at the published widths with `depth` decoder layers and random weights."""
    import torch
    import transformers

    from lostattn.models.adapters import Adapter
    from lostattn.models.loader import LoadedModel, load_processor
    from lostattn.models.adapters import MODEL_FAMILIES
    from lostattn.models.random_checkpoints import build_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="lostattn-published-"))
    build_checkpoint(family, folder, size="published", save_weights=False)
    config = transformers.AutoConfig.from_pretrained(folder)
    config.get_text_config(decoder=True).num_hidden_layers = depth
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = getattr(transformers, MODEL_FAMILIES[family].hf_class)._from_config(
            config, attn_implementation="sdpa", dtype=dtype)
    model.eval()
    proc = load_processor(folder, family)
    proc.tokenizer.padding_side = "left"
    return LoadedModel(f"{family}-published-depth{depth}", model, proc, Adapter(model))


def photo(width: int, height: int):
    """A seeded photo-like image: smooth gradients plus noise (complexity varies across it)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 200
    img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def child(a) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    from lostattn.inference.generation import generate_replies
    from lostattn.inference.protocols import get_protocol
    from lostattn.models.prompts import prepare_inputs
    from lostattn.residual.analysis import residual_metrics
    from lostattn.sap.distributions import make_guidance
    from lostattn.tasks.types import VQASample

    torch.set_num_threads(a.threads)
    lm = build(a.family, a.depth, getattr(torch, a.dtype))
    w, h = (int(v) for v in a.photo.split("x"))
    sample = VQASample(id="photo", question="What is in the image? Answer in one word.", answer="x",
                       family="photo", kind="short", image=photo(w, h))
    inputs = prepare_inputs(lm, [sample])
    n_vis = int(lm.adapter.visual_mask(inputs["input_ids"]).sum())
    weights_mib = sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2**20

    what = a.what
    if what == "plain":
        def step():
            with torch.no_grad():
                lm.model(**inputs, logits_to_keep=1)
    elif what == "analyze":
        def step():
            residual_metrics(lm, [sample], layers=[1], controls="official", progress=False)
    elif what == "vis_enc_attn":
        cfg = get_protocol(lm, "controlled").sap_config("vis_enc_attn")

        def step():
            with torch.no_grad():
                make_guidance(cfg, lm, inputs, ["photo"])
    elif what.startswith("eval_"):
        _, protocol_name, mode = what.split("_", 2)
        protocol = get_protocol(lm, protocol_name, max_new_tokens=1)

        def step():
            generate_replies(lm, [sample], protocol, protocol.sap_config(mode) if mode != "none" else None)
    elif what == "timing":
        return timing(lm, inputs, a.repeats, n_vis)
    else:
        raise ValueError(f"unknown step {what!r}")
    before = reset_peak()  # the build does not count
    t, c = time.perf_counter(), time.process_time()
    step()
    return {"family": a.family, "photo": a.photo, "step": what, "visual_tokens": n_vis, "weights_mib": weights_mib,
            "rss_before_mib": before, "peak_rss_mib": vm("VmHWM"), "wall_s": time.perf_counter() - t,
            "cpu_s": time.process_time() - c}


def timing(lm, inputs, repeats: int, n_vis: int) -> dict:
    """Prefill (vanilla) under official eager vs SDPA, interleaved: wall and CPU seconds per repetition."""
    import torch

    from lostattn.sap.replace import attention_arithmetic

    def run(arith):
        with torch.no_grad(), attention_arithmetic(lm, arith):
            lm.model(**inputs, logits_to_keep=1)

    run("sdpa"), run("official_eager")  # warm-up
    wall = {"sdpa": [], "official_eager": []}
    cpu = {"sdpa": [], "official_eager": []}
    for _ in range(repeats):
        for arith in ("sdpa", "official_eager"):
            t, c = time.perf_counter(), time.process_time()
            run(arith)
            wall[arith].append(time.perf_counter() - t)
            cpu[arith].append(time.process_time() - c)
    ratios = [e / s for e, s in zip(wall["official_eager"], wall["sdpa"])]
    return {"step": "timing", "visual_tokens": n_vis, "repeats": repeats,
            "sdpa_wall_s_median": statistics.median(wall["sdpa"]),
            "eager_wall_s_median": statistics.median(wall["official_eager"]),
            "eager_over_sdpa_wall": {"min": min(ratios), "median": statistics.median(ratios),
                                     "spread": max(ratios) - min(ratios)},
            "eager_over_sdpa_cpu_median": statistics.median(cpu["official_eager"]) / statistics.median(cpu["sdpa"])}


def measure(family: str, photo_size: str, what: str, a) -> dict:
    args = ["--family", family, "--photo", photo_size, "--what", what, "--depth", str(a.depth), "--dtype", a.dtype,
            "--threads", str(a.threads), "--repeats", str(a.repeats)]
    return run_child(__file__, args, f"{family} {what}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--photo", default="1024x768", help="the photo of the analyze and eval steps, WxH")
    p.add_argument("--vis-photo", default="1400x1050", help="the photo of the vis_enc_attn step (Qwen2.5-VL), WxH")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", default=None, help="comma-separated steps (default: all); plain always runs first")
    p.add_argument("--append", action="store_true", help="add this run's rows to those already in --out")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory_published.json"))
    add_child_arguments(p, "family", "what")
    a = p.parse_args(argv)
    if answer(a, child):
        return 0

    from lostattn.provenance import provenance

    run = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    old = json.loads(Path(a.out).read_text()) if a.append and Path(a.out).is_file() else {}
    rows = old.get("rows", [])
    runs = {**old.get("runs", {}), run: provenance()}  # each run's code, taken when it starts
    steps = ["analyze"] + [f"eval_{proto}_{m}" for proto in ("controlled", "official") for m in MODES] + ["timing"]
    if a.steps:
        steps = [s for s in a.steps.split(",") if s != "plain"]
    for family in a.families.split(","):
        cases = [(a.photo, ["plain"] + [s for s in steps if s != "vis_enc_attn"])]
        if family == "qwen2_5_vl" and (not a.steps or "vis_enc_attn" in steps):
            cases.append((a.vis_photo, ["plain", "vis_enc_attn"]))
        for size, todo in cases:
            if todo == ["plain"]:  # no step asked for at this size
                continue
            base = None
            for what in todo:
                r = measure(family, size, what, a)
                if what == "plain":
                    base = r
                elif what != "timing":
                    r["peak_over_plain"] = r["peak_rss_mib"] / base["peak_rss_mib"]
                    r["wall_over_plain"] = r["wall_s"] / base["wall_s"]
                rows.append({"run": run, "family": family, "photo": size, **r})
                print(json.dumps(rows[-1]), flush=True)
                result = {"what": "peak resident memory and time at the published widths, 2 decoder layers, random "
                                  "weights, each step in a fresh process, as ratios to a plain forward "
                                  "(logits_to_keep=1) measured in the same run", "dtype": a.dtype, "depth": a.depth,
                          "threads": a.threads, "rows": rows, "runs": runs}
                Path(a.out).write_text(json.dumps(result, indent=2) + "\n")  # after every row: a stop loses little
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
