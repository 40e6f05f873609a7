"""The newer families (Qwen3-VL, Gemma 3, InternVL, SmolVLM, Mistral 3) through what differs in them: the updates
that reach their residual stream, their hook points, their visual tokens against the markers around them, their
layouts' token groups, and `lostattn eval` with every SAP mode under both protocols."""
import json

import pytest
import torch

from lostattn.cli import main as cli
from lostattn.models.adapters import HOOK_POINTS, MODEL_FAMILIES
from lostattn.models.prompts import prepare_inputs
from lostattn.residual.capture import ResidualCapture
from lostattn.sap.distributions import MODES
from lostattn.tasks.synthetic import SyntheticBenchmark

from conftest import FAMILIES, PAPER_FAMILIES

NEWER = tuple(f for f in FAMILIES if f not in PAPER_FAMILIES)


@pytest.fixture(scope="module")
def few():
    return SyntheticBenchmark().samples("test", limit_per_family=1)[:2]


def test_the_newer_families_are_supported():
    assert set(NEWER) == {"qwen3_vl", "gemma3", "internvl", "smolvlm", "mistral3"}


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_points_are_the_papers_symbols(family, family_lm, few):
    lm = family_lm(family)
    points = lm.adapter.hook_points()
    assert points[:5] == HOOK_POINTS == ("X_in", "ΔX_attn", "X_mid", "ΔX_ffn", "X_out")
    assert points[5:] == tuple(MODEL_FAMILIES[family].between_layers)
    inputs = prepare_inputs(lm, few)
    with torch.no_grad(), ResidualCapture(lm, keep=True) as cap:
        lm.model(**inputs)
    rec = cap.records[0]
    for name in points:
        assert rec.hook_point(name).shape == rec.x_in.shape
    assert torch.equal(rec.hook_point("X_mid"), rec.x_in + rec.dx_attn)
    assert torch.equal(rec.x, rec.x_in) and torch.equal(rec.d_attn, rec.dx_attn)  # the earlier names


def test_gemma3_updates_are_the_normalised_outputs(family_lm, few):
    """Gemma 3 adds post_attention_layernorm(attention output) and post_feedforward_layernorm(MLP output): ΔX_attn
    and ΔX_ffn are those, not the raw attention / MLP outputs, and the identity holds with them."""
    lm = family_lm("gemma3")
    inputs = prepare_inputs(lm, few)
    layer = lm.adapter.layers[1]
    raw = {}
    def keep(module, args, out):
        raw["attn"] = (out[0] if isinstance(out, tuple) else out).detach()

    h = layer.self_attn.register_forward_hook(keep)
    try:
        with torch.no_grad(), ResidualCapture(lm, keep=True) as cap:
            lm.model(**inputs)
    finally:
        h.remove()
    rec = cap.records[1]
    torch.testing.assert_close(layer.post_attention_layernorm(raw["attn"]), rec.dx_attn)
    assert not torch.allclose(raw["attn"], rec.dx_attn)
    torch.testing.assert_close(rec.x_in + rec.dx_attn + rec.dx_ffn, rec.x_out, rtol=1e-5, atol=1e-5)


def test_qwen3_deepstack_is_a_named_update_between_layers(family_lm, few):
    """Qwen3-VL adds deepstack visual features after decoder layers 0 and 1, outside the layers: ΔX_deepstack is
    X_in(i+1) - X_out(i), non-zero exactly at the visual tokens of those layers, and absent after the others."""
    lm = family_lm("qwen3_vl")
    inputs = prepare_inputs(lm, few)
    n_deep = len(lm.model.config.vision_config.deepstack_visual_indexes)
    with torch.no_grad(), ResidualCapture(lm, keep=True) as cap:
        lm.model(**inputs)
    vis = lm.adapter.visual_mask(inputs["input_ids"])
    recs = [cap.records[i] for i in range(lm.adapter.num_layers)]
    for i, (a, b) in enumerate(zip(recs, recs[1:])):
        if i < n_deep:
            d = a.between["ΔX_deepstack"]
            torch.testing.assert_close(a.x_out + d, b.x_in, rtol=0, atol=1e-6)
            assert torch.equal(d.abs().amax(-1) > 0, vis)
        else:
            assert a.between == {} and torch.equal(a.x_out, b.x_in)
    assert not hasattr(lm.adapter.language_model, "__dict__") or \
        "_deepstack_process" not in lm.adapter.language_model.__dict__  # the wrapper is gone after the context


MARKERS = {"qwen3_vl": ["<|vision_start|>", "<|vision_end|>"], "gemma3": ["<start_of_image>", "<end_of_image>"],
           "internvl": ["<img>", "</img>"], "smolvlm": ["<fake_token_around_image>", "<global-img>", "<row_1_col_1>"],
           "mistral3": ["[IMG_BREAK]", "[IMG_END]"]}


@pytest.mark.parametrize("family", NEWER)
def test_markers_around_the_image_are_text_not_visual(family, family_lm, few):
    """The markers each processor writes around the image tokens are in the prompt and outside the visual span
    (test_families checks the span against where the model writes image features), and the prompt has one BOS."""
    lm = family_lm(family)
    inputs = prepare_inputs(lm, few[:1])
    ids = inputs["input_ids"][0]
    tok = lm.processor.tokenizer
    vis = lm.adapter.visual_mask(inputs["input_ids"])[0]
    for marker in MARKERS[family]:
        where = ids == tok.convert_tokens_to_ids(marker)
        assert where.any(), marker
        assert not (where & vis).any()
    if tok.bos_token_id is not None:
        assert int((ids == tok.bos_token_id).sum()) <= 1


@pytest.mark.parametrize("family", ["gemma3", "internvl", "smolvlm", "mistral3"])
def test_token_groups_partition_each_tiles_patches(family, family_lm, few):
    """Every token's group is a square block of neighbouring patches, and the groups of a tile cover each of its
    patches exactly once (the pixel shuffle read from the model, the pooling, the merger)."""
    lm = family_lm(family)
    layout = lm.adapter.layout
    inputs = prepare_inputs(lm, few[:1])
    tile = layout.tiles(lm, inputs)[0][0]
    p = layout.patch_size(lm)
    rows, cols = tile.shape[1] // p, tile.shape[2] // p
    g = layout.groups(lm, rows, cols)
    assert torch.equal(g.reshape(-1).sort().values, torch.arange(rows * cols))
    f = int(g.shape[1] ** 0.5)
    r, c = g // cols, g % cols
    assert ((r.amax(1) - r.amin(1)) == f - 1).all() and ((c.amax(1) - c.amin(1)) == f - 1).all()
    n_tokens = sum(t.shape[0] for t in layout.tiles(lm, inputs)) * g.shape[0]
    assert n_tokens == int(lm.adapter.visual_mask(inputs["input_ids"]).sum())


SHUFFLE_INPUT = {"internvl": "multi_modal_projector", "smolvlm": "connector.modality_projection"}


@pytest.mark.parametrize("family", ["internvl", "smolvlm"])
def test_shuffled_groups_match_the_models_features(family, family_lm, few):
    """Make the vision tower output each patch's own number and run the model's feature path up to the projector
    that follows the pixel shuffle: each visual token's features are the numbers of the patches `groups` assigns to
    it, on every tile."""
    from lostattn.models.adapters import attribute_path

    from PIL import Image

    from lostattn.tasks.types import VQASample

    g = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(112, 112, 3, generator=g) * 255).to(torch.uint8).numpy())  # several tiles
    lm = family_lm(family)
    inputs = prepare_inputs(lm, [VQASample(id="big", question="What is it?", answer="x", family="probe",
                                           kind="short", image=image)])
    inner = lm.model.model
    layout = lm.adapter.layout
    drops_cls = int(lm.adapter.spec.vision_drops_cls)
    seen = {}

    def tagged(module, args, out):
        h = out.last_hidden_state
        tags = torch.arange(h.shape[1], dtype=h.dtype) - drops_cls  # a CLS token gets -1
        out.last_hidden_state = tags.view(1, -1, 1).expand_as(h).contiguous()
        return out

    hooks = [attribute_path(inner, SHUFFLE_INPUT[family]).register_forward_pre_hook(lambda m, a: seen.update(x=a[0])),
             lm.adapter.vision_tower.register_forward_hook(tagged)]
    try:
        with torch.no_grad():
            kw = {k: inputs[k] for k in ("pixel_values", "pixel_attention_mask") if k in inputs}
            inner.get_image_features(**kw)
    finally:
        for h in hooks:
            h.remove()
    tiles = layout.tiles(lm, inputs)[0]
    side = tiles.shape[-1] // layout.patch_size(lm)
    groups = layout.groups(lm, side, side)
    c = lm.model.config.vision_config.hidden_size
    x = seen["x"].reshape(-1, groups.shape[0], groups.shape[1], c)[..., 0]  # (tiles, G, f^2): patch numbers
    assert x.shape[0] == tiles.shape[0] > 1  # several tiles (and the thumbnail / global image)
    assert (x.long() == groups).all()


def _records(path):
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(x) for x in lines[1:]]


@pytest.mark.parametrize("family", NEWER)
def test_eval_every_mode_under_both_protocols(family, checkpoints, tmp_path, capsys):
    ckpt = checkpoints(family)
    recipe = MODEL_FAMILIES[family]
    # official: vanilla and every mode; controlled: the image-based modes, whose inputs the protocols set differently
    # (the vision layer read, the complexity source); the random modes differ only in decoding, covered above
    runs = [("official", m) for m in ("vanilla", *MODES)] + [("controlled", m) for m in ("vis_enc_attn", "complexity")]
    for protocol, mode in runs:
        if True:
            out = tmp_path / f"{protocol}-{mode}.jsonl"
            sap = [] if mode == "vanilla" else ["--sap-mode", mode, "--lam", "1"]
            assert cli(["eval", "--model", ckpt, "--protocol", protocol, *sap, "--limit", "1", "--max-new-tokens",
                        "2", "--batch-size", "6", "--out", str(out)]) == 0, capsys.readouterr().err
            head, recs = _records(out)
            assert len(recs) == 6 and head["run"]["protocol"]["name"] == protocol
            assert head["run"]["protocol"]["family"] == recipe.model_type
            if mode != "vanilla":
                assert head["run"]["sap"]["mode"] == mode
