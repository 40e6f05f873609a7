"""Cost of residual capture and of SAP, as ratios to a baseline measured in the same run.

    python benchmarks/run_benchmarks.py                 # embedded model (CPU) + a LLaVA-1.5-7B-shaped decoder
    python benchmarks/run_benchmarks.py --device cuda   # the 7B shape at full size, bf16, on a GPU

The 7B-shaped model is a LlavaForConditionalGeneration with random weights: a Llama decoder of llava-1.5-7b's shape
(hidden 4096, 32 layers, 32 heads, MLP 11008) behind a one-layer CLIP tower that yields LLaVA-1.5's 576 visual
tokens. On a CPU it is scaled down (hidden 1024, 4 layers) so that the run stays short; the output says which.
Targets (issues): capture <= 1.15x a plain forward, SAP <= 1.2x a vanilla SDPA forward.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lostattn.harness.costs import capture_overhead, peak_memory, sap_overhead  # noqa: E402
from lostattn.tasks.synthetic import SyntheticBenchmark  # noqa: E402
from lostattn.harness.evaluate import throughput  # noqa: E402
from lostattn.residual.metrics import update_metrics  # noqa: E402
from lostattn.models.adapters import Adapter  # noqa: E402
from lostattn.models.loader import LoadedModel, load_model  # noqa: E402
from lostattn.models.prompts import prepare_inputs  # noqa: E402
from lostattn.provenance import provenance  # noqa: E402


def llava7b_shaped(device: str, full: bool):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=32064, hidden_size=4096 if full else 1024, intermediate_size=11008 if full else 2752,
                       num_hidden_layers=32 if full else 4, num_attention_heads=32 if full else 8,
                       num_key_value_heads=32 if full else 8, max_position_embeddings=4096)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                              image_size=336, patch_size=14)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000, vision_feature_layer=-1,
                      image_seq_length=576)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).to(device=device, dtype=dtype).eval()
    model.config._attn_implementation = "sdpa"
    model.config.text_config._attn_implementation = "sdpa"
    B, text_len = (4, 64) if full else (2, 48)
    ids = torch.randint(2, 31999, (B, 2 + 576 + text_len))
    ids[:, 0] = 1
    ids[:, 2:578] = 32000
    inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
              "pixel_values": torch.randn(B, 3, 336, 336, device=device, dtype=dtype)}
    return LoadedModel("llava-1.5-7b-shape" + ("" if full else " (scaled down)"), model, None, Adapter(model)), inputs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="results/benchmarks.json")
    a = ap.parse_args()
    torch.set_num_threads(2) if a.device == "cpu" else None
    report = {"provenance": provenance(seed=0, device=a.device)}

    lm = load_model("embedded", device=a.device)
    samples = SyntheticBenchmark().samples("test", limit_per_family=6)
    inputs = prepare_inputs(lm, samples[:32])
    masks_all = inputs["attention_mask"].bool()

    def metrics_sink(rec):  # streaming statistics: the attention update's metrics per sample, then drop
        for b in range(rec.x.shape[0]):
            update_metrics(rec.x[b, masks_all[b]], rec.d_attn[b, masks_all[b]])

    report["embedded"] = {
        "capture_hooks": capture_overhead(lm, inputs, a.repeats),
        "capture_with_streamed_metrics": capture_overhead(lm, inputs, max(2, a.repeats // 3), metrics_sink),
        "sap": sap_overhead(lm, inputs, repeats=a.repeats),
        "throughput": throughput(lm, samples[:32], batch_size=32),
        "memory": peak_memory(lambda: lm.model(**inputs), a.device),
    }
    full = a.device == "cuda"
    big, big_inputs = llava7b_shaped(a.device, full)
    report["llava7b_shape"] = {
        "model": big.name,
        "capture_hooks": capture_overhead(big, big_inputs, max(3, a.repeats // 2)),
        "sap": sap_overhead(big, big_inputs, repeats=max(3, a.repeats // 2)),
        "memory": peak_memory(lambda: big.model(**big_inputs), a.device),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    for name in ("embedded", "llava7b_shape"):
        r = report[name]
        print(f"{name}: capture {r['capture_hooks']['capture_over_plain']:.3f}x plain forward, "
              f"SAP {r['sap']['sap_over_vanilla']:.3f}x vanilla SDPA forward, memory {r['memory']}")
    e = report["embedded"]
    print(f"embedded: capture + streamed metrics {e['capture_with_streamed_metrics']['capture_over_plain']:.2f}x; "
          f"batched generation {e['throughput']['batched_samples_per_s']:.1f} samples/s vs unbatched "
          f"{e['throughput']['unbatched_samples_per_s']:.1f} ({e['throughput']['speedup']:.1f}x)")
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
