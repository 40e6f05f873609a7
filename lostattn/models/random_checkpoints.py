"""Random-weight checkpoints of every supported family, built offline with the real `transformers` classes and
processors and saved with `save_pretrained`, exactly as a hub checkpoint is laid out on disk.

They stand in for what users bring (llava-1.5-7b-hf, llava-v1.6-*, llava-onevision-qwen2-*-ov-hf, Qwen2-VL,
Qwen2.5-VL-*-Instruct): the tests build `tiny` ones of every family in seconds, and `published` sizes (the real
models' widths and depths, random weights) measure time and memory on a GPU. Nothing is downloaded: the tokenizer is a
byte-level BPE trained here on a fixed text, the chat templates follow the real checkpoints' (images rendered first
by the llava-hf templates; Qwen's `<|vision_start|><|image_pad|><|vision_end|>`), and every image processor is the
PIL one.

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

_CORPUS = (
    "Question: Is there a red circle in the image? Answer the question using a single word or phrase. yes no "
    "Options: A. B. C. D. Answer ONLY option's letter from the given choices. Answer with the option's letter. "
    "What colour is the square? How many objects are there? Which object is left of the triangle? "
    "You are a helpful assistant. USER: ASSISTANT: [INST] [/INST] system user assistant <think> </think> "
    "<answer> </answer> 0 1 2 3 4 5 6 7 8 9 the a of to in is and what which where how many"
)


@dataclass(frozen=True)
class FamilyLayout:
    """What a checkpoint of one family is made of: its classes, special tokens and template."""

    hf_class: str
    processor: str
    image_processor: str
    template: str
    special: tuple[str, ...]  # besides the tokenizer's own (bos/eos/pad)
    bos: str | None
    eos: str
    pad: str
    video_config: bool  # the hub repo ships a video_preprocessor_config.json


FAMILY_LAYOUTS = {
    "llava": FamilyLayout("LlavaForConditionalGeneration", "LlavaProcessor", "CLIPImageProcessorPil", _LLAVA_TEMPLATE,
                          ("<image>",), "<s>", "</s>", "<pad>", False),
    "llava_next": FamilyLayout("LlavaNextForConditionalGeneration", "LlavaNextProcessor", "LlavaNextImageProcessorPil",
                               _LLAVA_NEXT_TEMPLATE, ("<image>",), "<s>", "</s>", "<pad>", False),
    "llava_onevision": FamilyLayout("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor",
                                    "LlavaOnevisionImageProcessorPil", _ONEVISION_TEMPLATE,
                                    ("<image>", "<video>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>",
                                    "<|endoftext|>", True),
    "qwen2_vl": FamilyLayout("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2VLImageProcessorPil",
                             _QWEN_TEMPLATE, ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                              "<|image_pad|>", "<|video_pad|>"), None, "<|im_end|>", "<|endoftext|>",
                             True),
    "qwen2_5_vl": FamilyLayout("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLImageProcessorPil",
                               _QWEN_TEMPLATE, ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                                "<|image_pad|>", "<|video_pad|>"), None, "<|im_end|>",
                               "<|endoftext|>", True),
}
RANDOM_CHECKPOINT_FAMILIES = tuple(FAMILY_LAYOUTS)


def build_tokenizer(family: str, vocab_size: int = 400):
    """A byte-level BPE tokenizer (any text encodes) with the family's special tokens, trained on a fixed text."""
    lay = FAMILY_LAYOUTS[family]
    specials = [t for t in (lay.pad, lay.bos, lay.eos, "<unk>") if t] + [t for t in lay.special if t]
    specials = list(dict.fromkeys(specials))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    extra = {}
    if "<image>" in lay.special:
        extra["image_token"] = "<image>"
    if "<|image_pad|>" in lay.special:
        extra = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"}
    if "<video>" in lay.special:
        extra["video_token"] = "<video>"
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=lay.bos, eos_token=lay.eos, pad_token=lay.pad, unk_token="<unk>",
        extra_special_tokens=extra, padding_side="left", model_max_length=32768,
    )


# ---- sizes ----------------------------------------------------------------------------------------------------------
def _text(kind: str, size: str, vocab: int, tok) -> dict:
    if size == "tiny":
        dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2)
    elif kind == "llama":  # Vicuna-7B / Mistral-7B-like
        dims = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32)
    else:  # Qwen2-7B
        dims = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4)
    return dict(vocab_size=vocab, max_position_embeddings=32768, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **dims)


def _config(family: str, size: str, tok):
    vocab = len(tok)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>" if family.startswith("qwen") else "<image>")
    tiny = size == "tiny"
    if family in ("llava", "llava_next"):
        vis = transformers.CLIPVisionConfig(
            **(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=56,
                    patch_size=14, projection_dim=32) if tiny else
               dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768)))
        text = transformers.LlamaConfig(**_text("llama", size, vocab, tok))
        common = dict(vision_config=vis, text_config=text, image_token_id=image_id, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
        if family == "llava":
            return transformers.LlavaConfig(image_seq_length=(vis.image_size // vis.patch_size) ** 2, **common)
        s = vis.image_size
        return transformers.LlavaNextConfig(image_grid_pinpoints=[[s, 2 * s], [2 * s, s], [2 * s, 2 * s],
                                                                  [3 * s, s], [s, 3 * s]], **common)
    if family == "llava_onevision":
        vis = transformers.SiglipVisionConfig(
            **(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=56,
                    patch_size=14) if tiny else
               dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                    image_size=384, patch_size=14)))
        text = transformers.Qwen2Config(**_text("qwen", size, vocab, tok))
        s = vis.image_size
        pins = [[s * i, s * j] for i in range(1, 7) for j in range(1, 7)]
        return transformers.LlavaOnevisionConfig(
            vision_config=vis, text_config=text, image_token_id=image_id,
            video_token_id=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
            vision_feature_select_strategy="full", image_grid_pinpoints=pins, vision_aspect_ratio="anyres_max_9")
    ids = dict(image_token_id=image_id, video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    text_kw = _text("qwen", size, vocab, tok)
    text_kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6,
                                  "mrope_section": [4, 2, 2] if tiny else [16, 24, 24]}
    if family == "qwen2_vl":
        vis = dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2) if tiny else dict(depth=32, embed_dim=1280,
                                                                                       num_heads=16, mlp_ratio=4)
        vis["hidden_size"] = text_kw["hidden_size"]
        return transformers.Qwen2VLConfig(vision_config=vis, text_config=text_kw, **ids)
    vis = (dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56, fullatt_block_indexes=[1, 3])
           if tiny else dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, window_size=112,
                             fullatt_block_indexes=[7, 15, 23, 31]))
    vis["out_hidden_size"] = text_kw["hidden_size"]
    return transformers.Qwen2_5_VLConfig(vision_config=vis, text_config=text_kw, **ids)


def _processor(family: str, config, tok, size: str):
    lay = FAMILY_LAYOUTS[family]
    ip_cls = getattr(transformers, lay.image_processor)
    proc_cls = getattr(transformers, lay.processor)
    if family == "llava":
        s = config.vision_config.image_size
        ip = ip_cls(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
        return proc_cls(image_processor=ip, tokenizer=tok, patch_size=config.vision_config.patch_size,
                        vision_feature_select_strategy="default", num_additional_image_tokens=1,
                        chat_template=lay.template)
    if family == "llava_next":
        s = config.vision_config.image_size
        ip = ip_cls(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                    image_grid_pinpoints=config.image_grid_pinpoints)
        return proc_cls(image_processor=ip, tokenizer=tok, patch_size=config.vision_config.patch_size,
                        vision_feature_select_strategy="default", num_additional_image_tokens=1,
                        chat_template=lay.template)
    if family == "llava_onevision":
        s = config.vision_config.image_size
        ip = ip_cls(size={"height": s, "width": s}, image_grid_pinpoints=config.image_grid_pinpoints,
                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        return _image_only(proc_cls)(image_processor=ip, tokenizer=tok, chat_template=lay.template,
                                     num_image_tokens=(s // config.vision_config.patch_size) ** 2,
                                     vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    pixels = (dict(min_pixels=56 * 56, max_pixels=112 * 112) if size == "tiny"
              else dict(min_pixels=3136, max_pixels=12845056))
    ip = ip_cls(size={"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]},
                patch_size=14, merge_size=2, temporal_patch_size=2)
    return _image_only(proc_cls)(image_processor=ip, tokenizer=tok, chat_template=lay.template)


def _image_only(proc_cls):
    from lostattn.models.loader import image_only_processor_class

    return image_only_processor_class(proc_cls)


def _video_config(family: str) -> dict:
    """What the hub's video_preprocessor_config.json holds (these video processors need torchvision to load)."""
    if family == "llava_onevision":
        return {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": 384, "width": 384},
                "do_resize": True, "do_rescale": True, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "processor_class": "LlavaOnevisionProcessor"}
    proc = "Qwen2VLProcessor" if family == "qwen2_vl" else "Qwen2_5_VLProcessor"
    return {"video_processor_type": "Qwen2VLVideoProcessor", "min_pixels": 3136, "max_pixels": 12845056,
            "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "processor_class": proc}


def build_checkpoint(family: str, out: str | Path, size: str = "tiny", layout: str = "hub", seed: int = 0,
                     dtype: torch.dtype = torch.float32, save_weights: bool = True) -> Path:
    """Write a random-weight checkpoint of `family` to `out` (a folder) and return it.

    `size`: "tiny" (a few hundred thousand parameters; the tests) or "published" (the real 7B models' shapes).
    `layout`: "hub" or "single" (see the module docstring). `save_weights=False` writes everything but the weights
    (a published-size model is then built on the device from its config).
    """
    if family not in FAMILY_LAYOUTS:
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
        model = getattr(transformers, FAMILY_LAYOUTS[family].hf_class)(config).to(dtype)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(out)
    else:
        config.save_pretrained(out)
    processor.save_pretrained(out)
    if layout == "hub":
        _to_hub_layout(out, family)
    elif FAMILY_LAYOUTS[family].video_config:  # what save_pretrained writes where torchvision is installed
        cfg_file = out / "processor_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["video_processor"] = _video_config(family)
        cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def _to_hub_layout(out: Path, family: str) -> None:
    """Split transformers 5's single processor_config.json into the hub's files."""
    cfg_file = out / "processor_config.json"
    cfg = json.loads(cfg_file.read_text())
    image = cfg.pop("image_processor")
    image.setdefault("processor_class", cfg.get("processor_class"))
    (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
    if FAMILY_LAYOUTS[family].video_config:
        (out / "video_preprocessor_config.json").write_text(json.dumps(_video_config(family), indent=2) + "\n")
    extra = {k: v for k, v in cfg.items() if k != "processor_class"}
    if extra:  # processor kwargs (patch_size, num_image_tokens, ...) stay in processor_config.json, as on the hub
        cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    else:
        cfg_file.unlink()
