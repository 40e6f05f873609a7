"""SAP: replacing learned attention over visual tokens by predefined values.

One mechanism serves every supported family: a function registered in transformers' `AttentionInterface` (with
the SDPA mask builder) that the decoder's attention modules call instead of plain SDPA while the `sap(...)` context
is active. It runs the usual SDPA kernel for the whole layer, then recomputes only the query rows that SAP changes
(the last query, as the official code does) with the replaced scores, so SAP costs little more than a vanilla pass
and never needs eager attention or patched modeling files.

The replacement, as the official code computes it (the per-family settings are `SAPConfig` fields, and
`lostattn.inference.protocols` holds the official and the controlled presets):

- scores S = scaling * q k^T (after RoPE, before masking) of the chosen query rows;
- on the chosen heads and visual key columns: S <- (1 - lam) * S + lam * a', with (1 - lam) taken as 0 when lam >= 1;
- `rescale=True` (LLaVA, OneVision): a' = a * |mean(S_full)| / (2 |mean(a)|), `a` the predefined distribution over
  the visual tokens and mean(S_full) the mean of the sample's full pre-mask score matrix (all heads, queries and keys,
  future entries included, padding excluded), computed exactly as scaling * mean_h(mean_q q_h . mean_k k_h) without
  materialising it; `rescale=False` (Qwen2.5-VL): a' = a, the raw probabilities;
- heads: those whose head score on the last query lies between the quantiles (`torch.quantile`, linear) of two
  percentiles of all heads; the head score is -mean of the non-visual scores ("nonvisual_mean": LLaVA, Qwen) or
  -(mean left of the image + mean right of it) / 2 ("left_right_mean": OneVision);
- layers: "all" (every layer but layer 0) or a list; `a` is drawn once per sample at prefill and reused at every
  decode step, where the new last row is replaced again;
- `precision="model"` mixes in the scores' own dtype as the official eager code does (in bfloat16, lam = 0.3 is
  0.30078125); "float32" mixes in float32. The rescaling is computed in the official order, (a * |m|) / (2 |ā|),
  and OneVision's head score adds its two means in the scores' dtype, as the official code does.

Two attention arithmetics (`SAPConfig.arithmetic`, and `attention_arithmetic` for a run without SAP):
- "sdpa" (the controlled protocol): SDPA for every row, the SAP rows recomputed as above; mean(S_full) exact.
- "official_eager" (the official protocol): every decoder layer runs the official eager arithmetic in the model's
  dtype, vanilla layers included: S = (q k^T) * scaling in the model's dtype, SAP's replacement on S, then + mask,
  softmax in float32 cast back to the model's dtype, times V; mean(S_full) is the mean of that S (rounded once to
  the model's dtype, as torch's mean does); the vision tower runs eager too, as the official scripts load the model.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from lostattn.sap.distributions import MODES, make_guidance

SAP_ATTN = "lostattn_sap"
QUERY_SCOPES = ("last", "text")
HEAD_SCORES = ("nonvisual_mean", "left_right_mean")
HEAD_SCOPES = ("sample", "batch")
PRECISIONS = ("float32", "model")
VIS_LAYERS = ("feature", "last")
COMPLEXITY_SOURCES = ("processed", "raw_resized")
ARITHMETICS = ("sdpa", "official_eager")
OFFICIAL_ATTN = "lostattn_official_eager"


@dataclass(frozen=True)
class SAPConfig:
    """SAP parameters. The defaults are the controlled protocol (full replacement, all layers but 0, all heads, last
    query only, rescaled guidance, seed 42); `lostattn.inference.protocols` builds the official per-family presets."""

    mode: str = "gaussian_noise"
    lam: float = 1.0
    layers: str | tuple[int, ...] = "all"
    head_percentile: tuple[float, float] = (0.0, 1.0)
    queries: str = "last"
    seed: int = 42
    rescale: bool = True
    head_score: str = "nonvisual_mean"
    # "sample": one head choice per sample. The official code averages the head score over its batch, and its scripts
    # run one sample per batch, so "sample" is what produced its results; "batch" reproduces the average for batched
    # runs, at the price of a record depending on the samples it was batched with.
    head_scope: str = "sample"
    precision: str = "float32"
    vis_layer: str = "feature"  # vis_enc_attn: the vision layer the decoder reads ("feature") or the last ("last")
    complexity_source: str = "processed"  # complexity: the pixels the tower sees, or the raw image resized
    arithmetic: str = "sdpa"  # "sdpa" (controlled) or "official_eager" (the official scripts' eager attention)
    # Testing hook: recompute the replaced rows even when lam == 0 (otherwise lam == 0 is the vanilla SDPA path).
    force_recompute: bool = field(default=False, repr=False)

    def __post_init__(self):
        for name, allowed in (("mode", MODES), ("queries", QUERY_SCOPES), ("head_score", HEAD_SCORES),
                              ("head_scope", HEAD_SCOPES), ("precision", PRECISIONS), ("vis_layer", VIS_LAYERS),
                              ("complexity_source", COMPLEXITY_SOURCES), ("arithmetic", ARITHMETICS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"SAP {name} {getattr(self, name)!r} is not one of {allowed}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"SAP lam must lie in [0, 1], got {self.lam}")
        lo, hi = self.head_percentile
        if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
            raise ValueError(f"head_percentile {self.head_percentile} must be two numbers in [0, 1]")
        if lo > hi:
            raise ValueError(f"head window {lo}-{hi} is inverted: give the lower percentile first "
                             f"(e.g. --head-min {hi} --head-max {lo})")
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
        """A file-name tag: the main settings, readable, and a hash of all of them."""
        layers = self.layers if self.layers == "all" else "-".join(map(str, self.layers))
        lo, hi = self.head_percentile
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return f"sap-{self.mode}-lam{self.lam:g}-L{layers}-h{lo:g}_{hi:g}-q{self.queries}-s{self.seed}-{digest}"


def parse_layers(text: str | None) -> str | tuple[int, ...] | None:
    """SAP layers as written on a command line or in a profile: None, "all", or comma-separated layer indices
    ("18,19,20") -> None, "all" or a tuple of ints; a ValueError naming the text otherwise."""
    if text is None or text == "all":
        return text
    try:
        return tuple(int(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise ValueError(f"layers take 'all' or comma-separated integers, got {text!r}") from None


def empty_head_window(n_heads: int, window: tuple[float, float]) -> bool:
    """True when the percentile window can select no head of `n_heads` with distinct scores: both quantiles fall
    strictly between the same two sorted scores (linear interpolation), e.g. 0.1-0.11 for 14, 28 or 64 heads (the
    official OneVision script's default, which therefore changes nothing)."""
    lo, hi = (p * (n_heads - 1) for p in window)
    return math.floor(hi) < math.ceil(lo)


# ---- the score replacement ------------------------------------------------------------------------------------
def head_scores(last: torch.Tensor, vis: torch.Tensor, valid: torch.Tensor, rule: str) -> torch.Tensor:
    """(B, H) head scores from the last query's pre-mask scores `last` (B, H, K), in float32 after computing them in
    the scores' dtype as the official code does (each mean rounded once to that dtype, as torch's mean of bfloat16
    scores is; the two OneVision means added and halved in that dtype).

    "nonvisual_mean": -mean over the valid non-visual keys; "left_right_mean": -(mean over the valid keys before the
    image + mean over the keys after it) / 2 (NaN, and so no head, when one side is empty, as in the official code).
    """
    pos = torch.arange(vis.shape[1], device=vis.device)[None]
    if rule == "nonvisual_mean":
        parts = [valid & ~vis]
    else:
        first = torch.where(vis.any(1), torch.where(vis, pos, vis.shape[1]).amin(1), vis.shape[1])
        lastv = torch.where(vis, pos, -1).amax(1)
        parts = [valid & ~vis & (pos < first[:, None]), valid & ~vis & (pos > lastv[:, None])]
    means = []
    for m in parts:
        n = m.sum(-1)[:, None].float()
        mean = (last.float() * m[:, None, :]).sum(-1) / n
        means.append(torch.where(n > 0, mean, torch.full_like(mean, float("nan"))).to(last.dtype))
    if len(means) == 1:
        return -means[0].float()
    return (-(means[0] + means[1]) / 2.0).float()


def mix_scores(scores: torch.Tensor, vis: torch.Tensor, valid: torch.Tensor, guide: torch.Tensor,
               mean_score: torch.Tensor, rowsel: torch.Tensor, cfg: SAPConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace pre-mask scores (B, H, R, K) of the selected rows, heads and visual columns, in the scores' dtype.

    vis, valid: (B, K) visual / non-padding keys; guide: (B, K) the distribution on visual keys (0 elsewhere);
    mean_score: (B,) mean of the sample's full score matrix; rowsel: (B, R) rows SAP may change (the last row R-1
    is the current last query, used for head selection). Returns (new scores, head selection (B, H)).
    """
    dt = scores.dtype
    hs = head_scores(scores[:, :, -1, :], vis, valid, cfg.head_score)
    if cfg.head_scope == "batch":
        hs = hs.mean(0, keepdim=True).expand_as(hs)
    q = torch.quantile(hs, torch.tensor(cfg.head_percentile, dtype=hs.dtype, device=hs.device), dim=-1,
                       keepdim=True)  # (2, B, 1)
    heads = (hs >= q[0]) & (hs <= q[1])
    a = guide.to(dt)
    if cfg.rescale:  # the official order: (a * |m|) / (2 |mean(a)|), each step rounded to dt
        mean_a = ((a.float() * vis).sum(-1) / vis.sum(-1).clamp_min(1)).to(dt)
        a = (a * mean_score.to(dt).abs()[:, None]) / (2 * mean_a.abs()).clamp_min(torch.finfo(dt).tiny)[:, None]
    lam = torch.tensor(cfg.lam, dtype=dt, device=scores.device)
    keep = torch.zeros((), dtype=dt, device=scores.device) if cfg.lam >= 1.0 else 1 - lam
    mixed = keep * scores + lam * a[:, None, None, :]
    sel = heads[:, :, None, None] & rowsel[:, None, :, None] & vis[:, None, None, :]
    return torch.where(sel, mixed, scores), heads


class SAPState:
    """What the attention function needs during one `sap(...)` context: per-sample visual keys and guidance."""

    def __init__(self, cfg: SAPConfig, vis: torch.Tensor, valid: torch.Tensor, guide: torch.Tensor):
        self.cfg, self.vis, self.valid, self.guide = cfg, vis, valid, guide
        self.calls = 0
        self.heads: list[torch.Tensor] = []  # head selection of each call (B, H), kept for inspection when asked
        self.keep_heads = False

    @staticmethod
    def _fit(t: torch.Tensor, K: int, fill) -> torch.Tensor:
        """Extend a (B, L0) prompt-time tensor to K keys (decode steps add non-visual, valid keys)."""
        if t.shape[1] >= K:
            return t[:, :K]
        pad = torch.full((t.shape[0], K - t.shape[1]), fill, dtype=t.dtype, device=t.device)
        return torch.cat([t, pad], dim=1)

    def _setup(self, B: int, Q: int, K: int, dev):
        """The fitted masks and guide for K keys, and the query rows SAP may change: (vis, valid, guide, qvalid,
        rows (R,) indices into the Q query rows, rowsel (B, R))."""
        if B != self.vis.shape[0]:
            raise RuntimeError(f"SAP was set up for batch {self.vis.shape[0]} but attention ran on batch {B} "
                               "(beam search and other batch-expanding decoding are not supported)")
        self.calls += 1
        vis = self._fit(self.vis.to(dev), K, False)
        valid = self._fit(self.valid.to(dev), K, True)
        guide = self._fit(self.guide.to(dev), K, 0.0)
        qvalid = valid[:, K - Q:]
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
        return vis, valid, guide, qvalid, rows, rowsel

    def _mix(self, scores, vis, valid, guide, mean_score, rowsel):
        scores, heads = mix_scores(scores, vis, valid, guide, mean_score, rowsel, self.cfg)
        if self.keep_heads:
            self.heads.append(heads.cpu())
        return scores

    def apply(self, module, query, key, value, out, scaling):
        """SDPA arithmetic: `out` (SDPA's output) with the SAP rows recomputed from replaced scores."""
        B, H, Q, D = query.shape
        K = key.shape[2]
        dev = query.device
        vis, valid, guide, qvalid, rows, rowsel = self._setup(B, Q, K, dev)
        scaling = scaling if scaling is not None else D**-0.5
        dt = query.dtype if self.cfg.precision == "model" else torch.float32
        k = repeat_kv(key, H // key.shape[1]).to(dt)
        v = repeat_kv(value, H // value.shape[1]).to(dt)
        q = query.to(dt)
        qf, kf = query.float(), k.float()
        qbar = (qf * qvalid[:, None, :, None]).sum(2) / qvalid.sum(1).clamp_min(1)[:, None, None]
        kbar = (kf * valid[:, None, :, None]).sum(2) / valid.sum(1).clamp_min(1)[:, None, None]
        mean_score = scaling * (qbar * kbar).sum(-1).mean(-1)  # (B,)
        qpos = torch.arange(K - Q, K, device=dev)
        scores = torch.matmul(q[:, :, rows], k.transpose(-1, -2)) * scaling  # (B, H, R, K), as the official order
        scores = self._mix(scores, vis, valid, guide, mean_score, rowsel)
        allowed = (torch.arange(K, device=dev)[None, :] <= qpos[rows][:, None])[None, None] & valid[:, None, None, :]
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1, dtype=torch.float32).to(dt)
        o = torch.matmul(probs, v).transpose(1, 2).to(out.dtype)  # (B, R, H, D)
        out = out.clone()
        out[:, rows] = torch.where(rowsel[:, :, None, None], o, out[:, rows])
        return out

    def replace_official(self, scores: torch.Tensor) -> torch.Tensor:
        """Official eager arithmetic: the pre-mask scores S (B, H, Q, K) in the model's dtype with the SAP rows
        replaced; mean(S_full) is each sample's mean of S over its valid queries and keys, rounded once to the
        model's dtype (torch's mean of a bfloat16 tensor), as the official `attn_scores.mean()` on one sample."""
        B, H, Q, K = scores.shape
        vis, valid, guide, qvalid, rows, rowsel = self._setup(B, Q, K, scores.device)
        means = []
        for b in range(B):
            s = scores[b]
            if not bool(valid[b].all()):  # padding never counts (the official scripts run one sample, unpadded)
                s = s[:, qvalid[b]][:, :, valid[b]]
            means.append(s.mean(dtype=torch.promote_types(s.dtype, torch.float32)))
        mean_score = torch.stack(means).to(scores.dtype)
        scores[:, :, rows] = self._mix(scores[:, :, rows], vis, valid, guide, mean_score, rowsel)
        return scores


def sap_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """SDPA for every module; the SAP rows recomputed for decoder attention modules inside a `sap(...)` context."""
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)
    state: SAPState | None = getattr(module, "_lostattn_sap", None)
    if _inactive(state):
        return out, None
    return state.apply(module, query, key, value, out, scaling), None


def _inactive(state) -> bool:
    return state is None or (state.cfg.lam == 0.0 and not state.cfg.force_recompute)


def official_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                               **kwargs):
    """The official eager attention in the inputs' dtype (transformers' eager_attention_forward, the official
    modeling files' order), with the SAP replacement applied to the pre-mask scores inside a `sap(...)` context."""
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    k = repeat_kv(key, query.shape[1] // key.shape[1])
    v = repeat_kv(value, query.shape[1] // value.shape[1])
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    state: SAPState | None = getattr(module, "_lostattn_sap", None)
    if not _inactive(state):  # lam 0 leaves (1 - 0) * S + 0 * a' = S, bit for bit
        scores = state.replace_official(scores)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : k.shape[-2]]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool \
            else scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, v).transpose(1, 2).contiguous(), None


AttentionInterface.register(SAP_ATTN, sap_attention_forward)
AttentionMaskInterface.register(SAP_ATTN, sdpa_mask)
AttentionInterface.register(OFFICIAL_ATTN, official_attention_forward)
AttentionMaskInterface.register(OFFICIAL_ATTN, eager_mask)


@contextmanager
def attention_arithmetic(lm, arithmetic: str = "sdpa"):
    """Run `lm` under an attention arithmetic: "sdpa" changes nothing; "official_eager" runs every decoder layer
    with `official_attention_forward` and the vision tower with its own eager attention, as the official scripts
    load the model (`attn_implementation="eager"`)."""
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"attention arithmetic {arithmetic!r} is not one of {ARITHMETICS}")
    if arithmetic == "sdpa":
        yield
        return
    configs = [(lm.adapter.text_config, OFFICIAL_ATTN), (lm.adapter.layout.tower(lm).config, "eager")]
    old = [c._attn_implementation for c, _ in configs]
    for c, name in configs:
        c._attn_implementation = name
    try:
        yield
    finally:
        for (c, _), o in zip(configs, old):
            c._attn_implementation = o

_WARNED: set = set()


def warn_if_no_head(cfg: SAPConfig, n_heads: int, family: str) -> bool:
    """Say loudly (once per setting) when the head window selects no head: SAP then changes nothing."""
    if not empty_head_window(n_heads, cfg.head_percentile):
        return False
    key = (cfg.head_percentile, n_heads)
    if key not in _WARNED:
        _WARNED.add(key)
        lo, hi = cfg.head_percentile
        warnings.warn(f"SAP head window {lo:g}-{hi:g} selects no head of the {n_heads} heads of this {family} model "
                      f"(torch.quantile interpolates both bounds between the same two heads): SAP changes nothing "
                      f"and every score equals the vanilla model's. This is the official OneVision script's default; "
                      f"pass another window (--head-min/--head-max) to replace attention.", stacklevel=3)
    return True


@contextmanager
def sap(lm, cfg: SAPConfig, inputs, keys: list[str] | None = None, images=None):
    """Run the model with SAP for one batch of processor `inputs`; `keys` (one per sample) seed the random modes so
    that a sample gets the same draw whatever batch it is in; `images` (the raw PIL images) are needed only by
    `complexity_source="raw_resized"`."""
    ids = inputs["input_ids"]
    keys = keys or [str(i) for i in range(ids.shape[0])]
    vis = lm.adapter.visual_mask(ids)
    valid = inputs.get("attention_mask", torch.ones_like(ids)).bool()
    warn_if_no_head(cfg, lm.adapter.text_config.num_attention_heads, lm.adapter.family)
    tc = lm.adapter.text_config
    chosen = cfg.layer_indices(lm.adapter.num_layers)
    with attention_arithmetic(lm, cfg.arithmetic):  # vis_enc_attn reads the tower under the same arithmetic
        guide = torch.zeros(ids.shape, dtype=torch.float32)
        for b, g in enumerate(make_guidance(cfg, lm, inputs, keys, images)):
            guide[b, vis[b].cpu()] = g
        state = SAPState(cfg, vis, valid, guide.to(ids.device))
        old = tc._attn_implementation
        if cfg.arithmetic == "sdpa":
            tc._attn_implementation = SAP_ATTN
        for i in chosen:
            lm.adapter.attn(i)._lostattn_sap = state
        try:
            yield state
        finally:
            tc._attn_implementation = old
            for i in chosen:
                del lm.adapter.attn(i)._lostattn_sap
