"""Capturing the residual stream of a decoder: per layer, the input X, the attention update dX_attn and the FFN
update dX_ffn, for every sample and token.

Hooks read module outputs only (attention output after `o_proj`, MLP output), so they neither change the model's
outputs nor need eager attention. For a pre-norm decoder, the next layer's input is X + dX_attn + dX_ffn; the tests
check it. With `on_layer`, each layer's tensors are handed over as soon as the layer has run and dropped after, so
statistics stream without holding a large model's activations; `keep=True` stores them (small models, tests).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

SCOPES = ("all", "visual", "text")


@dataclass
class LayerCapture:
    layer: int
    x: torch.Tensor  # (B, S, H) layer input
    d_attn: torch.Tensor  # (B, S, H) attention update (added to x)
    d_ffn: torch.Tensor  # (B, S, H) FFN update (added to x + d_attn)
    x_out: torch.Tensor  # (B, S, H) layer output


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class ResidualCapture:
    """Context manager: `with ResidualCapture(lm, on_layer=fn) as cap: lm.model(**inputs)`."""

    def __init__(self, lm, layers: list[int] | None = None, on_layer: Callable[[LayerCapture], None] | None = None,
                 keep: bool = False):
        self.adapter = lm.adapter
        n = self.adapter.num_layers
        self.layers = list(range(n)) if layers is None else sorted(set(layers))
        bad = [i for i in self.layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"layers {bad} are outside the model's {n} decoder layers")
        self.on_layer = on_layer
        self.keep = keep
        self.records: dict[int, LayerCapture] = {}
        self._handles: list = []
        self._partial: dict[int, dict] = {}

    def __enter__(self):
        for i in self.layers:
            layer = self.adapter.layers[i]
            self._handles += [
                layer.register_forward_pre_hook(self._pre(i), with_kwargs=True),
                layer.self_attn.register_forward_hook(self._store(i, "d_attn")),
                layer.mlp.register_forward_hook(self._store(i, "d_ffn")),
                layer.register_forward_hook(self._post(i)),
            ]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._partial.clear()
        return False

    def _pre(self, i):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self._partial[i] = {"x": x.detach()}
        return hook

    def _store(self, i, name):
        def hook(module, args, out):
            if i in self._partial:  # a call outside the layer's own forward is not part of the stream
                self._partial[i][name] = _first(out).detach()
        return hook

    def _post(self, i):
        def hook(module, args, out):
            p = self._partial.pop(i)
            rec = LayerCapture(i, p["x"], p["d_attn"], p["d_ffn"], _first(out).detach())
            if self.keep:
                self.records[i] = rec
            if self.on_layer is not None:
                self.on_layer(rec)
        return hook


def token_masks(lm, inputs) -> dict[str, torch.Tensor]:
    """Boolean (B, S) masks of the prompt's tokens per scope; padding is in none of them."""
    ids = inputs["input_ids"]
    valid = inputs.get("attention_mask", torch.ones_like(ids)).bool()
    vis = lm.adapter.visual_mask(ids) & valid
    return {"all": valid, "visual": vis, "text": valid & ~vis}


@contextmanager
def no_rope(lm):
    """Run the decoder without rotary position embeddings (cos = 1, sin = 0 everywhere), for the eps_RoPE baseline."""
    def hook(module, args, out):
        cos, sin = out
        return torch.ones_like(cos), torch.zeros_like(sin)

    h = lm.adapter.rotary.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()
