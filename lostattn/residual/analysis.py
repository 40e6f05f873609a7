"""Residual-subspace analysis: the metrics of every layer's attention and FFN updates, per sample and token scope,
under the vanilla model and the noise controls, plus the eps_RoPE baseline.

States and updates (per layer, the model's own tensors): X_in the layer input, X_mid = X_in + dX_attn (the stream
the FFN adds to), X_out = X_mid + dX_ffn (the next layer's input); the updates are the differences of consecutive
states, as the official code takes them.
- attention: RID of X_mid against X_in, MixIG = TME(X_mid) - TME(X_in);
- FFN: RID of X_out against X_in (`MetricSpec.ffn_reference` "input", official) or X_mid ("mid", paper text),
  MixIG = TME(X_out) - TME(X_mid);
- Noise Delta / Noise QKV / Noise FFN: the attention (Delta, QKV) or FFN (FFN) update of a run with that control
  on; under the official controls Noise QKV and Noise FFN redraw the whole model (vision tower included) with seed
  42, as the official code does, under "decoder_layers" only the analysed decoder layers (`lostattn.residual.controls`);
- eps_RoPE: RID(X_l^(RoPE) | X_l^(no RoPE)) of each layer's output, same inputs, rotary embeddings on vs off.
The forwards compute the logits of the last position only (`logits_to_keep=1`): the metrics read the residual
stream, and the full-vocabulary logits (1.3 GiB per sample for OneVision-7B at 1024x768 in bfloat16) would be
dropped unread.
Metrics are computed per sample on the tokens of a scope (all, visual, text; padding never counts), samples with
equally many tokens batched together, each state's spectrum and TME reused along the stream (`Stream`), in float64;
a state over 64 MiB in float64 is never held whole (its products run over blocks converted from the model's
tensors, `lostattn.residual.metrics.CHUNK_BYTES`), so the metrics of one layer of OneVision-7B at 4,760 tokens add
about 0.5 GiB, not 1.5 (`benchmarks/metrics_blocks.py`).

Every row records the metric spec's name (`spec`) and the controls' preset (`controls`), and carries both MixIG
variants: `mixig_state` = TME(X') - TME(X) and `mixig_delta` = TME(dX) - TME(X), with `mixig` the one the spec
names (states in both presets), and the raw `tme_in`, `tme_out`, `tme_delta`.
"""
from __future__ import annotations

import pandas as pd
import torch
from tqdm import tqdm

from lostattn.residual.capture import SCOPES, LayerCapture, ResidualCapture, no_rope, token_masks
from lostattn.residual.controls import NOISE_CONDITIONS, NOISE_PRESETS, control
from lostattn.residual.metrics import State, Stream, as_spec, state_rid
from lostattn.models.prompts import prepare_inputs, refuse_overlong

CONDITION_MODULES = {"vanilla": ("attention", "ffn"), "noise_delta": ("attention",), "noise_qkv": ("attention",),
                     "noise_ffn": ("ffn",)}
# Table 1's rows: (condition, module) -> label
TABLE1_ROWS = {("noise_delta", "attention"): "Noise Δ", ("noise_qkv", "attention"): "Noise QKV",
               ("noise_ffn", "ffn"): "Noise FFN", ("vanilla", "attention"): "Attention", ("vanilla", "ffn"): "FFN"}


def _check(scopes, conditions):
    bad = set(scopes) - set(SCOPES)
    if bad:
        raise ValueError(f"unknown token scopes {sorted(bad)}; choose from {SCOPES}")
    bad = set(conditions) - set(NOISE_CONDITIONS)
    if bad:
        raise ValueError(f"unknown conditions {sorted(bad)}; choose from {NOISE_CONDITIONS}")


def _batches(samples, batch_size):
    for a in range(0, len(samples), batch_size):
        yield samples[a:a + batch_size]


def _groups(masks, scopes):
    """(scope, sample indices, n_tokens) for the samples of a batch with equally many tokens in that scope."""
    out = []
    for scope in scopes:
        counts = masks[scope].sum(1).tolist()
        for n in sorted(set(counts)):
            if n >= 2:
                out.append((scope, [b for b, c in enumerate(counts) if c == n], n))
    return out


def _gather(t, mask, idx):
    return torch.stack([t[b, mask[b]] for b in idx])


class _LayerMetrics:
    """The on_layer sink of one forward pass: per (scope, group) a Stream, rows in (layer, sample, scope, module)
    order."""

    def __init__(self, spec, masks, ids, scopes, condition, controls, layers, num_layers, dtype, reuse):
        self.spec, self.masks, self.ids, self.scopes = spec, masks, ids, scopes
        self.condition, self.controls, self.modules = condition, controls, CONDITION_MODULES[condition]
        self.analysed = set(range(num_layers)) if layers is None else set(layers)
        self.groups = _groups(masks, scopes)
        self.streams = {(g[0], tuple(g[1])): Stream(spec, dtype=dtype, reuse=reuse) for g in self.groups}
        self.rows: list[dict] = []

    def __call__(self, rec: LayerCapture):
        x_mid = rec.x + rec.d_attn  # the model's own sum, bit for bit
        keep = rec.layer + 1 in self.analysed  # X_out is the next analysed layer's input: keep its basis
        found = {}
        for scope, idx, n in self.groups:
            m = self.masks[scope]
            res = self.streams[scope, tuple(idx)].layer(_gather(rec.x, m, idx), _gather(x_mid, m, idx),
                                                       _gather(rec.x_out, m, idx), self.modules, keep_output=keep)
            res = {mod: {k: v.cpu().tolist() for k, v in r.items()} for mod, r in res.items()}  # one copy, not one
            # device sync per value
            for j, b in enumerate(idx):
                for module in self.modules:
                    found[b, scope, module] = (n, {k: float(v[j]) for k, v in res[module].items()})
        for b, sid in enumerate(self.ids):
            for scope in self.scopes:
                for module in self.modules:
                    if (b, scope, module) in found:
                        n, vals = found[b, scope, module]
                        self.rows.append({"sample": sid, "layer": rec.layer, "condition": self.condition,
                                          "module": module, "scope": scope, "n_tokens": n, "spec": self.spec.name,
                                          "controls": self.controls, **vals})


def _spec_and_controls(spec, controls):
    spec = as_spec(spec)
    if controls is None:
        controls = "official" if spec.base == "official" else "decoder_layers"
    if controls not in NOISE_PRESETS:
        raise ValueError(f"controls {controls!r} is not one of {NOISE_PRESETS}")
    return spec, controls


def residual_metrics(lm, samples, layers: list[int] | None = None, scopes=("all",), spec=None,
                     conditions=NOISE_CONDITIONS, batch_size: int = 8, seed: int = 0, progress: bool = True,
                     controls: str | None = None, dtype: torch.dtype = torch.float64,
                     reuse: bool = True) -> pd.DataFrame:
    """One row per (sample, layer, condition, module, scope): erank_in, erank_out, dS, dD, rid, projector_rank, tme_in,
    tme_out, tme_delta, mixig_state, mixig_delta, mixig, with n_tokens, spec and controls.

    spec: a MetricSpec, "official" / "paper_text", None (official) or a RankRule (the paper-text spec with that
    rule, as callers passed it before). controls: "official" or "decoder_layers" (None: "official" for specs based on the
    official preset, else "decoder_layers"). Noise Delta is drawn per sample from (seed, sample id, layer) and the "decoder_layers"
    weight noise from `seed`, so no row depends on the batch its sample was in."""
    spec, controls = _spec_and_controls(spec, controls)
    _check(scopes, conditions)
    rows: list[dict] = []
    bar = tqdm(total=len(samples) * len(conditions), desc="residual metrics", disable=not progress)
    for batch in _batches(samples, batch_size):
        inputs = prepare_inputs(lm, batch)
        refuse_overlong(lm, batch, inputs, reply=False)
        masks = token_masks(lm, inputs)
        ids = [s.id for s in batch]
        for condition in conditions:
            sink = _LayerMetrics(spec, masks, ids, scopes, condition, controls, layers, lm.adapter.num_layers,
                                 dtype, reuse)
            # the draws depend on the seed and each sample's id only, never on the batch a sample is in
            with torch.no_grad(), control(condition, lm, layers, seed, controls, keys=ids, valid=masks["all"]), \
                    ResidualCapture(lm, layers, on_layer=sink):
                lm.model(**inputs, logits_to_keep=1)
            rows += sink.rows
            bar.update(len(batch))
    bar.close()
    return pd.DataFrame(rows)


def rope_baseline(lm, samples, layers: list[int] | None = None, scopes=("all",), spec=None,
                  batch_size: int = 8, progress: bool = True, dtype: torch.dtype = torch.float64) -> pd.DataFrame:
    """eps_RoPE per (sample, layer, scope): RID (dS, dD under `spec`) of the layer output with RoPE against the one
    without."""
    spec = as_spec(spec)
    _check(scopes, ())
    rows: list[dict] = []
    for batch in tqdm(list(_batches(samples, batch_size)), desc="eps_RoPE", disable=not progress):
        inputs = prepare_inputs(lm, batch)
        refuse_overlong(lm, batch, inputs, reply=False)
        masks = token_masks(lm, inputs)
        groups = _groups(masks, scopes)
        base: dict[int, torch.Tensor] = {}

        def keep(rec: LayerCapture):
            base[rec.layer] = rec.x_out

        def compare(rec: LayerCapture):
            found = {}
            for scope, idx, n in groups:
                m = masks[scope]
                ref = State(_gather(base[rec.layer], m, idx), dtype, basis=True)
                out = State(_gather(rec.x_out, m, idx), dtype)
                r = {k: v.cpu().tolist() for k, v in state_rid(ref, out, spec).items()}
                for j, b in enumerate(idx):
                    found[b, scope] = (n, {k: float(r[k][j]) for k in ("dS", "dD", "rid")})
            for b, s in enumerate(batch):
                for scope in scopes:
                    if (b, scope) in found:
                        n, vals = found[b, scope]
                        rows.append({"sample": s.id, "layer": rec.layer, "scope": scope, "n_tokens": n,
                                     "spec": spec.name, **vals})
            del base[rec.layer]

        with torch.no_grad():
            with no_rope(lm), ResidualCapture(lm, layers, on_layer=keep):
                lm.model(**inputs, logits_to_keep=1)
            with ResidualCapture(lm, layers, on_layer=compare):
                lm.model(**inputs, logits_to_keep=1)
    return pd.DataFrame(rows)


def table1(metrics: pd.DataFrame, scope: str = "all") -> pd.DataFrame:
    """Module-level means (over samples and layers) of RID, dS, dD and MixIG (and MixIG of the update itself,
    MixIG_delta), in Table 1's row order plus Noise FFN."""
    df = metrics[metrics["scope"] == scope]
    out = []
    for (cond, module), label in TABLE1_ROWS.items():
        g = df[(df["condition"] == cond) & (df["module"] == module)]
        if len(g):
            row = {"module": label, "RID": g["rid"].mean(), "dS": g["dS"].mean(), "dD": g["dD"].mean(),
                   "MixIG": g["mixig"].mean(), "RID_sd": g["rid"].std(), "MixIG_sd": g["mixig"].std(), "n": len(g)}
            if "mixig_delta" in g:
                row["MixIG_delta"] = g["mixig_delta"].mean()
            if "spec" in g:
                row["spec"] = ",".join(sorted(g["spec"].unique()))
            out.append(row)
    return pd.DataFrame(out)


CURVE_COLUMNS = ("erank_in", "erank_out", "dS", "dD", "rid", "mixig")


def layer_curves(metrics: pd.DataFrame, cols=CURVE_COLUMNS) -> pd.DataFrame:
    """Per-layer means of the metrics `cols` (e.g. add "mixig_delta"), per condition, module and scope."""
    cols = list(cols)
    return (metrics.groupby(["condition", "module", "scope", "layer"], as_index=False)[cols].mean()
            .sort_values(["condition", "module", "scope", "layer"]).reset_index(drop=True))
