"""Residual capture invariants and the noise controls."""
import pytest
import torch

from lostattn.analysis import residual_metrics, rope_baseline, table1
from lostattn.capture import ResidualCapture, no_rope, token_masks
from lostattn.controls import noise_delta, noise_qkv
from lostattn.prompts import prepare_inputs


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
    # 5 samples x 2 layers x 3 scopes x (vanilla attention + ffn + 2 controls' attention)
    assert len(a) == 5 * 2 * 3 * 4
    import pandas as pd
    pd.testing.assert_frame_equal(a, b)
    t = table1(a)
    assert list(t["module"]) == ["Noise Δ", "Noise QKV", "Attention", "FFN"]
    assert ((a["rid"] >= 0) & (a["rid"] <= 2)).all()


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
    with noise_qkv(lm, layers=[1], seed=0):
        w, w0 = attn.q_proj.weight, before["q_proj.weight"]
        assert not torch.equal(w, w0)
        assert w.mean().item() == pytest.approx(w0.mean().item(), abs=3 * w0.std().item() / w0.numel() ** 0.5)
        assert w.std().item() == pytest.approx(w0.std().item(), rel=0.05)
        assert torch.equal(attn.o_proj.weight, before["o_proj.weight"])
    for n, p in attn.named_parameters():
        assert torch.equal(p, before[n])


def test_no_rope_changes_outputs_and_eps_rope(lm, inputs, samples):
    with torch.no_grad():
        ref = lm.model(**inputs).logits
        with no_rope(lm):
            off = lm.model(**inputs).logits
        assert not torch.allclose(ref, off)
        torch.testing.assert_close(lm.model(**inputs).logits, ref, rtol=0, atol=0)
    eps = rope_baseline(lm, samples[:3], layers=[0, 1], progress=False)
    assert len(eps) == 3 * 2 and (eps["rid"] > 0).all()
