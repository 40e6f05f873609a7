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

Decoding and attention arithmetic are part of a protocol, and so of every results key (`decoding`, `attention`):
- controlled: plain greedy for every family: no logits processor at all (the checkpoint's `generation_config` is set
  aside, so Qwen's repetition_penalty 1.05 does not apply), stopping at the checkpoint's own eos ids; SDPA attention.
- official: the checkpoint's generation config, as the official scripts leave it in force (Qwen: greedy with its
  repetition penalty; LLaVA / OneVision: sampling with its temperature / top-k / top-p, seeded per sample), and the
  official eager attention arithmetic in the model's dtype in every decoder layer, vanilla included
  (`lostattn.sap.replace.attention_arithmetic`).

`get_protocol(lm, name)` resolves a protocol for a loaded model; its `key()` enters every results file's resume key.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

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
PLAIN_GREEDY = "plain_greedy"
CHECKPOINT_CONFIG = "checkpoint_generation_config"


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
    # How tokens are chosen: {"rule": "plain_greedy", "eos_token_id": [...]} or {"rule":
    # "checkpoint_generation_config", **the checkpoint's generation config}; both enter the results key.
    decoding: dict = field(default_factory=dict)
    attention: str = "sdpa"  # the attention arithmetic of every decoder layer: "sdpa" or "official_eager"

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
        if self.decoding.get("rule") == PLAIN_GREEDY:
            # a fresh config: nothing of the checkpoint's generation_config (repetition penalty, suppressed tokens,
            # ...) is merged in by `generate` (see `plain_generation_config`)
            kw["generation_config"] = plain_generation_config(self.decoding, self.max_new_tokens)
            kw.pop("max_new_tokens"), kw.pop("num_beams"), kw.pop("do_sample")
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


def plain_generation_config(decoding: dict, max_new_tokens: int) -> GenerationConfig:
    """Greedy decoding with no logits processor: every field that would add one is set to its neutral value
    explicitly, since `generate` fills the fields left unset from the checkpoint's generation_config."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0,
        encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, bad_words_ids=None,
        min_length=0, min_new_tokens=0, suppress_tokens=[], begin_suppress_tokens=[], forced_bos_token_id=None,
        forced_eos_token_id=None, sequence_bias=None, exponential_decay_length_penalty=None, renormalize_logits=False,
        temperature=1.0, top_k=0, top_p=1.0, min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
        eos_token_id=decoding.get("eos_token_id"), pad_token_id=decoding.get("pad_token_id"))


def _eos_ids(lm) -> list[int]:
    """The checkpoint's own end-of-sequence ids (its generation config's, else its model config's)."""
    eos = getattr(lm.model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(lm.adapter.text_config, "eos_token_id", None)
    return sorted({int(e) for e in ([] if eos is None else eos if isinstance(eos, (list, tuple)) else [eos])})


def _checkpoint_decoding(lm) -> dict:
    """The checkpoint's generation config as a dict (what the official scripts leave in force)."""
    d = lm.model.generation_config.to_diff_dict()
    return {k: v for k, v in sorted(d.items()) if not k.startswith("_") and k != "transformers_version"}


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
        pad = getattr(lm.model.generation_config, "pad_token_id", None)
        p = Protocol("controlled", family, reasoning=reasoning, seed=seed,
                     decoding={"rule": PLAIN_GREEDY, "eos_token_id": _eos_ids(lm), "pad_token_id": pad})
    else:
        r = lm.adapter.official
        sap = dict(rescale=r.rescale, head_score=r.head_score, head_percentile=r.head_window,
                   layers=official_layers(r.layers, r.depth, lm.adapter.num_layers), vis_layer="last",
                   precision="model", seed=seed, arithmetic="official_eager",
                   complexity_source=r.complexity_source)
        p = Protocol("official", family, content_order=r.content_order, literal_prompt=r.literal_prompt,
                     image_size=r.image_size, reasoning=reasoning, do_sample=r.do_sample,
                     max_new_tokens=OFFICIAL_MAX_NEW_TOKENS, seed=seed,
                     sampling=_sampling(lm) if r.do_sample else {}, sap=sap,
                     decoding={"rule": CHECKPOINT_CONFIG, **_checkpoint_decoding(lm)}, attention="official_eager")
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        p = replace(p, max_new_tokens=max_new_tokens)
    return p
