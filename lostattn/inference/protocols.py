"""Named protocols: how a model is prompted, how it decodes, and how SAP replaces its attention.

- `official`: what the paper's official scripts do for the model's family (the facts are in
  `lostattn.models.adapters.OFFICIAL_RECIPES`): per-family prompt order and image size, sampling for LLaVA and
  OneVision (seeded per sample, so a rerun is identical) and greedy decoding for Qwen, up to 1024 new tokens with the
  answer read from the reply (`<answer>...</answer>` for a reasoning model), and the family's SAP settings
  (rescaling or not, head score, head window, the README's layer window, vis_enc_attn from the vision tower's last
  layer, mixing in the model's dtype).
- `controlled`: one rule for every family, chosen to isolate SAP's effect: greedy decoding of 8 tokens, the image
  first in the checkpoint's own chat template, full replacement on every layer but the first and every head,
  rescaled guidance in float32, vis_enc_attn from the vision layer the decoder reads.

`get_protocol(lm, name)` resolves a protocol for a loaded model; its `key()` enters every results file's resume key.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from lostattn.sap.distributions import sample_generator
from lostattn.sap.replace import SAPConfig, parse_layers

PROTOCOLS = ("controlled", "official")
OFFICIAL_MAX_NEW_TOKENS = 1024
CONTROLLED_MAX_NEW_TOKENS = 8
# The official reasoning-model instruction (main_SAP/generation_response_vmc_qwen_SAP.py, answer_type="reasoning").
THINK_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer must be an option letter (i.e. A, B, C or D) from the given choices, "
    "enclosed in <answer></answer> tags. Let's think more."
)
# Answer-format instructions the reasoning instruction replaces when a question ends with one.
_ANSWER_FORMATS = ("Answer ONLY option's letter from the given choices.",
                   "Answer with the option's letter from the given choices directly.")
_SAMPLING_FIELDS = ("temperature", "top_k", "top_p")


def official_layers(window: tuple[int, int] | None, depth: int, n_layers: int) -> str | tuple[int, ...]:
    """The README's layer window (inclusive, for a model of `depth` decoder layers) on a model of `n_layers`: the
    same indices at that depth, else the same relative position, rounded outwards (e.g. LLaVA-1.5-7B's 18-23 of 32
    is 3-4 of the embedded model's 6)."""
    if window is None:
        return "all"
    a, b = window
    if n_layers == depth:
        return tuple(range(a, b + 1))
    start = min(n_layers - 1, math.floor(a * n_layers / depth))
    end = max(start, min(n_layers - 1, math.ceil((b + 1) * n_layers / depth) - 1))
    return tuple(range(start, end + 1))


@dataclass(frozen=True)
class Protocol:
    """A protocol resolved for one model (use `get_protocol`)."""

    name: str
    family: str
    content_order: tuple[str, ...] = ("image", "text")
    literal_prompt: str | None = None
    image_size: tuple[int, int] | None = None
    reasoning: bool = False
    do_sample: bool = False
    max_new_tokens: int = CONTROLLED_MAX_NEW_TOKENS
    seed: int = 42
    sampling: dict = field(default_factory=dict)  # temperature / top_k / top_p, when sampling
    sap: dict = field(default_factory=dict)  # SAPConfig fields this protocol sets

    def key(self) -> dict:
        d = asdict(self)
        d["content_order"] = list(d["content_order"])
        d["image_size"] = list(d["image_size"]) if d["image_size"] else None
        d["sap"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d["sap"].items()}
        return d

    def sap_config(self, mode: str = "gaussian_noise", lam: float | None = 1.0, **overrides) -> SAPConfig:
        """The protocol's SAP settings for `mode`; `overrides` (layers, head_percentile, queries, seed, ...) that are
        not None win (layers may be written as "all" or "18,19,20"); `lam` None is full replacement."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "layers" in given:
            given["layers"] = parse_layers(given["layers"]) if isinstance(given["layers"], str) else given["layers"]
        if "head_percentile" in given:
            given["head_percentile"] = tuple(given["head_percentile"])
        return SAPConfig(**{"mode": mode, "lam": 1.0 if lam is None else lam, **self.sap, **given})

    # ---- prompting ---------------------------------------------------------------------------------------------
    def question_text(self, question: str) -> str:
        """The question as the protocol shows it (the reasoning instruction replaces a final answer-format line)."""
        if not self.reasoning:
            return question
        for fmt in _ANSWER_FORMATS:
            if question.rstrip().endswith(fmt):
                question = question.rstrip()[: -len(fmt)].rstrip()
                break
        return f"{question} {THINK_INSTRUCTION}"

    def prepare_image(self, image):
        """The image as the protocol hands it to the processor (OneVision's official script resizes to 672x672)."""
        if image is None or self.image_size is None:
            return image
        return image.convert("RGB").resize(self.image_size, resample=3)  # PIL.Image.BICUBIC

    def answer_text(self, reply: str) -> str:
        """The part of a reply that holds the answer: the last `<answer>...</answer>` of a reasoning model (else what
        follows `</think>`), the whole reply otherwise."""
        if not self.reasoning:
            return reply
        found = re.findall(r"<answer>(.*?)</answer>", reply, flags=re.S)
        if found:
            return found[-1].strip()
        return reply.split("</think>")[-1].strip()

    # ---- decoding ----------------------------------------------------------------------------------------------
    def generate_kwargs(self, keys: list[str]) -> dict:
        """Arguments for `model.generate` for a batch whose samples have ids `keys`."""
        kw = dict(max_new_tokens=self.max_new_tokens, num_beams=1, do_sample=False)
        if self.do_sample:
            kw["logits_processor"] = LogitsProcessorList([SeededSampler(keys, self.seed, **self.sampling)])
            kw.update(temperature=None, top_k=None, top_p=None)
        return kw


class SeededSampler(LogitsProcessor):
    """Sampling with one random stream per sample, so that a sample's reply does not depend on the batch it is in
    and a rerun is identical: temperature, top-k and top-p as the checkpoint's generation config sets them, then one
    uniform draw per step from the sample's own generator (seeded by seed and sample id) picks the token by inverse
    CDF; every other token is masked, so greedy selection (`do_sample=False`) takes the sampled one."""

    def __init__(self, keys: list[str], seed: int, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None):
        self.gens = [sample_generator(seed, f"decode|{k}") for k in keys]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float()
        if self.temperature not in (None, 1.0):
            logits = logits / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(int(self.top_k), logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1.0:
            srt, idx = torch.sort(logits, descending=True, dim=-1)
            cum = torch.softmax(srt, dim=-1).cumsum(-1)
            drop = cum - torch.softmax(srt, dim=-1) > self.top_p  # keep the smallest prefix reaching top_p
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))
        probs = torch.softmax(logits, dim=-1).double()
        cdf = probs.cumsum(-1)
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.gens]).to(cdf.device)
        choice = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=cdf.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, choice, 0.0)


def _sampling(lm) -> dict:
    gc = lm.model.generation_config
    return {f: getattr(gc, f, None) for f in _SAMPLING_FIELDS if getattr(gc, f, None) is not None}


def get_protocol(lm, name: str = "controlled", *, reasoning: bool = False, max_new_tokens: int | None = None,
                 seed: int = 42) -> Protocol:
    """The protocol `name` resolved for the loaded model `lm` (its family and depth)."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol {name!r} is not one of {PROTOCOLS}")
    family = lm.adapter.family
    if name == "controlled":
        p = Protocol("controlled", family, reasoning=reasoning, seed=seed)
    else:
        r = lm.adapter.official
        sap = dict(rescale=r.rescale, head_score=r.head_score, head_percentile=r.head_window,
                   layers=official_layers(r.layers, r.depth, lm.adapter.num_layers), vis_layer="last",
                   precision="model", seed=seed,
                   complexity_source=r.complexity_source)
        p = Protocol("official", family, content_order=r.content_order, literal_prompt=r.literal_prompt,
                     image_size=r.image_size, reasoning=reasoning, do_sample=r.do_sample,
                     max_new_tokens=OFFICIAL_MAX_NEW_TOKENS, seed=seed,
                     sampling=_sampling(lm) if r.do_sample else {}, sap=sap)
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        p = replace(p, max_new_tokens=max_new_tokens)
    return p
