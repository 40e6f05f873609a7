"""The paper's noise controls, as reversible context managers.

- `noise_delta`: every chosen layer's attention update dX_attn is replaced by Gaussian noise of matched norm
  (per token row by default, or per sample over all tokens).
- `noise_qkv`: the Q, K and V projection weights (and biases) of the chosen layers are replaced by Gaussian noise
  with each tensor's own mean and standard deviation; the originals are restored on exit.

Both are seeded; for a fixed seed and fixed batches the noise is the same on every run.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

MATCH = ("row", "sample")


def _layers(adapter, layers):
    return list(range(adapter.num_layers)) if layers is None else list(layers)


@contextmanager
def noise_delta(lm, layers: list[int] | None = None, seed: int = 0, match: str = "row"):
    if match not in MATCH:
        raise ValueError(f"match {match!r} is not one of {MATCH}")
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def hook(module, args, out):
        d = out[0] if isinstance(out, tuple) else out
        noise = torch.randn(d.shape, generator=gen, dtype=torch.float32).to(d.device)
        df = d.float()
        if match == "row":
            scale = df.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        else:
            scale = df.flatten(1).norm(dim=1).view(-1, 1, 1) / noise.flatten(1).norm(dim=1).view(-1, 1, 1)
        noise = (noise * scale).to(d.dtype)
        return (noise, *out[1:]) if isinstance(out, tuple) else noise

    handles = [lm.adapter.attn(i).register_forward_hook(hook) for i in _layers(lm.adapter, layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def noise_qkv(lm, layers: list[int] | None = None, seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for i in _layers(lm.adapter, layers):
            attn = lm.adapter.attn(i)
            for name in ("q_proj", "k_proj", "v_proj"):
                for p in getattr(attn, name).parameters():
                    saved.append((p, p.detach().clone()))
                    pf = p.detach().float()
                    std = pf.std() if p.numel() > 1 else torch.tensor(0.0)
                    noise = torch.randn(p.shape, generator=gen) * std.cpu() + pf.mean().cpu()
                    p.copy_(noise.to(p.device, p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, orig in saved:
                p.copy_(orig)
