"""Residual-subspace analysis: the metrics of every layer's attention and FFN updates, per sample and token scope,
under the vanilla model and the two noise controls, plus the eps_RoPE baseline.

Which update is measured against which stream:
- attention: X -> X + dX_attn (X the layer input);
- FFN: X_mid -> X_mid + dX_ffn (X_mid = X + dX_attn, the stream the FFN adds to);
- Noise Delta / Noise QKV: the attention update of a run with that control active on every analysed layer;
- eps_RoPE: RID(X_l^(RoPE) | X_l^(no RoPE)) of each layer's output, same inputs, rotary embeddings on vs off.
Metrics are computed per sample on the tokens of a scope (all, visual, text; padding never counts).
"""
from __future__ import annotations

from contextlib import nullcontext

import pandas as pd
import torch
from tqdm import tqdm

from .capture import SCOPES, LayerCapture, ResidualCapture, no_rope, token_masks
from .controls import noise_delta, noise_qkv
from .metrics import RankRule, rid, update_metrics
from .prompts import prepare_inputs

CONDITIONS = ("vanilla", "noise_delta", "noise_qkv")
# Table 1's rows: (condition, module) -> label
TABLE1_ROWS = {("noise_delta", "attention"): "Noise Δ", ("noise_qkv", "attention"): "Noise QKV",
               ("vanilla", "attention"): "Attention", ("vanilla", "ffn"): "FFN"}


def _check(scopes, conditions):
    bad = set(scopes) - set(SCOPES)
    if bad:
        raise ValueError(f"unknown token scopes {sorted(bad)}; choose from {SCOPES}")
    bad = set(conditions) - set(CONDITIONS)
    if bad:
        raise ValueError(f"unknown conditions {sorted(bad)}; choose from {CONDITIONS}")


def _batches(samples, batch_size):
    for a in range(0, len(samples), batch_size):
        yield samples[a:a + batch_size]


def _metric_rows(rec: LayerCapture, masks, ids, scopes, rule, condition, modules=("attention", "ffn")):
    rows = []
    x_mid = rec.x + rec.d_attn
    pairs = {"attention": (rec.x, rec.d_attn), "ffn": (x_mid, rec.d_ffn)}
    for b, sid in enumerate(ids):
        for scope in scopes:
            idx = masks[scope][b]
            n = int(idx.sum())
            if n < 2:
                continue
            for module in modules:
                x, d = pairs[module]
                m = update_metrics(x[b, idx], d[b, idx], rule)
                rows.append({"sample": sid, "layer": rec.layer, "condition": condition, "module": module,
                             "scope": scope, "n_tokens": n, **{k: float(v) for k, v in m.items()}})
    return rows


def residual_metrics(lm, samples, layers: list[int] | None = None, scopes=("all",), rule: RankRule = RankRule(),
                     conditions=CONDITIONS, batch_size: int = 8, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """One row per (sample, layer, condition, module, scope) with erank_in/out, dS, dD, rid, mixig, tme_in, rank."""
    _check(scopes, conditions)
    rows: list[dict] = []
    total = len(samples) * len(conditions)
    bar = tqdm(total=total, desc="residual metrics", disable=not progress)
    for bi, batch in enumerate(_batches(samples, batch_size)):
        inputs = prepare_inputs(lm, batch)
        masks = token_masks(lm, inputs)
        ids = [s.id for s in batch]
        for condition in conditions:
            ctrl_seed = seed * 1_000_003 + bi
            ctx = {"vanilla": nullcontext(), "noise_delta": noise_delta(lm, layers, seed=ctrl_seed),
                   "noise_qkv": noise_qkv(lm, layers, seed=ctrl_seed)}[condition]
            modules = ("attention", "ffn") if condition == "vanilla" else ("attention",)
            collect = lambda rec: rows.extend(_metric_rows(rec, masks, ids, scopes, rule, condition, modules))  # noqa: E731
            with torch.no_grad(), ctx, ResidualCapture(lm, layers, on_layer=collect):
                lm.model(**inputs)
            bar.update(len(batch))
    bar.close()
    return pd.DataFrame(rows)


def rope_baseline(lm, samples, layers: list[int] | None = None, scopes=("all",), rule: RankRule = RankRule(),
                  batch_size: int = 8, progress: bool = True) -> pd.DataFrame:
    """eps_RoPE per (sample, layer, scope): RID of the layer output with RoPE relative to the one without."""
    _check(scopes, ())
    rows: list[dict] = []
    for batch in tqdm(list(_batches(samples, batch_size)), desc="eps_RoPE", disable=not progress):
        inputs = prepare_inputs(lm, batch)
        masks = token_masks(lm, inputs)
        base: dict[int, torch.Tensor] = {}

        def keep(rec: LayerCapture):
            base[rec.layer] = rec.x_out

        def compare(rec: LayerCapture):
            for b, s in enumerate(batch):
                for scope in scopes:
                    idx = masks[scope][b]
                    if int(idx.sum()) < 2:
                        continue
                    r = rid(base[rec.layer][b, idx], rec.x_out[b, idx], rule)
                    rows.append({"sample": s.id, "layer": rec.layer, "scope": scope, "n_tokens": int(idx.sum()),
                                 "dS": float(r.dS), "dD": float(r.dD), "rid": float(r.rid)})
            del base[rec.layer]

        with torch.no_grad():
            with no_rope(lm), ResidualCapture(lm, layers, on_layer=keep):
                lm.model(**inputs)
            with ResidualCapture(lm, layers, on_layer=compare):
                lm.model(**inputs)
    return pd.DataFrame(rows)


def table1(metrics: pd.DataFrame, scope: str = "all") -> pd.DataFrame:
    """Module-level means (over samples and layers) of RID, dS, dD and MixIG, in Table 1's row order."""
    df = metrics[metrics["scope"] == scope]
    out = []
    for (cond, module), label in TABLE1_ROWS.items():
        g = df[(df["condition"] == cond) & (df["module"] == module)]
        if len(g):
            out.append({"module": label, "RID": g["rid"].mean(), "dS": g["dS"].mean(), "dD": g["dD"].mean(),
                        "MixIG": g["mixig"].mean(), "RID_sd": g["rid"].std(), "MixIG_sd": g["mixig"].std(),
                        "n": len(g)})
    return pd.DataFrame(out)


def layer_curves(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per-layer means of every metric, per condition, module and scope."""
    cols = ["erank_in", "erank_out", "dS", "dD", "rid", "mixig"]
    return (metrics.groupby(["condition", "module", "scope", "layer"], as_index=False)[cols].mean()
            .sort_values(["condition", "module", "scope", "layer"]).reset_index(drop=True))
