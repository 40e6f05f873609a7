"""The embedded default model: a small LLaVA built from the real `transformers` classes.

`build_embedded(bench)` returns an untrained `LlavaForConditionalGeneration` (CLIP vision tower, Llama decoder with
grouped-query attention and RoPE) and its `LlavaProcessor` (a word-level tokenizer made with `tokenizers` from the
benchmark's own text, and a `CLIPImageProcessor`). `lostattn.models.train` trains it; the result is saved with
`save_pretrained` under `data/embedded_model/` and loaded back with `from_pretrained`, like any hub checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaProcessor, PreTrainedTokenizerFast)

from lostattn.tasks.synthetic import AUX_QUESTION_FAMILIES, QUESTION_FAMILIES, SPLITS, SyntheticBenchmark

try:  # the PIL image processor needs no torchvision (there is no CPU torchvision build)
    from transformers import CLIPImageProcessorPil as _ImageProcessor
except ImportError:  # pragma: no cover - older transformers
    from transformers import CLIPImageProcessor as _ImageProcessor

EMBEDDED_NAME = "embedded"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
# LLaVA-1.5's conversation format, so that one prompt builder serves the embedded model and llava-1.5-*-hf.
_IMAGE = "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
_TEXT = "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"


def chat_template(image_first: bool) -> str:
    """LLaVA-1.5's conversation format ("USER: <image>\\n{text} ASSISTANT:"), or with the image after the text
    ("USER: {text} <image> ASSISTANT:")."""
    body = _IMAGE + _TEXT if image_first else _TEXT + " " + _IMAGE
    return (
        "{% for message in messages %}{% if message['role'] == 'user' %}USER: " + body +
        " {% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


@dataclass(frozen=True)
class EmbeddedArch:
    """Sizes of the embedded model (defaults: ~1.3M parameters, ~5 MB in float32)."""

    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 6
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 320
    max_positions: int = 256
    # Where the image goes in the prompt: first, as LLaVA-1.5's template puts it (the default), so that every word of
    # the question attends to the visual tokens, as in the real models the paper studies; or after the question.
    image_first: bool = True
    # Initial weight scale of the decoder (std of the normal init). With the transformers default, 0.02, query-key
    # products start so small that attention is uniform and this model, trained from scratch, sat at chance for
    # thousands of steps on every question that needs a lookup in its context (finding the option or the visual token
    # a question names). At 0.1 the same recipe learns them: see the book's Choices page.
    text_init_std: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer(bench: SyntheticBenchmark) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word of the benchmark's text and of the chat template."""
    pre = pre_tokenizers.Whitespace()
    words: set[str] = {"USER", ":", "ASSISTANT"}
    for split in SPLITS:
        for s in bench.samples(split, families=QUESTION_FAMILIES + AUX_QUESTION_FAMILIES):
            for text in (s.question, s.answer):
                words.update(w for w, _ in pre.pre_tokenize_str(text))
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left", model_max_length=256,
    )


def build_embedded(bench: SyntheticBenchmark, arch: EmbeddedArch = EmbeddedArch(), seed: int = 0):
    """An untrained embedded model and its processor, initialised deterministically from `seed`."""
    tokenizer = build_tokenizer(bench)
    size = bench.cfg.image_size
    patch = bench.cfg.cell  # one patch per grid cell: 9 visual tokens for the default 3x3 scene
    image_processor = _ImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        do_resize=True, do_center_crop=True, do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
        vision_feature_select_strategy="default", chat_template=chat_template(arch.image_first), num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=arch.vision_hidden, intermediate_size=2 * arch.vision_hidden,
        num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads,
        image_size=size, patch_size=patch, projection_dim=arch.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.text_hidden, intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_kv_heads, max_position_embeddings=arch.max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=arch.text_init_std,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_seq_length=(size // patch) ** 2, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor
