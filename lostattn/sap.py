"""SAP: replacing learned attention over visual tokens by predefined values.

One mechanism serves every supported family: a function registered in transformers' `AttentionInterface` (with
the SDPA mask builder) that the decoder's attention modules call instead of plain SDPA while the `sap(...)` context
is active. It runs the usual SDPA kernel for the whole layer, then recomputes only the query rows that SAP changes
(the last query, in the official protocol) with the replaced scores, so SAP costs little more than a vanilla pass
and never needs eager attention or patched modeling files.

The replacement follows the official code (see the book's "Choices" page for where we decided):

- scores S = scaling * q k^T (after RoPE, before masking) of the chosen query rows;
- on the chosen heads and visual key columns: S <- (1 - lam) * S + lam * a', with (1 - lam) taken as 0 when lam >= 1;
- a' = a * |mean(S_full)| / (2 |mean(a)|), `a` the predefined distribution over the visual tokens and
  mean(S_full) the mean of the full pre-mask score matrix of the sample (all heads, queries, keys; padding excluded),
  computed exactly and cheaply as scaling * mean_h(mean_q q_h . mean_k k_h);
- heads: those whose score `-mean over non-visual keys` on the last query lies between two percentiles of all heads;
- layers: "all" (every layer but layer 0) or a list; `a` is drawn once per sample at prefill and reused at decode.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SAP_ATTN = "lostattn_sap"
MODES = ("gaussian_noise", "uniform", "vis_enc_attn", "complexity")
QUERY_SCOPES = ("last", "text")


@dataclass(frozen=True)
class SAPConfig:
    """SAP parameters; the defaults are the paper's protocol (full replacement, all layers but 0, all heads,
    last query only, seed 42)."""

    mode: str = "gaussian_noise"
    lam: float = 1.0
    layers: str | tuple[int, ...] = "all"
    head_percentile: tuple[float, float] = (0.0, 1.0)
    queries: str = "last"
    seed: int = 42
    # Testing hook: recompute the replaced rows even when lam == 0 (otherwise lam == 0 is the vanilla SDPA path).
    force_recompute: bool = field(default=False, repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"SAP mode {self.mode!r} is not one of {MODES}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"SAP lam must lie in [0, 1], got {self.lam}")
        if self.queries not in QUERY_SCOPES:
            raise ValueError(f"SAP queries {self.queries!r} is not one of {QUERY_SCOPES}")
        lo, hi = self.head_percentile
        if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
            raise ValueError(f"head_percentile {self.head_percentile} must be two numbers in [0, 1]")
        if isinstance(self.layers, str) and self.layers != "all":
            raise ValueError(f"layers must be 'all' or a list of layer indices, got {self.layers!r}")

    def layer_indices(self, n_layers: int) -> list[int]:
        if self.layers == "all":
            return list(range(1, n_layers))
        bad = [i for i in self.layers if not 0 <= int(i) < n_layers]
        if bad:
            raise ValueError(f"SAP layers {bad} are outside the model's {n_layers} decoder layers")
        return sorted({int(i) for i in self.layers})

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("force_recompute")
        d["layers"] = d["layers"] if d["layers"] == "all" else list(d["layers"])
        d["head_percentile"] = list(d["head_percentile"])
        return d

    def tag(self) -> str:
        layers = self.layers if self.layers == "all" else "-".join(map(str, self.layers))
        lo, hi = self.head_percentile
        return f"sap-{self.mode}-lam{self.lam:g}-L{layers}-h{lo:g}_{hi:g}-q{self.queries}-s{self.seed}"


# ---- predefined values ----------------------------------------------------------------------------------------
def _sample_generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def dirichlet_ones(n: int, gen: torch.Generator) -> torch.Tensor:
    """A draw from Dirichlet(1, ..., 1) (uniform on the simplex): normalised Exp(1) variables."""
    e = -torch.log(torch.rand(n, generator=gen, dtype=torch.float64).clamp_min(1e-300))
    return (e / e.sum()).float()


def patch_complexity(gray: torch.Tensor, patch: int) -> torch.Tensor:
    """Per-patch complexity of a grey image (H, W): mean |finite-difference gradient| + variance, min-max scaled.

    Patches are read row-major, the order of a ViT's patch tokens.
    """
    H, W = gray.shape
    p = gray[: H - H % patch, : W - W % patch].reshape(H // patch, patch, W // patch, patch).permute(0, 2, 1, 3)
    p = p.reshape(-1, patch, patch)
    gx = (p[:, :, 1:] - p[:, :, :-1]).abs().mean(dim=(1, 2))
    gy = (p[:, 1:, :] - p[:, :-1, :]).abs().mean(dim=(1, 2))
    s = gx + gy + p.var(dim=(1, 2), unbiased=False)
    return (s - s.min()) / (s.max() - s.min() + 1e-8)


def _grid_pixels(lm, inputs) -> torch.Tensor:
    if not lm.adapter.spec.grid_images:
        raise NotImplementedError(
            f"mode needs one patch grid per image; {lm.adapter.family} tiles images at any resolution. "
            f"Use mode='gaussian_noise' or 'uniform' for this family.")
    return inputs["pixel_values"]


def vision_encoder_attention(lm, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, P): the vision tower's attention at its feature layer, mean over heads and patch queries, over patch keys."""
    model = lm.model
    tower = model.model.vision_tower
    cfg = tower.config
    old = cfg._attn_implementation
    cfg._attn_implementation = "eager"  # attention probabilities are only materialised by eager attention
    try:
        with torch.no_grad():
            out = tower(pixel_values.to(next(tower.parameters()).dtype), output_attentions=True,
                        output_hidden_states=True)
    finally:
        cfg._attn_implementation = old
    layer = model.config.vision_feature_layer
    if not isinstance(layer, int):
        layer = layer[-1]
    att = out.attentions[layer if layer < 0 else layer - 1]  # hidden_states[k] is the output of layer k
    start = 1 if model.config.vision_feature_select_strategy == "default" else 0
    return att[:, :, start:, start:].float().mean(dim=2).mean(dim=1)


def make_guidance(cfg: SAPConfig, lm, inputs, keys: list[str]) -> list[torch.Tensor]:
    """The predefined distribution over each sample's visual tokens (one 1-D tensor per sample)."""
    vis = lm.adapter.visual_mask(inputs["input_ids"]).cpu()
    n_vis = vis.sum(dim=1).tolist()
    if cfg.mode == "gaussian_noise":
        return [dirichlet_ones(n, _sample_generator(cfg.seed, k)) for n, k in zip(n_vis, keys)]
    if cfg.mode == "uniform":
        return [torch.full((n,), 1.0 / n) for n in n_vis]
    if cfg.mode == "complexity":
        pv = _grid_pixels(lm, inputs).float().cpu()
        ip = lm.processor.image_processor
        mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        rgb = pv * std + mean
        gray = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
        patch = lm.model.config.vision_config.patch_size
        scores = [patch_complexity(g, patch) for g in gray]
    else:  # vis_enc_attn
        scores = list(vision_encoder_attention(lm, _grid_pixels(lm, inputs)).cpu())
    out = []
    for s, n in zip(scores, n_vis):
        if s.numel() != n:
            raise ValueError(f"{cfg.mode}: {s.numel()} patch scores for {n} visual tokens")
        out.append(torch.softmax(s.float() - s.max(), dim=0))  # as the official code: softmax of the scores
    return out


# ---- the score replacement ------------------------------------------------------------------------------------
def mix_scores(scores: torch.Tensor, vis: torch.Tensor, valid: torch.Tensor, guide: torch.Tensor,
               mean_score: torch.Tensor, rowsel: torch.Tensor, cfg: SAPConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace pre-mask scores (B, H, R, K) of the selected rows, heads and visual columns.

    vis, valid: (B, K) visual / non-padding keys; guide: (B, K) the distribution on visual keys (0 elsewhere);
    mean_score: (B,) mean of the sample's full score matrix; rowsel: (B, R) rows SAP may change (the last row R-1
    is the current last query, used for head selection). Returns (new scores, head selection (B, H)).
    """
    nonvis = valid & ~vis
    last = scores[:, :, -1, :]
    head_score = -(last * nonvis[:, None, :]).sum(-1) / nonvis.sum(-1).clamp_min(1)[:, None]
    lo, hi = cfg.head_percentile
    lo, hi = min(lo, hi), max(lo, hi)
    q = torch.quantile(head_score, torch.tensor([lo, hi], dtype=head_score.dtype, device=head_score.device),
                       dim=-1, keepdim=True)  # (2, B, 1)
    heads = (head_score >= q[0]) & (head_score <= q[1])
    mean_a = guide.sum(-1) / vis.sum(-1).clamp_min(1)
    a = guide * (mean_score.abs() / (2 * mean_a.abs().clamp_min(1e-30)))[:, None]
    keep = 0.0 if cfg.lam >= 1.0 else 1.0 - cfg.lam
    mixed = keep * scores + cfg.lam * a[:, None, None, :]
    sel = heads[:, :, None, None] & rowsel[:, None, :, None] & vis[:, None, None, :]
    return torch.where(sel, mixed, scores), heads


class SAPState:
    """What the attention function needs during one `sap(...)` context: per-sample visual keys and guidance."""

    def __init__(self, cfg: SAPConfig, vis: torch.Tensor, valid: torch.Tensor, guide: torch.Tensor):
        self.cfg, self.vis, self.valid, self.guide = cfg, vis, valid, guide
        self.calls = 0

    @staticmethod
    def _fit(t: torch.Tensor, K: int, fill) -> torch.Tensor:
        """Extend a (B, L0) prompt-time tensor to K keys (decode steps add non-visual, valid keys)."""
        if t.shape[1] >= K:
            return t[:, :K]
        pad = torch.full((t.shape[0], K - t.shape[1]), fill, dtype=t.dtype, device=t.device)
        return torch.cat([t, pad], dim=1)

    def apply(self, module, query, key, value, out, scaling):
        B, H, Q, D = query.shape
        K = key.shape[2]
        if B != self.vis.shape[0]:
            raise RuntimeError(f"SAP was set up for batch {self.vis.shape[0]} but attention ran on batch {B} "
                               "(beam search and other batch-expanding decoding are not supported)")
        self.calls += 1
        dev = query.device
        vis = self._fit(self.vis.to(dev), K, False)
        valid = self._fit(self.valid.to(dev), K, True)
        guide = self._fit(self.guide.to(dev), K, 0.0)
        scaling = scaling if scaling is not None else D**-0.5
        k = repeat_kv(key, H // key.shape[1]).float()
        v = repeat_kv(value, H // value.shape[1]).float()
        qf = query.float()
        qvalid = valid[:, K - Q:]
        qbar = (qf * qvalid[:, None, :, None]).sum(2) / qvalid.sum(1).clamp_min(1)[:, None, None]
        kbar = (k * valid[:, None, :, None]).sum(2) / valid.sum(1).clamp_min(1)[:, None, None]
        mean_score = scaling * (qbar * kbar).sum(-1).mean(-1)  # (B,)

        qpos = torch.arange(K - Q, K, device=dev)  # absolute positions of the query rows
        if self.cfg.queries == "last" or Q == 1:
            rows = torch.tensor([Q - 1], device=dev)
            rowsel = torch.ones(B, 1, dtype=torch.bool, device=dev)
        else:  # every text query that comes after a visual token
            first_vis = torch.where(vis.any(1), vis.float().argmax(1), torch.full((B,), K, device=dev))
            rows = torch.arange(Q, device=dev)
            rowsel = (qvalid & ~vis[:, K - Q:]) & (qpos[None, :] > first_vis[:, None])
            keep = rowsel.any(0)
            keep[-1] = True
            rows, rowsel = rows[keep], rowsel[:, keep]
        scores = scaling * torch.matmul(qf[:, :, rows], k.transpose(-1, -2))  # (B, H, R, K)
        scores, _ = mix_scores(scores, vis, valid, guide, mean_score, rowsel, self.cfg)
        allowed = (torch.arange(K, device=dev)[None, :] <= qpos[rows][:, None])[None, None] & valid[:, None, None, :]
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        o = torch.matmul(probs, v).transpose(1, 2).to(out.dtype)  # (B, R, H, D)
        out = out.clone()
        out[:, rows] = torch.where(rowsel[:, :, None, None], o, out[:, rows])
        return out


def sap_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """SDPA for every module; the SAP rows recomputed for decoder attention modules inside a `sap(...)` context."""
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)
    state: SAPState | None = getattr(module, "_lostattn_sap", None)
    if state is None or (state.cfg.lam == 0.0 and not state.cfg.force_recompute):
        return out, None
    return state.apply(module, query, key, value, out, scaling), None


AttentionInterface.register(SAP_ATTN, sap_attention_forward)
AttentionMaskInterface.register(SAP_ATTN, sdpa_mask)


@contextmanager
def sap(lm, cfg: SAPConfig, inputs, keys: list[str] | None = None):
    """Run the model with SAP for one batch of processor `inputs`; `keys` (one per sample) seed the noise so that a
    sample gets the same draw whatever batch it is in."""
    ids = inputs["input_ids"]
    keys = keys or [str(i) for i in range(ids.shape[0])]
    vis = lm.adapter.visual_mask(ids)
    valid = inputs.get("attention_mask", torch.ones_like(ids)).bool()
    guide = torch.zeros(ids.shape, dtype=torch.float32)
    for b, g in enumerate(make_guidance(cfg, lm, inputs, keys)):
        guide[b, vis[b].cpu()] = g
    state = SAPState(cfg, vis, valid, guide.to(ids.device))
    tc = lm.adapter.text_config
    old = tc._attn_implementation
    chosen = cfg.layer_indices(lm.adapter.num_layers)
    tc._attn_implementation = SAP_ATTN
    for i in chosen:
        lm.adapter.attn(i)._lostattn_sap = state
    try:
        yield state
    finally:
        tc._attn_implementation = old
        for i in chosen:
            del lm.adapter.attn(i)._lostattn_sap


def guidance_summary(g: torch.Tensor) -> dict:
    """Entropy (nats) and max of a guidance distribution, for reports."""
    p = g.double().clamp_min(1e-300)
    return {"entropy": float(-(p * p.log()).sum()), "max": float(g.max()), "n": int(g.numel()),
            "uniform_entropy": float(np.log(g.numel()))}
