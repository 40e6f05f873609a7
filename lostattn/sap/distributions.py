"""The predefined distributions SAP puts in place of learned attention over the visual tokens, one per sample.

- `gaussian_noise`: a Dirichlet(1, ..., 1) draw over the sample's visual tokens (the official `Apipe_prob`: uniform on
  the simplex); `uniform`: 1/n each; `key`: the softmax of N(0, 1) draws (the official `key` mode).
- `vis_enc_attn`: the attention each visual token's patches receive in a vision-tower layer (mean over heads and
  patch queries; Qwen: max over each 2x2 merge group, window order undone), then softmax (official: the last layer).
- `complexity`: per region, mean |finite-difference gradient| + variance of the grey image (`patch_complexity`),
  min-max scaled over the sample's tokens, then softmax.

Every random draw is seeded by (seed, sample id), so a sample gets the same values in any batch and on any rerun.
How image regions map to visual tokens is each family's layout (`lostattn.models.layouts`): for LLaVA-NeXT and
OneVision the base image and every high-resolution tile are scored patch by patch and packed exactly as the model
packs its features; the image-newline tokens, which hold no patch, get the mean of the sample's other scores (our
choice: neither favoured nor avoided).
"""
from __future__ import annotations

import hashlib

import torch

from lostattn.models.layouts import resized_raw_patches

MODES = ("gaussian_noise", "uniform", "key", "vis_enc_attn", "complexity")


def sample_generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def dirichlet_ones(n: int, gen: torch.Generator) -> torch.Tensor:
    """A draw from Dirichlet(1, ..., 1) (uniform on the simplex): normalised Exp(1) variables."""
    e = -torch.log(torch.rand(n, generator=gen, dtype=torch.float64).clamp_min(1e-300))
    return (e / e.sum()).float()


def patch_complexity(patches: torch.Tensor) -> torch.Tensor:
    """Raw complexity of each RGB patch (P, 3, h, w) in [0, 1]: mean |horizontal difference| + mean |vertical
    difference| + variance of the grey values (0.299 R + 0.587 G + 0.114 B), as the official
    `patch_complexity_grad_var` before its min-max scaling."""
    g = 0.299 * patches[:, 0] + 0.587 * patches[:, 1] + 0.114 * patches[:, 2]
    gx = (g[:, :, 1:] - g[:, :, :-1]).abs().mean(dim=(1, 2))
    gy = (g[:, 1:, :] - g[:, :-1, :]).abs().mean(dim=(1, 2))
    return gx + gy + g.var(dim=(1, 2), unbiased=False)


def min_max(s: torch.Tensor) -> torch.Tensor:
    return (s - s.min()) / (s.max() - s.min() + 1e-8)


def _fill_newlines(s: torch.Tensor) -> torch.Tensor:
    nan = torch.isnan(s)
    return torch.where(nan, s[~nan].mean(), s) if nan.any() else s


def _softmax(s: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """softmax(s - max s) in `dtype` (as the official Apipe_prob, in its input's dtype), returned in float32."""
    s = s.to(dtype)
    return torch.softmax(s - s.max(), dim=0).float()


def vision_layer_index(lm, which: str) -> int:
    """The vision layer read by vis_enc_attn: "last" (the official code) or "feature" (the one whose output the decoder
    receives, `vision_feature_layer`; the last block for Qwen)."""
    layout = lm.adapter.layout
    if which == "last":
        return len(layout.vision_layers(lm)) - 1
    if which == "feature":
        return layout.feature_layer(lm)
    raise ValueError(f"vision layer {which!r} is not 'last' or 'feature'")


def token_scores(cfg, lm, inputs, images=None) -> list[torch.Tensor]:
    """Per sample, one raw score per visual token for the image-based modes (before the softmax)."""
    layout = lm.adapter.layout
    if cfg.mode == "vis_enc_attn":
        maps = layout.received_attention(lm, inputs, vision_layer_index(lm, cfg.vis_layer))
        return [_fill_newlines(s) for s in layout.pack(lm, inputs, maps)]
    if cfg.complexity_source == "raw_resized":
        shapes = layout.raw_resize_shapes(lm, inputs)
        if shapes is None or images is None:
            raise ValueError("complexity_source='raw_resized' (the official LLaVA-1.5 and Qwen scripts) needs the raw "
                             "images and a one-grid or merged layout (llava, qwen2_vl, qwen2_5_vl); use 'processed'")
        maps = [patch_complexity(resized_raw_patches(im, h, w, p))[None] for im, (h, w, p) in zip(images, shapes)]
    else:
        maps = [torch.stack([patch_complexity(t) for t in tiles]) for tiles in layout.patch_pixels(lm, inputs)]
    return [min_max(_fill_newlines(s)) for s in layout.pack(lm, inputs, maps)]


def make_guidance(cfg, lm, inputs, keys: list[str], images=None) -> list[torch.Tensor]:
    """The predefined distribution over each sample's visual tokens (one 1-D float32 tensor per sample, summing to
    1), in the order of the visual tokens in the prompt."""
    n_vis = lm.adapter.visual_mask(inputs["input_ids"]).sum(dim=1).tolist()
    if cfg.mode == "gaussian_noise":
        return [dirichlet_ones(n, sample_generator(cfg.seed, k)) for n, k in zip(n_vis, keys)]
    if cfg.mode == "uniform":
        return [torch.full((n,), 1.0 / n) for n in n_vis]
    if cfg.mode == "key":
        return [_softmax(torch.randn(n, generator=sample_generator(cfg.seed, k))) for n, k in zip(n_vis, keys)]
    scores = token_scores(cfg, lm, inputs, images)
    # the official code takes the softmax of the tower's attention in the model's dtype (complexity in float32)
    dtype = lm.model.dtype if cfg.mode == "vis_enc_attn" and cfg.arithmetic == "official_eager" else torch.float32
    out = []
    for s, n in zip(scores, n_vis):
        if s.numel() != n:
            raise RuntimeError(f"{cfg.mode}: {s.numel()} region scores for {n} visual tokens "
                               f"({lm.adapter.family}, layout {lm.adapter.layout.kind})")
        out.append(_softmax(s, dtype))
    return out
