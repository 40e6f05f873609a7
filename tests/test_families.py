"""Every supported family, from a local checkpoint folder in both file layouts, with no torchvision: load, generate,
and the visual-token span checked against where the model actually places the image features."""
import importlib.util

import numpy as np
import pytest
import torch

from lostattn.models.loader import load_model
from lostattn.models.prompts import prepare_inputs
from lostattn.tasks.synthetic import SyntheticBenchmark

from conftest import FAMILIES


@pytest.fixture(scope="module")
def few():
    return SyntheticBenchmark().samples("test", limit_per_family=1)[:3]


def test_torchvision_is_absent():
    """The project's CPU environment has no torchvision (there is no CPU build), so the tests below show the families
    load without it; in a GPU user's environment, which has it, the same tests show they load with it."""
    if importlib.util.find_spec("torchvision") is not None and __import__("torch").version.cuda is not None:
        pytest.skip("a CUDA environment with torchvision: the tests below run with torchvision present")
    assert importlib.util.find_spec("torchvision") is None


@pytest.mark.parametrize("layout", ["hub", "single"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_and_generates(family, layout, checkpoints, few):
    lm = load_model(checkpoints(family, layout))
    assert lm.adapter.family == family
    assert lm.model.config.text_config._attn_implementation == "sdpa"
    assert not hasattr(lm.processor, "video_processor")
    inputs = prepare_inputs(lm, few)
    with torch.no_grad():
        out = lm.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == len(few) and out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_span_is_where_the_model_places_image_features(family, family_lm, few):
    """Record the decoder's input embeddings: exactly the positions of `visual_mask` differ from the token embedding
    table (they hold image features: patches, and the image-newline tokens of the any-resolution families); every
    other position, Qwen's <|vision_start|>/<|vision_end|> included, is a plain token embedding."""
    lm = family_lm(family)
    inputs = prepare_inputs(lm, few)
    seen = {}
    def grab(module, args, kwargs):
        seen.setdefault("emb", kwargs["inputs_embeds"])

    h = lm.adapter.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            lm.model(**inputs)
    finally:
        h.remove()
    table = lm.model.get_input_embeddings()(inputs["input_ids"])
    replaced = (seen["emb"] - table).abs().amax(-1) > 0
    vis = lm.adapter.visual_mask(inputs["input_ids"])
    assert torch.equal(replaced, vis)
    assert vis.sum(1).min() > 0


# ---- SAP on every family ------------------------------------------------------------------------------------------
from PIL import Image  # noqa: E402

from lostattn.sap.distributions import MODES, make_guidance, token_scores  # noqa: E402
from lostattn.sap.replace import SAPConfig, sap  # noqa: E402
from lostattn.tasks.types import VQASample  # noqa: E402


def _images():
    """Images of three shapes (square, wide, tall), so that any-resolution families tile, unpad and place newlines
    differently, and Qwen's windows reorder its merged patches."""
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())
            for h, w in ((112, 112), (60, 100), (100, 60))]


@pytest.fixture(scope="module")
def shaped():
    return [VQASample(id=f"img{i}", question="What is in the image? Answer with one word.", answer="x",
                      family="probe", kind="short", image=im) for i, im in enumerate(_images())]


def _logits(lm, inputs, cfg=None):
    with torch.no_grad():
        if cfg is None:
            return lm.model(**inputs).logits
        with sap(lm, cfg, inputs, keys=[str(i) for i in range(inputs["input_ids"].shape[0])]):
            return lm.model(**inputs).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_every_sap_mode_runs_and_lam_zero_is_vanilla(family, family_lm, shaped):
    lm = family_lm(family)
    inputs = prepare_inputs(lm, shaped)
    ref = _logits(lm, inputs)
    n_vis = lm.adapter.visual_mask(inputs["input_ids"]).sum(1).tolist()
    for mode in MODES:
        guide = make_guidance(SAPConfig(mode=mode), lm, inputs, [s.id for s in shaped])
        assert [g.numel() for g in guide] == n_vis
        assert all(torch.isfinite(g).all() and (g > 0).all() and abs(float(g.sum()) - 1) < 1e-5 for g in guide)
        assert torch.equal(_logits(lm, inputs, SAPConfig(mode=mode, lam=0.0)), ref)
        forced = _logits(lm, inputs, SAPConfig(mode=mode, lam=0.0, force_recompute=True))
        torch.testing.assert_close(forced, ref, rtol=1e-4, atol=1e-5)
        out = _logits(lm, inputs, SAPConfig(mode=mode, lam=1.0))
        assert torch.equal(out[:, :-1], ref[:, :-1])  # only the last query is replaced
        if mode != "uniform" or lm.adapter.official.rescale:
            assert not torch.allclose(out[:, -1], ref[:, -1])


def _tag_patches(lm, inputs):
    """Per image, a map (tiles, patches) holding a distinct number for every patch of every tile."""
    layout = lm.adapter.layout
    maps, start = [], 0.0
    for t in layout.patch_pixels(lm, inputs):
        n = t.shape[0] * t.shape[1]
        maps.append(torch.arange(start, start + n).reshape(t.shape[0], t.shape[1]))
        start += n
    return maps


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision"])
def test_pack_puts_each_patch_value_where_the_model_puts_that_patch(family, family_lm, shaped):
    """Make the projector output each patch's own number, run the model's feature path, and compare with `pack` of
    the same numbers: every visual token carries the patch the model put there (newlines: NaN in pack, the newline
    parameter in the model), tiles, unpadding and OneVision's downsampling included."""
    lm = family_lm(family)
    inputs = prepare_inputs(lm, shaped)
    layout = lm.adapter.layout
    tags = torch.cat([m.reshape(-1) for m in _tag_patches(lm, inputs)])
    proj = lm.model.model.multi_modal_projector
    hidden = lm.adapter.text_config.hidden_size

    def tagged(module, args, out):
        return tags.view(*out.shape[:2], 1).expand(*out.shape[:2], hidden).to(out.dtype)

    h = proj.register_forward_hook(tagged)
    try:
        with torch.no_grad():
            kw = {k: inputs[k] for k in ("pixel_values", "image_sizes") if k in inputs}
            feats = lm.model.model.get_image_features(**kw).pooler_output
    finally:
        h.remove()
    feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats.reshape(-1, hidden)
    packed = torch.cat(layout.pack(lm, inputs, _tag_patches(lm, inputs)))
    assert packed.shape[0] == feats.shape[0] == int(lm.adapter.visual_mask(inputs["input_ids"]).sum())
    patch = ~torch.isnan(packed)
    torch.testing.assert_close(feats[patch, 0].float(), packed[patch], rtol=0, atol=1e-4)
    if family != "llava":
        assert (~patch).sum() > 0  # image-newline tokens exist and hold no patch


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_merged_token_pixels_rebuild_the_processed_image(family, family_lm, shaped):
    """The pixels given to each merged token, laid out on the merged grid row-major, are the image the processor
    resized (its size from image_grid_thw), to rounding."""
    lm = family_lm(family)
    inputs = prepare_inputs(lm, shaped)
    regions = lm.adapter.layout.patch_pixels(lm, inputs)
    for s, reg, (t, gh, gw) in zip(shaped, regions, inputs["image_grid_thw"].tolist()):
        m = lm.processor.image_processor.merge_size
        side = reg.shape[-1]
        img = reg[0].reshape(gh // m, gw // m, 3, side, side).permute(2, 0, 3, 1, 4).reshape(3, gh // m * side, -1)
        want = torch.from_numpy(np.array(s.image.resize((img.shape[2], img.shape[1]), resample=3)))
        want = want.permute(2, 0, 1).float() / 255
        assert (img - want).abs().max() < 0.02


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_vis_enc_attn_matches_a_direct_computation(family, family_lm, shaped):
    """vis_enc_attn of the last vision block against q and k taken from the block's fused projection and rotary
    embedding by hand: softmax, max over each 2x2 merge group (queries and keys), mean over queries and heads, and
    (Qwen2.5-VL) window order undone."""
    import importlib

    lm = family_lm(family)
    inputs = prepare_inputs(lm, shaped[:1])
    tower = lm.model.model.visual
    blk = tower.blocks[-1]
    seen = {}
    h1 = blk.attn.register_forward_pre_hook(lambda m, a, kw: seen.update(x=a[0] if a else kw["hidden_states"],
                                                                          kw=kw), with_kwargs=True)
    try:
        with torch.no_grad():
            tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    finally:
        h1.remove()
    mod = importlib.import_module(type(blk.attn).__module__)
    x = seen["x"]
    L = x.shape[0]
    heads = blk.attn.num_heads
    q, k, _ = blk.attn.qkv(x).reshape(L, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = seen["kw"]["position_embeddings"]
    q, k = mod.apply_rotary_pos_emb_vision(q, k, cos, sin)
    p = torch.softmax(torch.einsum("qhd,khd->hqk", q.float(), k.float()) * blk.attn.scaling, -1)
    g = L // 4
    pooled = p.reshape(heads, g, 4, g, 4).amax(2).amax(3).mean(1).mean(0)
    if family == "qwen2_5_vl":
        win, _ = mod.get_vision_window_index(inputs["image_grid_thw"], spatial_merge_size=2,
                                             window_size=tower.window_size, patch_size=tower.patch_size, kwargs={})
        assert not torch.equal(win, torch.arange(g))  # the windows do reorder this image's groups
        pooled = pooled[torch.argsort(win)]
    got = lm.adapter.layout.received_attention(lm, inputs, len(tower.blocks) - 1)[0][0]
    torch.testing.assert_close(got, pooled, rtol=1e-4, atol=1e-6)
    scores = token_scores(SAPConfig(mode="vis_enc_attn", vis_layer="last"), lm, inputs)[0]
    torch.testing.assert_close(scores, pooled, rtol=1e-4, atol=1e-6)


# ---- residual capture on every family -------------------------------------------------------------------------------
from lostattn.residual.capture import ResidualCapture  # noqa: E402


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_identity_and_hook_invariance(family, family_lm, shaped):
    """Hooks change nothing (logits bit-identical); X_out = X_in + ΔX_attn + ΔX_ffn; each layer's input is the
    previous layer's output (plus the family's update between layers), on a left-padded batch of differently shaped
    images."""
    lm = family_lm(family)
    inputs = prepare_inputs(lm, shaped)
    with torch.no_grad():
        ref = lm.model(**inputs).logits
        with ResidualCapture(lm, keep=True) as cap:
            out = lm.model(**inputs).logits
    assert torch.equal(out, ref)
    recs = [cap.records[i] for i in range(lm.adapter.num_layers)]
    for r in recs:
        torch.testing.assert_close(r.x_in + r.dx_attn + r.dx_ffn, r.x_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(recs, recs[1:]):  # an update between layers (Qwen3-VL's ΔX_deepstack) is its own hook point
        if a.between:
            torch.testing.assert_close(a.x_out + sum(a.between.values()), b.x_in, rtol=0, atol=1e-6)
        else:
            assert torch.equal(a.x_out, b.x_in)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_inputs_carry_mm_token_type_ids(family, family_lm, shaped):
    """Qwen's 3-D rotary positions need mm_token_type_ids (transformers 5 refuses multimodal inputs without them, and
    earlier releases fell back to 1-D positions silently); the processor's output is passed whole, so the model
    gets them."""
    lm = family_lm(family)
    inputs = prepare_inputs(lm, shaped[:1])
    assert "mm_token_type_ids" in inputs
    assert int(inputs["mm_token_type_ids"].bool().sum()) == int(lm.adapter.visual_mask(inputs["input_ids"]).sum())
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        with_ids = lm.model(**inputs).logits
        try:  # Qwen2-VL refuses; Qwen2.5-VL silently uses 1-D positions, which changes every logit after the image
            assert not torch.allclose(lm.model(**without).logits, with_ids)
        except ValueError as err:
            assert "mm_token_type_ids" in str(err)
