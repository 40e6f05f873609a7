"""The official and controlled protocols: per-family SAP presets, prompts, seeded sampling, answer extraction."""
import warnings

import pytest
import torch

from lostattn.models.adapters import OFFICIAL_RECIPES
from lostattn.models.prompts import chat_prompt, prepare_inputs
from lostattn.inference.protocols import (OFFICIAL_MAX_NEW_TOKENS, THINK_INSTRUCTION, SeededSampler, get_protocol,
                                official_layers)
from lostattn.sap.replace import SAPConfig, attention_arithmetic, empty_head_window, head_scores, mix_scores, sap
from lostattn.tasks.synthetic import MC_SUFFIX, SyntheticBenchmark

from conftest import FAMILIES


def test_official_layer_windows():
    assert official_layers((18, 23), 32, 32) == (18, 19, 20, 21, 22, 23)  # LLaVA-1.5-7B, as the README
    assert official_layers((21, 27), 28, 28) == tuple(range(21, 28))  # OneVision-7B
    assert official_layers(None, 28, 36) == "all"  # Qwen: the README passes "all"
    assert official_layers((18, 23), 32, 6) == (3, 4)  # the same relative position on the embedded model
    assert official_layers((18, 23), 32, 40) == tuple(range(22, 30))


@pytest.mark.parametrize("family", FAMILIES)
def test_official_preset_follows_the_family_recipe(family, family_lm):
    lm = family_lm(family)
    r = OFFICIAL_RECIPES[family]
    p = get_protocol(lm, "official")
    cfg = p.sap_config("gaussian_noise")
    assert cfg.rescale is r.rescale and cfg.head_score == r.head_score and cfg.head_percentile == r.head_window
    assert cfg.vis_layer == "last" and cfg.precision == "model"
    assert p.do_sample is r.do_sample and p.max_new_tokens == OFFICIAL_MAX_NEW_TOKENS
    assert p.content_order == r.content_order and p.image_size == r.image_size
    expected = {"llava": (True, "nonvisual_mean"), "llava_next": (True, "nonvisual_mean"),
                "llava_onevision": (True, "left_right_mean"), "qwen2_vl": (False, "nonvisual_mean"),
                "qwen2_5_vl": (False, "nonvisual_mean"),
                # the newer families follow the closest script: Qwen decoders the Qwen script, the others LLaVA's
                "qwen3_vl": (False, "nonvisual_mean"), "internvl": (False, "nonvisual_mean"),
                "gemma3": (True, "nonvisual_mean"), "smolvlm": (True, "nonvisual_mean"),
                "mistral3": (True, "nonvisual_mean")}[family]
    assert (r.rescale, r.head_score) == expected
    c = get_protocol(lm, "controlled").sap_config("gaussian_noise")
    assert c == SAPConfig(mode="gaussian_noise")  # one rule for every family
    assert get_protocol(lm, "controlled").key() != p.key()
    with pytest.raises(ValueError, match="protocol 'offical' is not one of"):
        get_protocol(lm, "offical")


def test_onevision_script_window_selects_no_head():
    """The official OneVision script's default head window, 0.1-0.11, falls between two heads for 14, 28 or 64
    heads (torch.quantile's linear interpolation): no head is replaced."""
    for n in (14, 28, 64):
        assert empty_head_window(n, (0.1, 0.11))
        hs = torch.randn(1, n, dtype=torch.float32)
        q = torch.quantile(hs, torch.tensor([0.1, 0.11]), dim=-1, keepdim=True)
        assert not ((hs >= q[0]) & (hs <= q[1])).any()
    assert not empty_head_window(28, (0.3, 0.9)) and not empty_head_window(4, (0.0, 1.0))


def test_onevision_official_is_a_loud_no_op(family_lm):
    lm = family_lm("llava_onevision")
    cfg = get_protocol(lm, "official").sap_config("gaussian_noise")
    assert empty_head_window(lm.adapter.text_config.num_attention_heads, cfg.head_percentile)
    samples = SyntheticBenchmark().samples("test", limit_per_family=1)[:2]
    inputs = prepare_inputs(lm, samples)
    with torch.no_grad():
        with attention_arithmetic(lm, cfg.arithmetic):  # the vanilla model under the same (official eager) arithmetic
            ref = lm.model(**inputs).logits
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import lostattn.sap.replace as sap_mod
            sap_mod._WARNED.clear()
            with sap(lm, cfg, inputs) as st:
                st.keep_heads = True
                out = lm.model(**inputs).logits
    assert any("selects no head" in str(w.message) for w in caught)
    assert st.heads and not any(h.any() for h in st.heads)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_head_scores_closed_form():
    K = 6
    vis = torch.tensor([[False, False, True, True, False, False]])
    valid = torch.tensor([[False, True, True, True, True, True]])  # position 0 is padding
    last = torch.tensor([[[9.0, 1.0, 5.0, 5.0, 3.0, 5.0], [9.0, 2.0, 0.0, 0.0, 2.0, 2.0]]])  # (B=1, H=2, K)
    nv = head_scores(last, vis, valid, "nonvisual_mean")
    torch.testing.assert_close(nv, torch.tensor([[-(1 + 3 + 5) / 3, -2.0]]))
    lr = head_scores(last, vis, valid, "left_right_mean")
    torch.testing.assert_close(lr, torch.tensor([[-(1 + (3 + 5) / 2) / 2, -2.0]]))
    no_left = torch.tensor([[True, True, True, True, False, False]])
    assert torch.isnan(head_scores(last, no_left, valid, "left_right_mean")).all()  # as the official code: no head
    assert K == last.shape[-1]


def test_model_precision_mixes_in_the_scores_dtype():
    """bfloat16 scores: lam = 0.3 is 0.30078125 and 1 - lam is rounded too, as in the official eager code."""
    B, H, R, K = 1, 2, 1, 4
    scores = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]], [[0.5, 0.25, 2.0, 8.0]]]], dtype=torch.bfloat16)
    vis = torch.tensor([[False, True, True, False]])
    valid = torch.ones(B, K, dtype=torch.bool)
    guide = torch.tensor([[0.0, 0.25, 0.75, 0.0]])
    cfg = SAPConfig(lam=0.3, rescale=False, precision="model")
    new, heads = mix_scores(scores, vis, valid, guide, torch.zeros(B), torch.ones(B, R, dtype=torch.bool), cfg)
    assert heads.all() and new.dtype == torch.bfloat16
    lam = torch.tensor(0.3, dtype=torch.bfloat16)
    assert float(lam) == 0.30078125
    want = (1 - lam) * scores[0, 0, 0, 1] + lam * torch.tensor(0.25, dtype=torch.bfloat16)
    assert new[0, 0, 0, 1] == want
    assert torch.equal(new[..., [0, 3]], scores[..., [0, 3]])


def test_batch_head_scope_averages_the_head_score_over_the_batch():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 8, 1, 10, generator=g)
    vis = torch.zeros(3, 10, dtype=torch.bool)
    vis[:, 3:7] = True
    valid = torch.ones(3, 10, dtype=torch.bool)
    guide = vis.float() / 4
    args = (scores, vis, valid, guide, torch.ones(3), torch.ones(3, 1, dtype=torch.bool))
    _, per_sample = mix_scores(*args, SAPConfig(head_percentile=(0.3, 0.6)))
    _, per_batch = mix_scores(*args, SAPConfig(head_percentile=(0.3, 0.6), head_scope="batch"))
    assert (per_batch == per_batch[:1]).all() and not (per_sample == per_sample[:1]).all()


def test_seeded_sampler_draws_from_the_distribution_and_is_per_sample():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    counts = torch.zeros(4)
    for i in range(4000):
        out = SeededSampler([f"s{i}"], seed=0)(None, logits.clone())
        assert (out == 0).sum() == 1
        counts += (out[0] == 0).float()
    torch.testing.assert_close(counts / 4000, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03, rtol=0)
    top1 = SeededSampler(["a", "b"], seed=0, top_k=1)(None, logits.repeat(2, 1))
    assert (top1.argmax(-1) == 3).all()
    # a sample's draw does not depend on its batch companions
    both = SeededSampler(["a", "b"], seed=5)(None, logits.repeat(2, 1))
    alone = SeededSampler(["b"], seed=5)(None, logits.clone())
    assert torch.equal(both[1], alone[0])


@pytest.mark.parametrize("family", ["llava", "llava_onevision"])
def test_official_sampling_is_reproducible_and_batch_invariant(family, family_lm):
    from lostattn.inference.generation import generate_replies

    lm = family_lm(family)
    p = get_protocol(lm, "official", max_new_tokens=6)
    assert p.do_sample
    samples = SyntheticBenchmark().samples("test", limit_per_family=1)[:4]
    together = generate_replies(lm, samples, p)
    again = generate_replies(lm, samples, p)
    alone = [generate_replies(lm, [s], p)[0] for s in samples]
    assert together == again == alone
    greedy = generate_replies(lm, samples, get_protocol(lm, "controlled", max_new_tokens=6))
    other = get_protocol(lm, "official", max_new_tokens=6, seed=7)
    assert generate_replies(lm, samples, other) != together and together != greedy


def test_prompts_follow_the_protocol(family_lm):
    llava = family_lm("llava")
    q = "Question: what?\nOptions:\nA. x\nB. y\n" + MC_SUFFIX
    assert chat_prompt(llava.processor, q, protocol=get_protocol(llava, "official")) == f"USER: <image>\n{q}\nASSISTANT:"
    assert chat_prompt(llava.processor, q) == f"USER: <image>\n{q} ASSISTANT:"  # the checkpoint's own template
    qwen = family_lm("qwen2_5_vl")
    text_first = chat_prompt(qwen.processor, "Q?", protocol=get_protocol(qwen, "official").__class__(
        "x", "qwen2_5_vl", content_order=("text", "image")))
    assert text_first.index("Q?") < text_first.index("<|vision_start|>")
    ov = family_lm("llava_onevision")
    p = get_protocol(ov, "official")
    assert p.content_order == ("text", "image")
    # the llava-hf chat template renders every image first, whatever the order of the content
    assert chat_prompt(ov.processor, "Q?", protocol=p).index("<image>") < chat_prompt(ov.processor, "Q?",
                                                                                     protocol=p).index("Q?")


def test_onevision_official_resizes_images_to_672(family_lm):
    from PIL import Image

    p = get_protocol(family_lm("llava_onevision"), "official")
    assert p.prepare_image(Image.new("RGB", (100, 40))).size == (672, 672)
    assert get_protocol(family_lm("llava_onevision"), "controlled").prepare_image(Image.new("RGB", (100, 40))).size \
        == (100, 40)


def test_reasoning_prompt_and_answer_extraction(family_lm):
    p = get_protocol(family_lm("qwen2_5_vl"), "official", reasoning=True)
    q = "Question: what?\nOptions:\nA. x\nB. y\n" + MC_SUFFIX
    shown = p.question_text(q)
    assert shown.endswith(THINK_INSTRUCTION) and MC_SUFFIX not in shown
    assert p.answer_text("<think>A or B... maybe A</think><answer>B</answer>") == "B"
    assert p.answer_text("<think>hmm</think> C") == "C"
    plain = get_protocol(family_lm("qwen2_5_vl"), "official")
    assert plain.question_text(q) == q and plain.answer_text("<answer>B</answer>") == "<answer>B</answer>"
