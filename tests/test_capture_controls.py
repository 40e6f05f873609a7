"""Residual capture invariants, the noise controls (official and decoder_layers) and the analysis built on them."""
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from lostattn.residual.analysis import layer_curves, residual_metrics, rope_baseline, table1
from lostattn.residual.capture import ResidualCapture, no_rope, token_masks
from lostattn.residual.controls import control, noise_delta, noise_ffn, noise_qkv
from lostattn.residual.metrics import MetricSpec, RankRule, update_metrics
from lostattn.models.prompts import prepare_inputs


@pytest.fixture(scope="module")
def inputs(lm, samples):
    return prepare_inputs(lm, samples[:4])  # mixed prompt lengths: left padding is exercised


def test_hooks_do_not_change_outputs_and_are_removed(lm, inputs):
    with torch.no_grad():
        ref = lm.model(**inputs).logits
        with ResidualCapture(lm, keep=True) as cap:
            hooked = lm.model(**inputs).logits
        after = lm.model(**inputs).logits
    assert torch.equal(ref, hooked) and torch.equal(ref, after)
    assert len(cap.records) == lm.adapter.num_layers
    for layer in lm.adapter.layers:
        assert not layer._forward_hooks and not layer._forward_pre_hooks
        assert not layer.self_attn._forward_hooks and not layer.mlp._forward_hooks


def test_residual_identity(lm, inputs):
    with torch.no_grad(), ResidualCapture(lm, keep=True) as cap:
        lm.model(**inputs)
    recs = cap.records
    for i in range(lm.adapter.num_layers):
        r = recs[i]
        torch.testing.assert_close(r.x + r.d_attn + r.d_ffn, r.x_out, rtol=1e-6, atol=1e-6)
        if i + 1 < lm.adapter.num_layers:
            torch.testing.assert_close(recs[i + 1].x, r.x_out, rtol=0, atol=0)
        assert r.d_attn.abs().max() > 0 and r.d_ffn.abs().max() > 0


def test_captured_updates_are_the_modules_outputs(lm, inputs):
    """dX_attn / dX_ffn are what attention and MLP compute from the normed stream (checked by recomputation)."""
    i = 1
    layer = lm.adapter.layers[i]
    with torch.no_grad():
        with ResidualCapture(lm, layers=[i], keep=True) as cap:
            lm.model(**inputs)
        r = cap.records[i]
        mid = r.x + r.d_attn
        torch.testing.assert_close(layer.mlp(layer.post_attention_layernorm(mid)), r.d_ffn)


def test_token_masks_partition_the_prompt(lm, inputs):
    m = token_masks(lm, inputs)
    assert torch.equal(m["visual"] | m["text"], m["all"])
    assert not (m["visual"] & m["text"]).any()
    assert (m["visual"].sum(1) == lm.model.config.image_seq_length).all()
    assert (~m["all"]).any()  # the batch has padding, which no scope counts


def test_streaming_metrics_rows_and_reproducibility(lm, samples):
    kw = dict(layers=[0, 2], scopes=("all", "visual", "text"), batch_size=3, seed=1, progress=False)
    a = residual_metrics(lm, samples[:5], **kw)
    b = residual_metrics(lm, samples[:5], **kw)
    # 5 samples x 2 layers x 3 scopes x (vanilla attention + ffn + 3 controls' one module each)
    assert len(a) == 5 * 2 * 3 * 5
    pd.testing.assert_frame_equal(a, b)
    t = table1(a)
    assert list(t["module"]) == ["Noise Δ", "Noise QKV", "Noise FFN", "Attention", "FFN"]
    assert ((a["rid"] >= 0) & (a["rid"] <= 1 + 2**0.5)).all()  # dS <= 1, l2 dD <= sqrt(2)
    assert set(a["spec"]) == {"official"} and set(a["controls"]) == {"official"}
    assert (a["mixig"].abs() <= 1).all()  # normalised TME
    torch.testing.assert_close(torch.tensor(a["mixig"].values), torch.tensor(a["mixig_state"].values))
    assert {"mixig_delta", "tme_delta", "tme_out"} <= set(a.columns)
    assert set(a[a.condition == "noise_ffn"]["module"]) == {"ffn"}
    assert "mixig_delta" in layer_curves(a, ("rid", "mixig", "mixig_delta"))


def test_rows_equal_the_metrics_of_the_captured_states(lm, samples, inputs):
    """Grouping samples by token count and gathering their scope's rows gives each sample its own numbers."""
    layers = [1, 2]
    with torch.no_grad(), ResidualCapture(lm, layers, keep=True) as cap:
        lm.model(**inputs)
    masks = token_masks(lm, inputs)
    for spec in (MetricSpec.official(), MetricSpec.paper_text()):
        rows = residual_metrics(lm, samples[:4], layers, ("all", "visual"), spec, conditions=("vanilla",),
                                batch_size=4, progress=False)
        for (b, scope, layer) in ((0, "all", 1), (3, "visual", 2), (2, "all", 2)):
            rec, idx = cap.records[layer], masks[scope][b]
            x, mid, out = rec.x[b, idx], (rec.x + rec.d_attn)[b, idx], rec.x_out[b, idx]
            want = {"attention": update_metrics(x, mid.double() - x.double(), spec),
                    "ffn": update_metrics(mid, out.double() - mid.double(), spec,
                                          reference=x if spec.ffn_reference == "input" else None)}
            for module, m in want.items():
                row = rows[(rows["sample"] == samples[b].id) & (rows.layer == layer) & (rows.scope == scope)
                           & (rows.module == module)].iloc[0]
                assert row["n_tokens"] == int(idx.sum())
                for k in ("rid", "dS", "dD", "mixig", "mixig_delta", "erank_in", "projector_rank"):
                    assert row[k] == pytest.approx(float(m[k]), rel=1e-9, abs=1e-12), (spec.name, module, k)


def test_reused_stream_states_equal_recomputed_ones(lm, samples):
    kw = dict(layers=None, scopes=("all", "text"), conditions=("vanilla",), batch_size=3, progress=False)
    for spec in ("official", "paper_text"):
        a = residual_metrics(lm, samples[:3], spec=spec, **kw)
        b = residual_metrics(lm, samples[:3], spec=spec, reuse=False, **kw)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-10, atol=1e-12)


def test_rank_rule_in_place_of_a_spec_is_the_paper_text_spec(lm, samples):
    """The positional call notebooks make: a RankRule where the spec goes means the paper-text formulas."""
    kw = dict(conditions=("vanilla", "noise_qkv"), batch_size=3, seed=0, progress=False)
    old = residual_metrics(lm, samples[:3], [0, 1], ("all",), RankRule("energy", 0.99), **kw)
    new = residual_metrics(lm, samples[:3], [0, 1], ("all",), spec=MetricSpec.paper_text(), controls="decoder_layers", **kw)
    pd.testing.assert_frame_equal(old, new)
    assert set(old["spec"]) == {"paper_text"} and set(old["controls"]) == {"decoder_layers"}
    tol = residual_metrics(lm, samples[:2], [0], ("all",), RankRule("tol", 1e-3), conditions=("vanilla",),
                           progress=False)
    assert set(tol["spec"]) == {"paper_text[rank=tol:0.001]"}
    with pytest.raises(ValueError, match="controls"):
        residual_metrics(lm, samples[:2], [0], controls="theirs", progress=False)


def test_noise_delta_matches_row_norms_and_restores(lm, inputs):
    i = 2
    with torch.no_grad():
        ref = lm.model(**inputs).logits
        with ResidualCapture(lm, layers=[i], keep=True) as cap:
            lm.model(**inputs)
        clean = cap.records[i].d_attn
        with noise_delta(lm, layers=[i], seed=3), ResidualCapture(lm, layers=[i], keep=True) as cap:
            lm.model(**inputs)
        noisy = cap.records[i].d_attn
        torch.testing.assert_close(noisy.norm(dim=-1), clean.norm(dim=-1), rtol=1e-4, atol=1e-6)
        cos = torch.nn.functional.cosine_similarity(noisy.flatten(), clean.flatten(), dim=0)
        assert abs(cos) < 0.1
        torch.testing.assert_close(lm.model(**inputs).logits, ref, rtol=0, atol=0)


def test_noise_qkv_matches_statistics_and_restores(lm, inputs):
    attn = lm.adapter.attn(1)
    before = {n: p.detach().clone() for n, p in attn.named_parameters()}
    for preset in ("official", "decoder_layers"):
        with noise_qkv(lm, layers=[1], seed=0, preset=preset):
            w, w0 = attn.q_proj.weight, before["q_proj.weight"]
            assert not torch.equal(w, w0)
            assert w.mean().item() == pytest.approx(w0.mean().item(), abs=3 * w0.std().item() / w0.numel() ** 0.5)
            assert w.std().item() == pytest.approx(w0.std().item(), rel=0.05)
            assert torch.equal(attn.o_proj.weight, before["o_proj.weight"])
        for n, p in attn.named_parameters():
            assert torch.equal(p, before[n])


def test_official_controls_change_the_model_and_restore_it_exactly(lm, inputs):
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with torch.no_grad():
        ref = lm.model(**inputs).logits
        for fn in (noise_qkv, noise_ffn):
            with fn(lm) as names:
                assert any("vision_tower" in n for n in names) and any("language_model" in n for n in names)
                assert not any(n.endswith("bias") for n in names)
                assert not torch.allclose(lm.model(**inputs).logits, ref)
            torch.testing.assert_close(lm.model(**inputs).logits, ref, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="inside"):
            with noise_qkv(lm):
                raise RuntimeError("inside")
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, state[k]), k


# A model with every shape the official scan meets: a vision tower with q/k/v and biases, a CLIP-style MLP (fc1,
# fc2), a fused `qkv` module (Qwen2.5-VL's vision blocks, which the scan does not match), a torch
# MultiheadAttention (in_proj_weight) and a decoder whose projections have biases.
class _Attn(nn.Module):
    def __init__(self, d, out="o_proj"):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        setattr(self, out, nn.Linear(d, d))


class _Mlp(nn.Module):
    def __init__(self, d, clip=False):
        super().__init__()
        if clip:
            self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        else:
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)


class _Block(nn.Module):
    def __init__(self, d, vision=False):
        super().__init__()
        self.self_attn = _Attn(d, "out_proj" if vision else "o_proj")
        self.mlp = _Mlp(d, clip=vision)


class _Fused(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)


class _Toy(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        torch.manual_seed(0)
        self.vision = nn.ModuleList([_Block(d, vision=True) for _ in range(2)])
        self.fused = _Fused(d)
        self.pool = nn.MultiheadAttention(d, 2)
        self.decoder = nn.ModuleList([_Block(d) for _ in range(3)])


@pytest.fixture()
def toy():
    model = _Toy()
    adapter = SimpleNamespace(layers=model.decoder, num_layers=3, attn=lambda i: model.decoder[i].self_attn,
                              mlp=lambda i: model.decoder[i].mlp)
    return SimpleNamespace(model=model, adapter=adapter)


def _changed(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_official_noise_qkv_scope_biases_and_seed(toy):
    m = toy.model
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    with noise_qkv(toy, preset="official") as names:
        changed = _changed(m, before)
        expected = {f"{blk}.{i}.self_attn.{a}_proj.weight" for blk, n in (("vision", 2), ("decoder", 3))
                    for i in range(n) for a in "qkv"} | {"pool.in_proj_weight"}
        assert changed == expected == set(names)  # no bias, no o/out_proj, no fused `qkv`, no MLP
        for n in expected:
            w, w0 = dict(m.named_parameters())[n], before[n]
            # N(mean, population std) of the tensor itself, drawn from a generator seeded 42 for this tensor
            g = torch.Generator().manual_seed(42)
            draw = torch.empty(w.shape).normal_(w0.mean().item(), w0.std(unbiased=False).item(), generator=g)
            assert torch.equal(w, draw)
            assert w.std(unbiased=False).item() == pytest.approx(w0.std(unbiased=False).item(), rel=0.1)
        q, k = m.decoder[0].self_attn.q_proj.weight, m.decoder[2].self_attn.k_proj.weight
        z = lambda t: (t - t.mean()) / t.std()  # noqa: E731  same seed, same shape: the same standard draw
        torch.testing.assert_close(z(q), z(k), rtol=1e-4, atol=1e-4)
    assert not _changed(m, before)
    with noise_qkv(toy, layers=[1], preset="official"):
        changed = _changed(m, before)
        assert any(n.startswith("vision.") for n in changed) and any(n.startswith("decoder.1.") for n in changed)
        assert not any(n.startswith(("decoder.0.", "decoder.2.")) for n in changed)
    assert not _changed(m, before)


def test_ours_noise_qkv_decoder_layers_with_biases(toy):
    m = toy.model
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    with noise_qkv(toy, layers=[0, 2], seed=3, preset="decoder_layers"):
        changed = _changed(m, before)
        assert changed == {f"decoder.{i}.self_attn.{a}_proj.{t}" for i in (0, 2) for a in "qkv"
                           for t in ("weight", "bias")}
    assert not _changed(m, before)


def test_noise_ffn_official_and_ours(toy):
    m = toy.model
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    with noise_ffn(toy) as names:
        changed = _changed(m, before)
        expected = {f"decoder.{i}.mlp.{a}_proj.weight" for i in range(3) for a in ("gate", "up", "down")} | \
            {f"vision.{i}.mlp.{a}.weight" for i in range(2) for a in ("fc1", "fc2")}
        assert changed == expected == set(names)
        w, w0 = m.decoder[1].mlp.up_proj.weight, before["decoder.1.mlp.up_proj.weight"]
        assert w.mean().item() == pytest.approx(w0.mean().item(), abs=4 * w0.std().item() / w0.numel() ** 0.5)
    assert not _changed(m, before)
    with noise_ffn(toy, layers=[1], preset="decoder_layers"):
        assert _changed(m, before) == {f"decoder.1.mlp.{a}_proj.{t}" for a in ("gate", "up", "down")
                                       for t in ("weight", "bias")}
    assert not _changed(m, before)
    with pytest.raises(ValueError, match="preset"):
        with noise_ffn(toy, preset="paper"):
            pass
    with pytest.raises(ValueError, match="condition"):
        control("noise_mlp", toy)


def test_no_rope_changes_outputs_and_eps_rope(lm, inputs, samples):
    with torch.no_grad():
        ref = lm.model(**inputs).logits
        with no_rope(lm):
            off = lm.model(**inputs).logits
        assert not torch.allclose(ref, off)
        torch.testing.assert_close(lm.model(**inputs).logits, ref, rtol=0, atol=0)
    eps = rope_baseline(lm, samples[:3], layers=[0, 1], progress=False)
    assert len(eps) == 3 * 2 and (eps["rid"] > 0).all() and set(eps["spec"]) == {"official"}
    text = rope_baseline(lm, samples[:3], [0, 1], ("all",), RankRule("energy", 0.99), progress=False)
    assert set(text["spec"]) == {"paper_text"}
    assert not text["dD"].equals(eps["dD"])


def test_metric_rows_do_not_depend_on_the_batch(lm, samples):
    """Every condition's rows of a sample are the same whichever samples it is batched with (Noise Δ is drawn per
    sample; the weight noise is the same for every batch), up to the float rounding of padded batches."""
    from lostattn.residual.analysis import residual_metrics

    few = samples[:5]
    keys = ["sample", "layer", "condition", "module", "scope"]
    cols = ["rid", "dS", "dD", "mixig", "mixig_delta"]
    for controls in ("official", "decoder_layers"):
        a = residual_metrics(lm, few, batch_size=1, progress=False, controls=controls).set_index(keys)[cols]
        b = residual_metrics(lm, few, batch_size=4, progress=False, controls=controls).set_index(keys)[cols]
        assert a.index.sort_values().equals(b.index.sort_values())
        diff = (a - b.loc[a.index]).abs().max().max()
        assert diff < 1e-5, (controls, diff)  # ~1e-6 measured: float32 forwards of padded batches
