"""One loader for the embedded model and real checkpoints (local folders, or hub ids already in the local cache)."""
from __future__ import annotations

import hashlib
import inspect
import types
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig

from lostattn.models.adapters import MODEL_FAMILIES, Adapter, supported_text
from lostattn.provenance import hash_file
from lostattn.models.embedded import EMBEDDED_NAME

EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "data" / "embedded_model"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    processor: object
    adapter: Adapter
    # Identifies the weights behind `name` (see `weights_fingerprint`): a results file written by one set of weights
    # is never resumed with another, even under the same name (the embedded model after retraining).
    fingerprint: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def identity(self) -> dict:
        """What a results file's key records of the loaded model: its weights' fingerprint, dtype and device type."""
        return {"weights": self.fingerprint or "", "dtype": str(self.model.dtype).removeprefix("torch."),
                "device": torch.device(self.device).type}


def resolve(name_or_path: str | Path) -> str:
    """The embedded model's folder for its name, else the path or hub id as given (after checks)."""
    s = str(name_or_path)
    if s == EMBEDDED_NAME:
        if not (EMBEDDED_DIR / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded model is not at {EMBEDDED_DIR}; train it with `lostattn train --out {EMBEDDED_DIR}`")
        return str(EMBEDDED_DIR)
    p = Path(s).expanduser()
    looks_like_path = s.startswith((".", "/", "~")) or p.exists() or s.count("/") != 1
    if looks_like_path:
        if not p.is_dir():
            raise FileNotFoundError(
                f"model path {p} does not exist or is not a folder; give '{EMBEDDED_NAME}', a local checkpoint "
                f"folder, or a hub id in the local cache. Supported model types: {supported_text()}")
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} has no config.json: not a transformers checkpoint folder")
        return str(p)
    return s  # a hub id: from_pretrained resolves it from the local cache (HF_HUB_OFFLINE=1 forbids downloads)


def weights_fingerprint(src: str | Path, sample: int = 1 << 20, whole_below: int = 64 << 20) -> str:
    """A short hash of a checkpoint folder: its config, and for each weight file its name, size and bytes: all of
    them for files under `whole_below` (the embedded model), the first and last `sample` bytes of larger ones (cheap
    for a 15 GB checkpoint, and different after any retraining, whose tensors start right after the header). A hub
    id without a local folder gets the hash of its id."""
    h = hashlib.sha256()
    folder = Path(src)
    if not folder.is_dir():
        h.update(str(src).encode())
        return h.hexdigest()[:16]
    h.update((folder / "config.json").read_bytes())
    weights = sorted(f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin", ".pt") and f.is_file())
    for f in weights:
        h.update(f"{f.name}:{f.stat().st_size}".encode())
        hash_file(h, f, sample, whole_below)
    return h.hexdigest()[:16]


_IMAGE_ONLY: dict[type, type] = {}


def _template_through_tokenizer(self, conversation, chat_template=None, **kwargs):
    """The processor's chat template rendered by its tokenizer (text only: this project's prompts hold image
    placeholders, never image data)."""
    return self.tokenizer.apply_chat_template(conversation, chat_template=chat_template or self.chat_template,
                                              **kwargs)


def image_only_processor_class(proc_cls: type) -> type:
    """`proc_cls` (a transformers processor) without its video processor.

    Qwen2-VL, Qwen2.5-VL and LLaVA-OneVision processors also own a video processor, which transformers gates behind
    torchvision; there is no CPU build of torchvision, and this project reads images only. A processor's
    sub-processors are the modality arguments of its `__init__` (`get_attributes`); this subclass leaves the video one
    out, so `from_pretrained` neither loads nor requires it (a `video_preprocessor_config.json` or a `video_processor`
    entry in `processor_config.json` is ignored), and calling it with images and text works as before. With
    torchvision installed nothing changes either: the same image-only processor is used, so results do not depend on
    whether torchvision is present.
    """
    if proc_cls not in _IMAGE_ONLY:
        def get_attributes(cls):
            return [a for a in proc_cls.get_attributes() if "video" not in a]

        body = {"get_attributes": classmethod(get_attributes), "__module__": __name__,
                "__doc__": f"{proc_cls.__name__} for images only (no video processor)."}
        init = proc_cls.__init__
        params = list(inspect.signature(init).parameters.values())
        if any(p.name == "video_processor" and p.default is p.empty for p in params):
            # SmolVLM's requires the argument: the same function with None as its default (from_pretrained reads the
            # accepted keywords from the code object, so a wrapper with **kwargs would drop image_seq_len)
            n_defaults = len([p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]) - \
                [p.name for p in params].index("video_processor")
            defaults = (None,) + (init.__defaults__ or ())
            assert len(defaults) == n_defaults, f"unexpected {proc_cls.__name__}.__init__ signature"
            body["__init__"] = types.FunctionType(init.__code__, init.__globals__, "__init__", defaults,
                                                  init.__closure__)
        if "video_processor" in inspect.getsource(proc_cls.apply_chat_template):
            body["apply_chat_template"] = _template_through_tokenizer  # SmolVLM's reads the video settings
        _IMAGE_ONLY[proc_cls] = type(proc_cls.__name__, (proc_cls,), body)
    return _IMAGE_ONLY[proc_cls]


class PixtralImageOnlyProcessor(transformers.ProcessorMixin):
    """Mistral 3's processor for images, without torchvision.

    transformers' `PixtralProcessor` cannot be imported without torchvision (its module reads a helper from the
    torchvision image processor). This one holds the PIL image processor and the tokenizer and expands each `[IMG]`
    of the text as PixtralProcessor does: per row of merged patches (patch_size x spatial_merge_size pixels) that many
    `[IMG]` tokens then `[IMG_BREAK]`, the last `[IMG_BREAK]` replaced by `[IMG_END]`. Only the `[IMG]` positions
    receive image features (tests/test_newer_families.py)."""

    def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16, spatial_merge_size: int = 1,
                 chat_template=None, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                 image_end_token="[IMG_END]", **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size
        self.image_token, self.image_break_token, self.image_end_token = image_token, image_break_token, image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def _process_images(self, images, **images_kwargs):
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        unit = self.patch_size * self.spatial_merge_size
        height, width = image_inputs["image_sizes"][image_idx]
        rows = [self.image_token * (int(width) // unit) + self.image_break_token] * (int(height) // unit)
        text = "".join(rows)
        return text[: -len(self.image_break_token)] + self.image_end_token

    @property
    def model_input_names(self):
        return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]


PixtralImageOnlyProcessor.__name__ = "PixtralProcessor"  # the name checkpoints record in processor_config.json


def processor_class(family: str) -> type:
    """The processor class this project loads for `family`: transformers' own without its video processor, or, for
    Mistral 3 (whose transformers class needs torchvision), `PixtralImageOnlyProcessor`."""
    name = MODEL_FAMILIES[family].processor_class
    if name == "PixtralProcessor":
        return PixtralImageOnlyProcessor
    return image_only_processor_class(getattr(transformers, name))


def load_processor(src: str | Path, family: str):
    """The family's processor from a checkpoint folder (either file layout), images only, PIL image backend."""
    return processor_class(family).from_pretrained(src, backend="pil")


def refuse_missing_weights(info: dict, name_or_path) -> None:
    """Refuse a checkpoint whose weight files lack tensors the model has: transformers would fill them with fresh
    random values and the model would score as if nothing were wrong."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"checkpoint {name_or_path} lacks {len(missing)} weight tensor(s) its model needs ({shown}); "
                         f"they would be filled with random values. The weight files are incomplete (a shard "
                         f"missing or cut?): copy or download the checkpoint again")


def check_image_token(processor, config, name_or_path) -> None:
    """Refuse a processor whose tokenizer does not turn the image token into the id the model's config expects: no
    prompt could then carry the image (transformers fails on the first sample: 'image tokens: 0'). The token is the
    processor's or its tokenizer's (Gemma 3's processor names the `<start_of_image>` marker it expands, its
    tokenizer the `<image_soft_token>` the model reads)."""
    tok = getattr(processor, "tokenizer", None)
    want = getattr(config, "image_token_id", None)
    want = getattr(config, "image_token_index", None) if want is None else want
    tokens = [t for t in (getattr(processor, "image_token", None), getattr(tok, "image_token", None)) if t]
    if not tokens or tok is None or want is None:
        return
    got = {t: tok(t, add_special_tokens=False)["input_ids"] for t in dict.fromkeys(tokens)}
    if not any(ids == [want] for ids in got.values()):
        shown = ", ".join(f"{t!r} gives {ids}" for t, ids in got.items())
        raise ValueError(f"the tokenizer of {name_or_path} has no image token {tokens[0]!r} as config.json expects id "
                         f"{want} ({shown}): its tokenizer files do not belong to this model. Copy tokenizer.json "
                         f"and tokenizer_config.json from the same checkpoint")


def load_model(name_or_path: str | Path = EMBEDDED_NAME, device: str = "cpu", dtype: str = "float32",
               attn_implementation: str = "sdpa") -> LoadedModel:
    """Load a supported LVLM and its processor; `dtype` is one of float32, float16, bfloat16."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    src = resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(src)
    except OSError as e:
        raise FileNotFoundError(
            f"cannot read a config for {name_or_path!r} (offline={os.environ.get('HF_HUB_OFFLINE', '0')}): {e}. "
            f"Give a local checkpoint folder; supported model types: {supported_text()}") from e
    if config.model_type not in MODEL_FAMILIES:
        raise ValueError(f"{name_or_path!r} is a {config.model_type!r} model, which is not supported; "
                         f"supported model types: {supported_text()}")
    cls = getattr(transformers, MODEL_FAMILIES[config.model_type].hf_class)
    processor = load_processor(src, config.model_type)
    check_image_token(processor, config, name_or_path)  # before the weights load: a mismatch is known at once
    # device "auto": spread over the node's GPUs (accelerate's device_map) for a model too large for one
    placement = {"device_map": "auto"} if device == "auto" else {}
    model, info = cls.from_pretrained(src, dtype=DTYPES[dtype], attn_implementation=attn_implementation,
                                      output_loading_info=True, **placement)
    refuse_missing_weights(info, name_or_path)
    (model if placement else model.to(device)).eval()
    tok = getattr(processor, "tokenizer", None)
    if tok is not None:
        tok.padding_side = "left"  # batched generation
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    return LoadedModel(str(name_or_path), model, processor, Adapter(model), weights_fingerprint(src))
