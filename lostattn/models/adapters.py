"""Per-family knowledge: where a model keeps its decoder layers, their attention and MLP modules, its rotary
embedding and its image placeholder token.

Every supported family (as of transformers 5) keeps a pre-norm residual decoder at `model.model.language_model`
whose layers have `self_attn`, `mlp`, `input_layernorm` and `post_attention_layernorm`, so one adapter class serves
them all; the table below records what differs (the class to load and how images become tokens).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FamilySpec:
    model_type: str  # config.model_type
    hf_class: str  # the transformers class that loads it
    processor_class: str  # its processor (loaded for images only: see loader.image_only_processor_class)
    description: str
    grid_images: bool  # one fixed patch grid per image (LLaVA-1.5 style); False for any-resolution tiling


FAMILIES: dict[str, FamilySpec] = {
    s.model_type: s
    for s in (
        FamilySpec("llava", "LlavaForConditionalGeneration", "LlavaProcessor", "LLaVA-1.5 (llava-1.5-7b-hf, ...) and the embedded model", True),
        FamilySpec("llava_next", "LlavaNextForConditionalGeneration", "LlavaNextProcessor", "LLaVA-NeXT (llava-v1.6-*-hf)", False),
        FamilySpec("llava_onevision", "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor", "LLaVA-OneVision (llava-onevision-qwen2-*-hf)", False),
        FamilySpec("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2-VL (Qwen2-VL-*-Instruct)", False),
        FamilySpec("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2.5-VL (Qwen2.5-VL-*-Instruct and fine-tunes)", False),
    )
}


def supported_text() -> str:
    return "; ".join(f"{k}: {v.description}" for k, v in FAMILIES.items())


class Adapter:
    """Uniform access to a loaded model's decoder, whatever its family."""

    def __init__(self, model: nn.Module):
        mt = model.config.model_type
        if mt not in FAMILIES:
            raise ValueError(f"unsupported architecture {mt!r}; supported model types: {supported_text()}")
        self.spec = FAMILIES[mt]
        self.model = model
        self.language_model = model.model.language_model
        layers = self.language_model.layers
        for i, layer in enumerate(layers):
            for name in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"):
                if not hasattr(layer, name):
                    raise ValueError(f"{mt} decoder layer {i} has no `{name}`: not a pre-norm residual decoder layer")
        for i, layer in enumerate(layers):  # the attention function reads its layer index from the module
            layer.self_attn.layer_idx = i

    @property
    def family(self) -> str:
        return self.spec.model_type

    @property
    def text_config(self):
        return self.language_model.config

    @property
    def layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def rotary(self) -> nn.Module:
        return self.language_model.rotary_emb

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        tid = getattr(cfg, "image_token_id", None)
        if tid is None:
            tid = getattr(cfg, "image_token_index")
        return int(tid)

    def visual_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """True at image-placeholder positions (the decoder's visual tokens)."""
        return input_ids == self.image_token_id

    def attn(self, i: int) -> nn.Module:
        return self.layers[i].self_attn

    def mlp(self, i: int) -> nn.Module:
        return self.layers[i].mlp
