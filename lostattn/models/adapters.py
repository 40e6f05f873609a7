"""Per-family knowledge: where a model keeps its decoder layers, their attention and MLP modules, its rotary
embedding, its image placeholder token, how its images become visual tokens, and what the official scripts of the
paper do with it.

Every supported family (as of transformers 5) keeps a pre-norm residual decoder at `model.model.language_model`
whose layers have `self_attn`, `mlp`, `input_layernorm` and `post_attention_layernorm`, so one adapter class serves
them all; the table below records what differs.

The visual tokens of a prompt are its image-placeholder positions (`visual_mask`), which are exactly where the model
writes image features: the patches, and for LLaVA-NeXT / OneVision also the image-newline token that closes each
row of tiles. Qwen's `<|vision_start|>` and `<|vision_end|>` are ordinary text tokens around them; only the
`<|image_pad|>` positions are visual (tests/test_families.py checks this against the model's own embeddings).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class OfficialRecipe:
    """What the paper's official scripts (`Lrbomchz/vlms_lost_in_attn`: main_SAP/generation_response_vmc_*_SAP.py and
    SAP_models/my_modeling_*.py) do for a family. Families without a script of their own follow the closest one,
    named in `follows`."""

    follows: str  # the official script this family's recipe is read from
    rescale: bool  # a' = a |mean S| / (2 |mean a|) (LLaVA, OneVision) or the raw distribution (Qwen2.5-VL)
    head_score: str  # "nonvisual_mean" (LLaVA, Qwen) or "left_right_mean" (OneVision)
    head_window: tuple[float, float]  # the script's default head percentiles (the README commands pass none)
    layers: tuple[int, int] | None  # the README's layer window (inclusive) for a model of `depth` layers; None: all but 0
    depth: int
    content_order: tuple[str, ...]  # order of the image and the text in the user turn, as the script writes it
    literal_prompt: str | None  # a prompt typed out by the script instead of the chat template ({text})
    image_size: tuple[int, int] | None  # the script resizes every image to this (width, height) first
    do_sample: bool  # LLaVA and OneVision sample with the checkpoint's generation config; Qwen is greedy


_LLAVA_RECIPE = OfficialRecipe("generation_response_vmc_llava_SAP.py", True, "nonvisual_mean", (0.3, 0.6), (18, 23), 32,
                               ("image", "text"), "USER: <image>\n{text}\nASSISTANT:", None, True)
_QWEN_RECIPE = OfficialRecipe("generation_response_vmc_qwen_SAP.py", False, "nonvisual_mean", (0.3, 0.9), None, 28,
                              ("image", "text"), None, None, False)
OFFICIAL_RECIPES = {
    "llava": _LLAVA_RECIPE,
    # No official script for LLaVA-NeXT: its LLaMA/Mistral decoder is patched like LLaVA-1.5's (my_modeling_llama).
    "llava_next": replace(_LLAVA_RECIPE, follows="generation_response_vmc_llava_SAP.py (no LLaVA-NeXT script)",
                          literal_prompt=None),
    # The script's head window 0.1-0.11 selects no head for 14, 28 or 64 heads (see sap.empty_head_window).
    "llava_onevision": OfficialRecipe("generation_response_vmc_onevision_SAP.py", True, "left_right_mean",
                                      (0.1, 0.11), (21, 27), 28, ("text", "image"), None, (672, 672), True),
    "qwen2_5_vl": _QWEN_RECIPE,
    "qwen2_vl": replace(_QWEN_RECIPE, follows="generation_response_vmc_qwen_SAP.py (no Qwen2-VL script)"),
}


@dataclass(frozen=True)
class FamilyFacts:
    model_type: str  # config.model_type
    hf_class: str  # the transformers class that loads it
    processor_class: str  # its processor (loaded for images only: see loader.image_only_processor_class)
    description: str
    layout: str  # how images become visual tokens: "grid", "anyres" or "merged" (lostattn.models.layouts)


MODEL_FAMILIES: dict[str, FamilyFacts] = {
    s.model_type: s
    for s in (
        FamilyFacts("llava", "LlavaForConditionalGeneration", "LlavaProcessor", "LLaVA-1.5 (llava-1.5-7b-hf, ...) and the embedded model", "grid"),
        FamilyFacts("llava_next", "LlavaNextForConditionalGeneration", "LlavaNextProcessor", "LLaVA-NeXT (llava-v1.6-*-hf)", "anyres"),
        FamilyFacts("llava_onevision", "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor", "LLaVA-OneVision (llava-onevision-qwen2-*-hf)", "anyres"),
        FamilyFacts("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2-VL (Qwen2-VL-*-Instruct)", "merged"),
        FamilyFacts("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2.5-VL (Qwen2.5-VL-*-Instruct and fine-tunes)", "merged"),
    )
}


def supported_text() -> str:
    return "; ".join(f"{k}: {v.description}" for k, v in MODEL_FAMILIES.items())


class Adapter:
    """Uniform access to a loaded model's decoder, whatever its family."""

    def __init__(self, model: nn.Module):
        mt = model.config.model_type
        if mt not in MODEL_FAMILIES:
            raise ValueError(f"unsupported architecture {mt!r}; supported model types: {supported_text()}")
        self.spec = MODEL_FAMILIES[mt]
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
    def layout(self):
        """How this family's images become visual tokens (lostattn.models.layouts)."""
        from lostattn.models.layouts import TOKEN_LAYOUTS

        return TOKEN_LAYOUTS[self.spec.layout]

    @property
    def official(self) -> OfficialRecipe:
        return OFFICIAL_RECIPES[self.family]

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
