"""Capturing the residual stream of a decoder: per layer the paper's hook points X_in, ΔX_attn, X_mid, ΔX_ffn and
X_out (`Adapter.hook_points()`), for every sample and token.

Hooks read module outputs only (the modules the adapter names: the attention output after `o_proj` and the MLP
output, or Gemma 3's normalised versions of them, which are what reaches the residual), so they neither change the
model's outputs nor need eager attention. X_out = X_in + ΔX_attn + ΔX_ffn; the tests check it on every family. An
update a family adds between layers, outside the layer modules (Qwen3-VL's deepstack visual features), is a hook point
of its own (`LayerCapture.between`): X_in of layer i+1 = X_out of layer i + that update. With `on_layer`, each layer's tensors are handed over as soon as the layer has run and dropped after, so
statistics stream without holding a large model's activations; `keep=True` stores them (small models, tests).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

SCOPES = ("all", "visual", "text")


@dataclass
class LayerCapture:
    """One decoder layer's hook points, each (B, S, H)."""

    layer: int
    x_in: torch.Tensor  # X_in: the layer's input
    dx_attn: torch.Tensor  # ΔX_attn: what the attention adds to X_in
    dx_ffn: torch.Tensor  # ΔX_ffn: what the FFN adds to X_mid
    x_out: torch.Tensor  # X_out: the layer's output
    # updates the decoder adds after this layer, outside it, by hook-point name (Qwen3-VL: ΔX_deepstack)
    between: dict = field(default_factory=dict)

    @property
    def x_mid(self) -> torch.Tensor:
        """X_mid = X_in + ΔX_attn, the model's own sum bit for bit."""
        return self.x_in + self.dx_attn

    def hook_point(self, name: str) -> torch.Tensor:
        """The tensor of hook point `name` (X_in, ΔX_attn, X_mid, ΔX_ffn, X_out, or a family's own)."""
        fields = {"X_in": "x_in", "ΔX_attn": "dx_attn", "X_mid": "x_mid", "ΔX_ffn": "dx_ffn", "X_out": "x_out"}
        return getattr(self, fields[name]) if name in fields else self.between[name]

    # the names used before the hook points had the paper's: kept for existing callers
    x = property(lambda self: self.x_in)
    d_attn = property(lambda self: self.dx_attn)
    d_ffn = property(lambda self: self.dx_ffn)


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
        self._last: LayerCapture | None = None  # the layer that ran last, for a between-layers update
        self._wrapped: list[str] = []

    def __enter__(self):
        for i in self.layers:
            layer = self.adapter.layers[i]
            self._handles += [
                layer.register_forward_pre_hook(self._pre(i), with_kwargs=True),
                self.adapter.attn_update(i).register_forward_hook(self._store(i, "dx_attn")),
                self.adapter.ffn_update(i).register_forward_hook(self._store(i, "dx_ffn")),
                layer.register_forward_hook(self._post(i)),
            ]
        decoder = self.adapter.language_model
        self._wrapped = []
        for name, method in self.adapter.spec.between_layers.items():
            setattr(decoder, method, self._between(name, getattr(decoder, method)))
            self._wrapped.append(method)
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        for method in self._wrapped:  # the instance attribute shadowed the class's method: drop it
            delattr(self.adapter.language_model, method)
        self._wrapped = []
        self._handles.clear()
        self._partial.clear()
        return False

    def _pre(self, i):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self._partial[i] = {"x_in": x.detach()}
        return hook

    def _between(self, name, add):
        """Wrap the decoder's method that adds a between-layers update: record output - input for the layer that
        ran last (its LayerCapture is completed, and handed over, after its own post hook)."""
        def wrapped(hidden_states, *args, **kwargs):
            out = add(hidden_states, *args, **kwargs)
            rec = self._last
            if rec is not None:
                rec.between[name] = (out - hidden_states).detach()
            return out
        return wrapped

    def _store(self, i, name):
        def hook(module, args, out):
            if i in self._partial:  # a call outside the layer's own forward is not part of the stream
                self._partial[i][name] = _first(out).detach()
        return hook

    def _post(self, i):
        def hook(module, args, out):
            p = self._partial.pop(i)
            rec = LayerCapture(i, p["x_in"], p["dx_attn"], p["dx_ffn"], _first(out).detach())
            self._last = rec
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
