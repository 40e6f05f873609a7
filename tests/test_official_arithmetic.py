"""The official protocol against an independent re-implementation of the official SAP code (SAP_models/my_modeling_*
and utils/SAP_utils.py of the official repository), written here from its order of operations: eager attention in
the model's dtype, the scores replaced on the last query row before the mask, rescaling (a * |mean S|) / (2 |mean a|),
head scores from bfloat16 means. Prefill logits and 5 greedy decode steps, lam in {0, 0.5, 1}, in float64, float32
and bfloat16, for LLaVA-1.5, Qwen2.5-VL and OneVision tiny checkpoints; and the controlled protocol's plain greedy
decoding."""
import pytest
import torch
from transformers import AttentionInterface, GenerationConfig
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from lostattn.inference.protocols import PLAIN_GREEDY, get_protocol
from lostattn.models.prompts import prepare_inputs
from lostattn.sap.distributions import make_guidance
from lostattn.sap.replace import attention_arithmetic, sap
from lostattn.tasks.synthetic import SyntheticBenchmark

REF = "test_official_reference"
OFFICIAL_FAMILIES = ("llava", "qwen2_5_vl", "llava_onevision")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-6}


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The official eager attention with the SAP injection, as the official modeling files compute it."""
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    k = torch.repeat_interleave(key, groups, dim=1)
    v = torch.repeat_interleave(value, groups, dim=1)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    ref = getattr(module, "_test_reference", None)
    if ref is not None:
        v0, v1 = ref["range"]
        lam = torch.as_tensor(ref["lam"], dtype=scores.dtype)
        nlam = 1 - lam if lam < 1.0 else 0
        aligned = ref["guide"].to(scores.dtype).view(1, 1, 1, v1 - v0)
        if ref["rescale"]:
            aligned = (aligned * torch.abs(scores.mean())) / (2 * torch.abs(aligned.mean()))
        if ref["head_score"] == "nonvisual_mean":
            nonvis = torch.cat([scores[:, :, -1, :v0], scores[:, :, -1, v1:]], dim=-1)
            hs = -nonvis.mean(dim=(0, 2)).to(torch.float32)
        else:
            left = scores[:, :, -1, :v0].mean(dim=(0, 2))
            right = scores[:, :, -1, v1:].mean(dim=(0, 2))
            hs = (-(left + right) / 2.0).to(torch.float32)
        lo, hi = ref["window"]
        sel = ((hs >= torch.quantile(hs, lo)) & (hs <= torch.quantile(hs, hi))).nonzero().view(-1)
        if sel.numel():
            scores[:, sel, -1:, v0:v1] = nlam * scores[:, sel, -1:, v0:v1] + lam * aligned
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : k.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, v).transpose(1, 2).contiguous(), None


AttentionInterface.register(REF, reference_attention)
AttentionMaskInterface.register(REF, eager_mask)


@pytest.fixture(scope="module")
def typed_lm(checkpoints):
    from lostattn.models.loader import load_model

    cache = {}

    def get(family, dtype):
        if (family, dtype) not in cache:
            lm = load_model(checkpoints(family), dtype="float32" if dtype == "float64" else dtype)
            cache[family, dtype] = lm
            if dtype == "float64":
                lm.model.to(torch.float64)
        return cache[family, dtype]

    return get


def _greedy(lm, inputs):
    """Prefill logits (every position) and the logits and tokens of 5 greedy decode steps after the first token."""
    with torch.no_grad():
        prefill = lm.model(**inputs).logits
        out = lm.model.generate(**inputs, generation_config=GenerationConfig(
            max_new_tokens=6, do_sample=False, num_beams=1, pad_token_id=lm.processor.tokenizer.pad_token_id),
            output_logits=True, return_dict_in_generate=True)
    return prefill, torch.stack(out.logits, 1), out.sequences[:, inputs["input_ids"].shape[1]:]


def _run_reference(lm, cfg, inputs, guide):
    vis = lm.adapter.visual_mask(inputs["input_ids"])[0]
    pos = vis.nonzero().view(-1)
    v0, v1 = int(pos[0]), int(pos[-1]) + 1
    assert v1 - v0 == len(pos)  # one contiguous image span, as the official code assumes
    ref = {"range": (v0, v1), "lam": cfg.lam, "guide": guide, "rescale": cfg.rescale, "head_score": cfg.head_score,
           "window": cfg.head_percentile}
    layers = cfg.layer_indices(lm.adapter.num_layers)
    tc, vc = lm.adapter.text_config, lm.adapter.layout.tower(lm).config
    old = tc._attn_implementation, vc._attn_implementation
    tc._attn_implementation, vc._attn_implementation = REF, "eager"
    for i in layers:
        lm.adapter.attn(i)._test_reference = ref
    try:
        return _greedy(lm, inputs)
    finally:
        tc._attn_implementation, vc._attn_implementation = old
        for i in layers:
            del lm.adapter.attn(i)._test_reference


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("family", OFFICIAL_FAMILIES)
def test_official_protocol_equals_the_official_arithmetic(family, dtype, typed_lm):
    lm = typed_lm(family, dtype)
    protocol = get_protocol(lm, "official")
    sample = SyntheticBenchmark().samples("test", limit_per_family=1)[0]
    inputs = prepare_inputs(lm, [sample], protocol=protocol)
    tol = TOL[lm.model.dtype]
    moved = None
    for lam in (0.0, 0.5, 1.0):
        # a head window that selects heads of the tiny model (OneVision's official one selects none)
        cfg = protocol.sap_config("key", lam=lam, head_percentile=(0.3, 1.0), seed=7)
        guide = make_guidance(cfg, lm, inputs, ["s"])[0]
        want = _run_reference(lm, cfg, inputs, guide)
        with sap(lm, cfg, inputs, ["s"]):
            got = _greedy(lm, inputs)
        assert torch.equal(got[2], want[2]), f"{family} {dtype} lam={lam}: tokens differ"
        assert (got[0] - want[0]).abs().max() <= tol, f"{family} {dtype} lam={lam}: prefill logits"
        assert (got[1] - want[1]).abs().max() <= tol, f"{family} {dtype} lam={lam}: decode logits"
        if lam == 0.0:
            vanilla = got
        else:
            moved = max(moved or 0.0, float((got[1] - vanilla[1]).abs().max()))
    assert moved > 10 * tol  # the comparison has power: SAP moves the logits far beyond the tolerance


def test_vanilla_official_run_is_eager_in_the_model_dtype(typed_lm):
    """Without SAP the official arithmetic is transformers' own eager attention, bit for bit, in bfloat16."""
    lm = typed_lm("qwen2_5_vl", "bfloat16")
    inputs = prepare_inputs(lm, SyntheticBenchmark().samples("test", limit_per_family=1)[:1])
    with torch.no_grad(), attention_arithmetic(lm, "official_eager"):
        got = lm.model(**inputs).logits
    tc, vc = lm.adapter.text_config, lm.adapter.layout.tower(lm).config
    old = tc._attn_implementation, vc._attn_implementation
    tc._attn_implementation = vc._attn_implementation = "eager"
    try:
        with torch.no_grad():
            want = lm.model(**inputs).logits
    finally:
        tc._attn_implementation, vc._attn_implementation = old
    with torch.no_grad():
        sdpa = lm.model(**inputs).logits
    assert torch.equal(got, want)
    assert lm.adapter.text_config._attn_implementation == old[0]  # restored on exit
    assert not torch.equal(sdpa, want)  # SDPA's bfloat16 arithmetic differs: the switch matters


def test_controlled_decoding_is_plain_greedy_official_keeps_the_checkpoint_config(typed_lm):
    """Qwen's published generation config carries repetition_penalty 1.05: the controlled protocol must not apply it
    (scores equal the raw logits at every step), the official protocol must; both say so in their key."""
    lm = typed_lm("qwen2_5_vl", "float32")
    gc = lm.model.generation_config
    old = gc.repetition_penalty
    gc.repetition_penalty = 1.05
    try:
        inputs = prepare_inputs(lm, SyntheticBenchmark().samples("test", limit_per_family=1)[:1])
        out = {}
        for name in ("controlled", "official"):
            p = get_protocol(lm, name, max_new_tokens=4)
            kw = p.generate_kwargs(["s"])
            kw.pop("logits_processor", None)  # the official sampler draws; compare the processors before it
            with torch.no_grad():
                r = lm.model.generate(**inputs, **kw, output_scores=True, output_logits=True,
                                      return_dict_in_generate=True)
            out[name] = (p, r)
    finally:
        gc.repetition_penalty = old
    p, r = out["controlled"]
    assert p.key()["decoding"]["rule"] == PLAIN_GREEDY and p.key()["attention"] == "sdpa"
    assert p.decoding["eos_token_id"] == sorted({int(e) for e in ([gc.eos_token_id] if isinstance(
        gc.eos_token_id, int) else gc.eos_token_id)})
    for s, raw in zip(r.scores, r.logits):
        assert torch.equal(s, raw)
    p, r = out["official"]
    assert p.key()["decoding"]["repetition_penalty"] == 1.05 and p.key()["attention"] == "official_eager"
    assert any(not torch.equal(s, raw) for s, raw in zip(r.scores[1:], r.logits[1:]))
