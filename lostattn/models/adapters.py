"""Per-family knowledge: where a model keeps its decoder layers, their attention and MLP modules, its rotary
embedding, its image placeholder token, how its images become visual tokens, and what the official scripts of the
paper do with it.

Every supported family (as of transformers 5) keeps a residual decoder whose layers have `self_attn` and `mlp`, so
one adapter class serves them all; `MODEL_FAMILIES` records what differs: where the decoder sits (SmolVLM's at
`model.text_model`), which modules' outputs are the updates that reach the residual stream (Gemma 3 normalises the
attention and MLP outputs before adding them), what a family adds between layers (Qwen3-VL's deepstack visual
features), where its vision tower keeps its layers, how its images become visual tokens.

The visual tokens of a prompt are its image-placeholder positions (`visual_mask`), which are exactly where the model
writes image features: the patches, and for LLaVA-NeXT / OneVision also the image-newline token that closes each
row of tiles. Markers around them are ordinary text tokens (Qwen's `<|vision_start|>` / `<|vision_end|>`, Gemma 3's
`<start_of_image>` / `<end_of_image>`, InternVL's `<img>` / `</img>`, SmolVLM's tile and global-image markers,
Mistral 3's `[IMG_BREAK]` / `[IMG_END]`); tests/test_families.py checks the span against the model's own embeddings
for every family.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    # complexity's input: "raw_resized" (the LLaVA-1.5 and Qwen2.5-VL scripts score the raw image resized to the
    # processor's size)
    # or "processed" (the pixels the vision tower sees, region by region as the family's layout maps them)
    complexity_source: str = "processed"


_LLAVA_RECIPE = OfficialRecipe("generation_response_vmc_llava_SAP.py", True, "nonvisual_mean", (0.3, 0.6), (18, 23), 32,
                               ("image", "text"), "USER: <image>\n{text}\nASSISTANT:", None, True, "raw_resized")
# Families without a script follow the closest one: a LLaMA / Mistral / Gemma decoder the LLaVA script (its
# decoder patch, my_modeling_llama, is what they share), a Qwen decoder the Qwen script; prompts through the
# checkpoint's own chat template, complexity on the pixels the tower sees.
_LLAVA_LIKE = replace(_LLAVA_RECIPE, literal_prompt=None, complexity_source="processed")
_QWEN_RECIPE = OfficialRecipe("generation_response_vmc_qwen_SAP.py", False, "nonvisual_mean", (0.3, 0.9), None, 28,
                              ("image", "text"), None, None, False, "raw_resized")
OFFICIAL_RECIPES = {
    "llava": _LLAVA_RECIPE,
    # No official script for LLaVA-NeXT: its LLaMA/Mistral decoder is patched like LLaVA-1.5's (my_modeling_llama).
    "llava_next": replace(_LLAVA_LIKE, follows="generation_response_vmc_llava_SAP.py (no LLaVA-NeXT script)"),
    # The script's head window 0.1-0.11 selects no head for 14, 28 or 64 heads (see sap.empty_head_window).
    "llava_onevision": OfficialRecipe("generation_response_vmc_onevision_SAP.py", True, "left_right_mean",
                                      (0.1, 0.11), (21, 27), 28, ("text", "image"), None, (672, 672), True),
    "qwen2_5_vl": _QWEN_RECIPE,
    "qwen2_vl": replace(_QWEN_RECIPE, follows="generation_response_vmc_qwen_SAP.py (no Qwen2-VL script)"),
    # The families that follow a script they were not written for score complexity on the pixels their tower sees.
    "qwen3_vl": replace(_QWEN_RECIPE, follows="generation_response_vmc_qwen_SAP.py (no Qwen3-VL script)", depth=36,
                        complexity_source="processed"),
    "internvl": replace(_QWEN_RECIPE, follows="generation_response_vmc_qwen_SAP.py (no InternVL script; its decoder is "
                                              "Qwen2.5's)", complexity_source="processed"),
    "gemma3": replace(_LLAVA_LIKE, follows="generation_response_vmc_llava_SAP.py (no Gemma 3 script)"),
    "smolvlm": replace(_LLAVA_LIKE, follows="generation_response_vmc_llava_SAP.py (no SmolVLM script; a LLaMA "
                                            "decoder)"),
    "mistral3": replace(_LLAVA_LIKE, follows="generation_response_vmc_llava_SAP.py (no Mistral 3 script; a Mistral "
                                             "decoder, as LLaVA-NeXT's)"),
}


@dataclass(frozen=True)
class FamilyFacts:
    """Everything that differs between families, read by the one mechanism (capture, SAP, layouts, loader, tests).

    Module paths are attribute paths: `decoder` from the model's inner `model`, `vision_tower` likewise, and
    `vision_layers` / `vision_attn` from the tower and from one of its layers."""

    model_type: str  # config.model_type
    hf_class: str  # the transformers class that loads it
    processor_class: str  # its processor (loaded for images only: see loader.processor_class)
    image_processor_class: str  # the PIL image processor the processor holds (no torchvision)
    description: str
    layout: str  # how images become visual tokens (lostattn.models.layouts.TOKEN_LAYOUTS)
    decoder: str = "language_model"  # the decoder (layers, rotary_emb) under `model.model`
    # the modules whose outputs are the updates that reach the residual stream: X_mid = X_in + ΔX_attn and
    # X_out = X_mid + ΔX_ffn (Gemma 3 normalises both outputs before adding them)
    attn_update: str = "self_attn"
    ffn_update: str = "mlp"
    # updates the decoder adds between two layers, outside the layer modules: hook-point name -> the decoder's method
    # that adds it (X_in of layer i+1 = X_out of layer i + that update)
    between_layers: dict = field(default_factory=dict)
    vision_tower: str = "vision_tower"
    vision_layers: str = "encoder.layers"
    vision_attn: str = "self_attn"
    vision_drops_cls: bool = False  # the tower's first token is a CLS token the decoder never sees
    window_order: bool = False  # the tower orders merge groups by attention window (Qwen2.5-VL), undone by layouts
    # anyres families: the keyword that `pack_image_features` takes besides image sizes and the newline parameter
    pack_keyword: str | None = None
    # extra input tensors the model needs beside input_ids and pixel_values, kept by the processor's output
    needs_inputs: tuple[str, ...] = ()
    # the processor takes a batch's images as one list per prompt (Gemma 3, SmolVLM), not one flat list
    images_per_prompt: bool = False
    # Processor-level special tokens around the visual ones; they are text, never image features
    markers: str = ""


_LLAVA_TOWER = dict(vision_layers="encoder.layers", vision_attn="self_attn")
_QWEN_TOWER = dict(vision_tower="visual", vision_layers="blocks", vision_attn="attn",
                   needs_inputs=("image_grid_thw", "mm_token_type_ids"), markers="<|vision_start|>, <|vision_end|>")

MODEL_FAMILIES: dict[str, FamilyFacts] = {
    s.model_type: s
    for s in (
        FamilyFacts("llava", "LlavaForConditionalGeneration", "LlavaProcessor", "CLIPImageProcessorPil",
                    "LLaVA-1.5 (llava-1.5-7b-hf, ...) and the embedded model", "grid", vision_drops_cls=True,
                    **_LLAVA_TOWER),
        FamilyFacts("llava_next", "LlavaNextForConditionalGeneration", "LlavaNextProcessor",
                    "LlavaNextImageProcessorPil", "LLaVA-NeXT (llava-v1.6-*-hf)", "anyres", vision_drops_cls=True,
                    pack_keyword="vision_feature_select_strategy", needs_inputs=("image_sizes",), **_LLAVA_TOWER),
        FamilyFacts("llava_onevision", "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor",
                    "LlavaOnevisionImageProcessorPil", "LLaVA-OneVision (llava-onevision-qwen2-*-hf)", "anyres",
                    pack_keyword="vision_aspect_ratio", needs_inputs=("image_sizes",), **_LLAVA_TOWER),
        FamilyFacts("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2VLImageProcessorPil",
                    "Qwen2-VL (Qwen2-VL-*-Instruct)", "merged", **_QWEN_TOWER),
        FamilyFacts("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor",
                    "Qwen2VLImageProcessorPil", "Qwen2.5-VL (Qwen2.5-VL-*-Instruct and fine-tunes)", "merged",
                    window_order=True, **_QWEN_TOWER),
        # Newer families (beyond the paper; book/newer_models.md)
        FamilyFacts("qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen2VLImageProcessorPil",
                    "Qwen3-VL (Qwen3-VL-*-Instruct)", "merged", between_layers={"ΔX_deepstack": "_deepstack_process"},
                    **_QWEN_TOWER),
        FamilyFacts("gemma3", "Gemma3ForConditionalGeneration", "Gemma3Processor", "Gemma3ImageProcessorPil",
                    "Gemma 3 (gemma-3-*-it)", "pooled", attn_update="post_attention_layernorm",
                    ffn_update="post_feedforward_layernorm", needs_inputs=("token_type_ids",), images_per_prompt=True,
                    markers="<start_of_image>, <end_of_image>"),
        FamilyFacts("internvl", "InternVLForConditionalGeneration", "InternVLProcessor", "GotOcr2ImageProcessorPil",
                    "InternVL (InternVL3-*-hf)", "shuffled", vision_layers="encoder.layer", vision_attn="attention",
                    vision_drops_cls=True, markers="<img>, </img>"),
        FamilyFacts("smolvlm", "SmolVLMForConditionalGeneration", "SmolVLMProcessor", "SmolVLMImageProcessorPil",
                    "SmolVLM (SmolVLM2-*-Instruct)", "shuffled", decoder="text_model",
                    vision_tower="vision_model", vision_layers="encoder.layers", needs_inputs=("pixel_attention_mask",),
                    images_per_prompt=True,
                    markers="<fake_token_around_image>, <row_r_col_c>, <global-img>"),
        FamilyFacts("mistral3", "Mistral3ForConditionalGeneration", "PixtralProcessor", "PixtralImageProcessorPil",
                    "Mistral 3 (Mistral-Small-3.1-24B-Instruct-2503, ...)", "merged_grid",
                    vision_layers="transformer.layers", vision_attn="attention", needs_inputs=("image_sizes",),
                    markers="[IMG_BREAK], [IMG_END]"),
    )
}

# The paper's symbols, as hook points (TransformerLens names its hook points the same way everywhere): per decoder
# layer, its input X_in, the attention update ΔX_attn, X_mid = X_in + ΔX_attn, the FFN update ΔX_ffn and the output
# X_out = X_mid + ΔX_ffn (lostattn.residual.capture.LayerCapture has one field per hook point).
HOOK_POINTS = ("X_in", "ΔX_attn", "X_mid", "ΔX_ffn", "X_out")


def attribute_path(root, path: str):
    """`root.a.b.c` for path "a.b.c"."""
    for name in path.split("."):
        root = getattr(root, name)
    return root


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
        self.language_model = attribute_path(model.model, self.spec.decoder)
        layers = self.language_model.layers
        for i, layer in enumerate(layers):
            for name in ("self_attn", "mlp", self.spec.attn_update, self.spec.ffn_update):
                if not hasattr(layer, name):
                    raise ValueError(f"{mt} decoder layer {i} has no `{name}`: not the residual decoder layer this "
                                     f"family's adapter expects")
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

    def hook_points(self) -> tuple[str, ...]:
        """The named tensors `ResidualCapture` gives per decoder layer: the paper's X_in, ΔX_attn, X_mid, ΔX_ffn,
        X_out, then this family's own updates between layers (Qwen3-VL: ΔX_deepstack)."""
        return HOOK_POINTS + tuple(self.spec.between_layers)

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
        """Layer i's attention module (SAP replaces its attention probabilities)."""
        return self.layers[i].self_attn

    def mlp(self, i: int) -> nn.Module:
        return self.layers[i].mlp

    def attn_update(self, i: int) -> nn.Module:
        """The module of layer i whose output is ΔX_attn, what the attention adds to the residual stream."""
        return getattr(self.layers[i], self.spec.attn_update)

    def ffn_update(self, i: int) -> nn.Module:
        """The module of layer i whose output is ΔX_ffn."""
        return getattr(self.layers[i], self.spec.ffn_update)

    # ---- the vision tower ------------------------------------------------------------------------------------------
    @property
    def vision_tower(self) -> nn.Module:
        return attribute_path(self.model.model, self.spec.vision_tower)

    @property
    def vision_layers(self) -> nn.ModuleList:
        return attribute_path(self.vision_tower, self.spec.vision_layers)

    def vision_attn(self, layer: int) -> nn.Module:
        return attribute_path(self.vision_layers[layer], self.spec.vision_attn)
