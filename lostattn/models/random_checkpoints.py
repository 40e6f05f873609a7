"""Random-weight checkpoints of every supported family, built offline with the real `transformers` classes and
processors and saved with `save_pretrained`, exactly as a hub checkpoint is laid out on disk.

They stand in for what users bring (llava-1.5-7b-hf, llava-v1.6-*, llava-onevision-qwen2-*-ov-hf, Qwen2-VL,
Qwen2.5-VL-*-Instruct, and the newer Qwen3-VL-*-Instruct, gemma-3-*-it, InternVL3-*-hf, SmolVLM2-*-Instruct,
Mistral-Small-3.1-*): the tests build `tiny` ones of every family in seconds, and `published` sizes (the real models'
widths and depths, random weights) measure time and memory on a GPU. Nothing is downloaded: the tokenizer is a
byte-level BPE trained here on a fixed text, the chat templates follow the real checkpoints' (images rendered first by
the llava-hf templates; Qwen's `<|vision_start|><|image_pad|><|vision_end|>`; Gemma 3's and Mistral 3's type a BOS
their tokenizers add again), every image processor is the PIL one, and the classes are those
`adapters.MODEL_FAMILIES` names.

Two file layouts, as users have them:
- `hub`: `preprocessor_config.json` for the image processor (plus `video_preprocessor_config.json` for the families
  whose hub repos ship one), tokenizer files, `chat_template.jinja`;
- `single`: one `processor_config.json` holding every sub-processor, as transformers 5's `save_pretrained` writes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

FILE_LAYOUTS = ("hub", "single")
SIZES = ("tiny", "published")

# ---- chat templates, as the real checkpoints' (jinja) ---------------------------------------------------------------
_LLAVA_TEMPLATE = (  # llava-hf/llava-1.5-7b-hf
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_LLAVA_NEXT_TEMPLATE = (  # llava-hf/llava-v1.6-mistral-7b-hf
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ ' ' + content['text'] }}"
    "{% endfor %}{{ '</s>' }}{% endif %}{% endfor %}"
)
_ONEVISION_TEMPLATE = (  # llava-hf/llava-onevision-qwen2-*-ov-hf
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_QWEN_TEMPLATE = (  # Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_QWEN3_TEMPLATE = (  # Qwen/Qwen3-VL-*-Instruct (no default system turn)
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_GEMMA3_TEMPLATE = (  # google/gemma-3-*-it: a BOS typed into the text, 'model' as the assistant's role
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}<start_of_turn>{{ role }}\n{% if message['content'] is string %}"
    "{{ message['content'] | trim }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == 'text' %}{{ item['text'] | trim }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_INTERNVL_TEMPLATE = (  # OpenGVLab/InternVL3-*-hf
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)
_SMOLVLM_TEMPLATE = (  # HuggingFaceTB/SmolVLM2-*-Instruct
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_MISTRAL3_TEMPLATE = (  # mistralai/Mistral-Small-3.1-24B-Instruct-2503, without its default system prompt
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST]"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for block in message['content'] %}"
    "{% if block['type'] == 'text' %}{{ block['text'] }}{% elif block['type'] == 'image' %}[IMG]{% endif %}"
    "{% endfor %}{% endif %}[/INST]{% elif message['role'] == 'assistant' %}"
    "{% for block in message['content'] %}{{ block['text'] }}{% endfor %}{{ eos_token }}{% endif %}{% endfor %}"
)

_CORPUS = (
    "Question: Is there a red circle in the image? Answer the question using a single word or phrase. yes no "
    "Options: A. B. C. D. Answer ONLY option's letter from the given choices. Answer with the option's letter. "
    "What colour is the square? How many objects are there? Which object is left of the triangle? "
    "You are a helpful assistant. USER: ASSISTANT: [INST] [/INST] system user assistant <think> </think> "
    "<answer> </answer> 0 1 2 3 4 5 6 7 8 9 the a of to in is and what which where how many"
)


@dataclass(frozen=True)
class CheckpointTokens:
    """What a checkpoint's tokenizer and template hold for one family (its classes are in `adapters.MODEL_FAMILIES`)."""

    template: str
    special: tuple[str, ...]  # besides the tokenizer's own (bos/eos/pad)
    bos: str | None
    eos: str
    pad: str
    named: dict  # the tokenizer's named special tokens (image_token, boi_token, ...), as the hub tokenizer_config has
    adds_bos: bool = False  # the tokenizer puts BOS before every text it encodes (Gemma 3, Mistral 3)
    video: dict | None = None  # the hub repo's video_preprocessor_config.json (its processor needs torchvision)


_QWEN_SPECIAL = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
_QWEN_NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_bos_token": "<|vision_start|>",
               "vision_eos_token": "<|vision_end|>"}


def _qwen_video(processor: str, patch: int = 14) -> dict:
    return {"video_processor_type": "Qwen2VLVideoProcessor", "min_pixels": 3136, "max_pixels": 12845056,
            "patch_size": patch, "merge_size": 2, "temporal_patch_size": 2, "processor_class": processor}


CHECKPOINT_TOKENS = {
    "llava": CheckpointTokens(_LLAVA_TEMPLATE, ("<image>",), "<s>", "</s>", "<pad>", {"image_token": "<image>"}),
    "llava_next": CheckpointTokens(_LLAVA_NEXT_TEMPLATE, ("<image>",), "<s>", "</s>", "<pad>",
                                   {"image_token": "<image>"}),
    "llava_onevision": CheckpointTokens(
        _ONEVISION_TEMPLATE, ("<image>", "<video>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>", "<|endoftext|>",
        {"image_token": "<image>", "video_token": "<video>"},
        video={"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": 384, "width": 384},
               "do_resize": True, "do_rescale": True, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
               "image_std": [0.5, 0.5, 0.5], "processor_class": "LlavaOnevisionProcessor"}),
    "qwen2_vl": CheckpointTokens(_QWEN_TEMPLATE, _QWEN_SPECIAL, None, "<|im_end|>", "<|endoftext|>", _QWEN_NAMED,
                                 video=_qwen_video("Qwen2VLProcessor")),
    "qwen2_5_vl": CheckpointTokens(_QWEN_TEMPLATE, _QWEN_SPECIAL, None, "<|im_end|>", "<|endoftext|>", _QWEN_NAMED,
                                   video=_qwen_video("Qwen2_5_VLProcessor")),
    "qwen3_vl": CheckpointTokens(_QWEN3_TEMPLATE, _QWEN_SPECIAL, None, "<|im_end|>", "<|endoftext|>", _QWEN_NAMED,
                                 video=_qwen_video("Qwen3VLProcessor", 16) | {"video_processor_type":
                                                                              "Qwen3VLVideoProcessor"}),
    "gemma3": CheckpointTokens(
        _GEMMA3_TEMPLATE, ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                           "<image_soft_token>"), "<bos>", "<eos>", "<pad>",
        {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
        adds_bos=True),
    "internvl": CheckpointTokens(
        _INTERNVL_TEMPLATE, ("<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"), None,
        "<|im_end|>", "<|endoftext|>",
        {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
         "video_token": "<video>"},
        video={"video_processor_type": "InternVLVideoProcessor", "processor_class": "InternVLProcessor",
               "size": {"height": 448, "width": 448}, "image_mean": [0.485, 0.456, 0.406],
               "image_std": [0.229, 0.224, 0.225]}),
    "smolvlm": CheckpointTokens(
        _SMOLVLM_TEMPLATE, ("<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
                            "<global-img>", "<video>", *(f"<row_{r}_col_{c}>" for r in range(1, 7)
                                                         for c in range(1, 7))),
        "<|im_start|>", "<end_of_utterance>", "<|endoftext|>",
        {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>", "global_image_token":
         "<global-img>", "end_of_utterance_token": "<end_of_utterance>", "video_token": "<video>"},
        video={"video_processor_type": "SmolVLMVideoProcessor", "processor_class": "SmolVLMProcessor",
               "size": {"longest_edge": 384}, "max_image_size": {"longest_edge": 384}, "fps": 1,
               "do_image_splitting": False, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}),
    "mistral3": CheckpointTokens(_MISTRAL3_TEMPLATE, ("[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"),
                                 "<s>", "</s>", "<pad>", {"image_token": "[IMG]"}, adds_bos=True),
}
RANDOM_CHECKPOINT_FAMILIES = tuple(CHECKPOINT_TOKENS)


def build_tokenizer(family: str, vocab_size: int = 400):
    """A byte-level BPE tokenizer (any text encodes) with the family's special tokens, trained on a fixed text."""
    from tokenizers import processors

    lay = CHECKPOINT_TOKENS[family]
    specials = [t for t in (lay.pad, lay.bos, lay.eos, "<unk>") if t] + [t for t in lay.special if t]
    specials = list(dict.fromkeys(specials))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if lay.adds_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{lay.bos} $A", pair=f"{lay.bos} $A $B",
                                                           special_tokens=[(lay.bos, tok.token_to_id(lay.bos))])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=lay.bos, eos_token=lay.eos, pad_token=lay.pad, unk_token="<unk>",
        extra_special_tokens=dict(lay.named), padding_side="left", model_max_length=32768,
    )


# ---- sizes ----------------------------------------------------------------------------------------------------------
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2)
_PUBLISHED_TEXT = {
    "llama": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32),  # Vicuna-7B / Mistral-7B-like
    "qwen": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4),  # Qwen2-7B
    "qwen3_8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128),  # Qwen3-VL-8B
    "gemma3_12b": dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024),
    "internvl3_8b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4),  # Qwen2.5-7B
    "smolvlm2_2b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                        num_key_value_heads=32),
    "mistral_small_24b": dict(hidden_size=5120, intermediate_size=32768, num_hidden_layers=40, num_attention_heads=32,
                              num_key_value_heads=8, head_dim=128),
}


def _text(kind: str, size: str, vocab: int, tok, **tiny_extra) -> dict:
    dims = dict(_TINY_TEXT, **tiny_extra) if size == "tiny" else dict(_PUBLISHED_TEXT[kind])
    return dict(vocab_size=vocab, max_position_embeddings=32768, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **dims)


def _pick(size: str, tiny: dict, published: dict) -> dict:
    return dict(tiny if size == "tiny" else published)


def _id(tok, name: str) -> int:
    return tok.convert_tokens_to_ids(name)


def _clip_llama(size, tok) -> dict:
    vis = transformers.CLIPVisionConfig(**_pick(
        size, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=56,
                   patch_size=14, projection_dim=32),
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
             patch_size=14, projection_dim=768)))
    text = transformers.LlamaConfig(**_text("llama", size, len(tok), tok))
    return dict(vision_config=vis, text_config=text, image_token_id=_id(tok, "<image>"), vision_feature_layer=-2,
                vision_feature_select_strategy="default", projector_hidden_act="gelu")


def _llava_config(family, size, tok):
    common = _clip_llama(size, tok)
    vis = common["vision_config"]
    return transformers.LlavaConfig(image_seq_length=(vis.image_size // vis.patch_size) ** 2, **common)


def _llava_next_config(family, size, tok):
    common = _clip_llama(size, tok)
    s = common["vision_config"].image_size
    return transformers.LlavaNextConfig(image_grid_pinpoints=[[s, 2 * s], [2 * s, s], [2 * s, 2 * s],
                                                              [3 * s, s], [s, 3 * s]], **common)


def _onevision_config(family, size, tok):
    vis = transformers.SiglipVisionConfig(**_pick(
        size, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=56,
                   patch_size=14),
        dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16, image_size=384,
             patch_size=14)))
    text = transformers.Qwen2Config(**_text("qwen", size, len(tok), tok))
    s = vis.image_size
    pins = [[s * i, s * j] for i in range(1, 7) for j in range(1, 7)]
    return transformers.LlavaOnevisionConfig(
        vision_config=vis, text_config=text, image_token_id=_id(tok, "<image>"), video_token_id=_id(tok, "<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full", image_grid_pinpoints=pins,
        vision_aspect_ratio="anyres_max_9")


def _qwen_ids(tok) -> dict:
    return dict(image_token_id=_id(tok, "<|image_pad|>"), video_token_id=_id(tok, "<|video_pad|>"),
                vision_start_token_id=_id(tok, "<|vision_start|>"), vision_end_token_id=_id(tok, "<|vision_end|>"))


def _qwen2_text(size, tok) -> dict:
    text_kw = _text("qwen", size, len(tok), tok)
    text_kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6,
                                  "mrope_section": [4, 2, 2] if size == "tiny" else [16, 24, 24]}
    return text_kw


def _qwen2_vl_config(family, size, tok):
    text_kw = _qwen2_text(size, tok)
    vis = _pick(size, dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2),
                dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4))
    vis["hidden_size"] = text_kw["hidden_size"]
    return transformers.Qwen2VLConfig(vision_config=vis, text_config=text_kw, **_qwen_ids(tok))


def _qwen2_5_vl_config(family, size, tok):
    text_kw = _qwen2_text(size, tok)
    vis = _pick(size, dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56,
                           fullatt_block_indexes=[1, 3]),
                dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, window_size=112,
                     fullatt_block_indexes=[7, 15, 23, 31]))
    vis["out_hidden_size"] = text_kw["hidden_size"]
    return transformers.Qwen2_5_VLConfig(vision_config=vis, text_config=text_kw, **_qwen_ids(tok))


def _qwen3_config(family, size, tok):
    text_kw = _text("qwen3_8b", size, len(tok), tok, head_dim=16)
    text_kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e6, "mrope_interleaved": True,
                                  "mrope_section": [4, 2, 2] if size == "tiny" else [24, 20, 20]}
    # deepstack: features of vision blocks `deepstack_visual_indexes` are added after decoder layers 0, 1, ...
    vis = _pick(size, dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
                dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                     num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24]))
    vis["out_hidden_size"] = text_kw["hidden_size"]
    return transformers.Qwen3VLConfig(vision_config=vis, text_config=text_kw, **_qwen_ids(tok))


def _gemma3_config(family, size, tok):
    vis = transformers.SiglipVisionConfig(**_pick(
        size, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                   patch_size=8, vision_use_head=False),
        dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=896,
             patch_size=14, vision_use_head=False)))
    # tiny: a sliding window longer than any test prompt, so that every layer's attention is the full causal one
    # SAP recomputes (sap.replace does not model sliding windows; see book/newer_models.md)
    text = transformers.Gemma3TextConfig(**_text("gemma3_12b", size, len(tok), tok, head_dim=16,
                                                 query_pre_attn_scalar=16, sliding_window=4096))
    return transformers.Gemma3Config(
        vision_config=vis, text_config=text, mm_tokens_per_image=16 if size == "tiny" else 256,
        image_token_index=_id(tok, "<image_soft_token>"), boi_token_index=_id(tok, "<start_of_image>"),
        eoi_token_index=_id(tok, "<end_of_image>"))


def _internvl_config(family, size, tok):
    vis = transformers.InternVLVisionConfig(**_pick(
        size, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   image_size=[56, 56], patch_size=[14, 14]),
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
             image_size=[448, 448], patch_size=[14, 14])))
    text = transformers.Qwen2Config(**_text("internvl3_8b", size, len(tok), tok))
    side = vis.image_size[0] // vis.patch_size[0]
    return transformers.InternVLConfig(vision_config=vis, text_config=text, downsample_ratio=0.5,
                                       image_token_id=_id(tok, "<IMG_CONTEXT>"), image_seq_length=(side // 2) ** 2)


def _smolvlm_config(family, size, tok):
    vis = _pick(size, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16),
                dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     image_size=384, patch_size=14))
    text = transformers.LlamaConfig(**_text("smolvlm2_2b", size, len(tok), tok))
    return transformers.SmolVLMConfig(vision_config=vis, text_config=text.to_dict(), image_token_id=_id(tok, "<image>"),
                                      scale_factor=2 if size == "tiny" else 3)


def _mistral3_config(family, size, tok):
    vis = transformers.PixtralVisionConfig(**_pick(
        size, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, head_dim=16,
                   image_size=64, patch_size=8),
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, head_dim=64,
             image_size=1540, patch_size=14)))
    text = transformers.MistralConfig(**_text("mistral_small_24b", size, len(tok), tok, head_dim=16))
    return transformers.Mistral3Config(vision_config=vis, text_config=text, image_token_index=_id(tok, "[IMG]"),
                                       spatial_merge_size=2, vision_feature_layer=-1)


# ---- processors (image processors are the PIL ones) -----------------------------------------------------------------
def _llava_like_processor(family, config, tok, size, cls, ip_cls, template):
    s = config.vision_config.image_size
    pins = getattr(config, "image_grid_pinpoints", None)  # LLaVA-NeXT's tiles
    ip = ip_cls(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                **({"image_grid_pinpoints": pins} if pins else {}))
    return cls(image_processor=ip, tokenizer=tok, patch_size=config.vision_config.patch_size,
               vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=template)


def _onevision_processor(family, config, tok, size, cls, ip_cls, template):
    s = config.vision_config.image_size
    ip = ip_cls(size={"height": s, "width": s}, image_grid_pinpoints=config.image_grid_pinpoints,
                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return cls(image_processor=ip, tokenizer=tok, chat_template=template,
               num_image_tokens=(s // config.vision_config.patch_size) ** 2,
               vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")


def _qwen_processor(family, config, tok, size, cls, ip_cls, template, normalise: dict | None = None):
    normalise = normalise or {}
    patch = config.vision_config.patch_size
    unit = patch * 2  # one merged token
    pixels = (dict(min_pixels=(4 * unit) ** 2, max_pixels=(8 * unit) ** 2) if size == "tiny"
              else dict(min_pixels=3136, max_pixels=12845056))
    ip = ip_cls(size={"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]},
                patch_size=patch, merge_size=2, temporal_patch_size=2, **normalise)
    return cls(image_processor=ip, tokenizer=tok, chat_template=template)


def _qwen3_processor(family, config, tok, size, cls, ip_cls, template):
    return _qwen_processor(family, config, tok, size, cls, ip_cls, template,
                           normalise={"image_mean": [0.5] * 3, "image_std": [0.5] * 3})  # Qwen3-VL's


def _gemma3_processor(family, config, tok, size, cls, ip_cls, template):
    s = config.vision_config.image_size
    ip = ip_cls(size={"height": s, "width": s}, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pan_and_scan=False)
    return cls(image_processor=ip, tokenizer=tok, chat_template=template, image_seq_length=config.mm_tokens_per_image)


def _internvl_processor(family, config, tok, size, cls, ip_cls, template):
    s = config.vision_config.image_size[0]
    ip = ip_cls(size={"height": s, "width": s}, crop_to_patches=True, min_patches=1,
                max_patches=4 if size == "tiny" else 12, image_mean=[0.485, 0.456, 0.406],
                image_std=[0.229, 0.224, 0.225])
    return cls(image_processor=ip, tokenizer=tok, chat_template=template, image_seq_length=config.image_seq_length)


def _smolvlm_processor(family, config, tok, size, cls, ip_cls, template):
    s = config.vision_config.image_size
    ip = ip_cls(size={"longest_edge": 2 * s if size == "tiny" else 4 * s}, max_image_size={"longest_edge": s},
                do_image_splitting=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    seq = (s // config.vision_config.patch_size) ** 2 // config.scale_factor ** 2
    return cls(image_processor=ip, tokenizer=tok, chat_template=template, image_seq_len=seq)


def _mistral3_processor(family, config, tok, size, cls, ip_cls, template):
    vc = config.vision_config
    ip = ip_cls(size={"longest_edge": vc.image_size}, patch_size=vc.patch_size,
                image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    return cls(image_processor=ip, tokenizer=tok, chat_template=template, patch_size=vc.patch_size,
               spatial_merge_size=config.spatial_merge_size)


# per family: (config builder, processor builder); the classes come from adapters.MODEL_FAMILIES
_BUILDERS = {
    "llava": (_llava_config, _llava_like_processor),
    "llava_next": (_llava_next_config, _llava_like_processor),
    "llava_onevision": (_onevision_config, _onevision_processor),
    "qwen2_vl": (_qwen2_vl_config, _qwen_processor),
    "qwen2_5_vl": (_qwen2_5_vl_config, _qwen_processor),
    "qwen3_vl": (_qwen3_config, _qwen3_processor),
    "gemma3": (_gemma3_config, _gemma3_processor),
    "internvl": (_internvl_config, _internvl_processor),
    "smolvlm": (_smolvlm_config, _smolvlm_processor),
    "mistral3": (_mistral3_config, _mistral3_processor),
}


def _config(family: str, size: str, tok):
    return _BUILDERS[family][0](family, size, tok)


def _processor(family: str, config, tok, size: str):
    from lostattn.models.adapters import MODEL_FAMILIES
    from lostattn.models.loader import processor_class

    facts = MODEL_FAMILIES[family]
    ip_cls = getattr(transformers, facts.image_processor_class)
    return _BUILDERS[family][1](family, config, tok, size, processor_class(family), ip_cls,
                                CHECKPOINT_TOKENS[family].template)


def build_checkpoint(family: str, out: str | Path, size: str = "tiny", layout: str = "hub", seed: int = 0,
                     dtype: torch.dtype = torch.float32, save_weights: bool = True) -> Path:
    """Write a random-weight checkpoint of `family` to `out` (a folder) and return it.

    `size`: "tiny" (a few hundred thousand parameters; the tests) or "published" (the real 7B models' shapes).
    `layout`: "hub" or "single" (see the module docstring). `save_weights=False` writes everything but the weights
    (a published-size model is then built on the device from its config).
    """
    if family not in CHECKPOINT_TOKENS:
        raise ValueError(f"unknown family {family!r}; choose one of {RANDOM_CHECKPOINT_FAMILIES}")
    if size not in SIZES or layout not in FILE_LAYOUTS:
        raise ValueError(f"size must be one of {SIZES} and layout one of {FILE_LAYOUTS}, got {size!r}, {layout!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(family)
    config = _config(family, size, tok)
    processor = _processor(family, config, tok, size)
    if save_weights:
        torch.manual_seed(seed)
        from lostattn.models.adapters import MODEL_FAMILIES

        model = getattr(transformers, MODEL_FAMILIES[family].hf_class)(config).to(dtype)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(out)
    else:
        config.save_pretrained(out)
    processor.save_pretrained(out)
    if layout == "hub":
        _to_hub_layout(out, family)
    elif CHECKPOINT_TOKENS[family].video:  # what save_pretrained writes where torchvision is installed
        cfg_file = out / "processor_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["video_processor"] = CHECKPOINT_TOKENS[family].video
        cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def _to_hub_layout(out: Path, family: str) -> None:
    """Split transformers 5's single processor_config.json into the hub's files."""
    cfg_file = out / "processor_config.json"
    cfg = json.loads(cfg_file.read_text())
    image = cfg.pop("image_processor")
    image.setdefault("processor_class", cfg.get("processor_class"))
    (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
    if CHECKPOINT_TOKENS[family].video:
        (out / "video_preprocessor_config.json").write_text(json.dumps(CHECKPOINT_TOKENS[family].video, indent=2)
                                                            + "\n")
    extra = {k: v for k, v in cfg.items() if k != "processor_class"}
    if extra:  # processor kwargs (patch_size, num_image_tokens, ...) stay in processor_config.json, as on the hub
        cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    else:
        cfg_file.unlink()
