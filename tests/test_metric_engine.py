"""The metric engine: the Gram path equals the SVD, the SVD fallback catches what the Gram cannot resolve, batched
equals one by one, tokens and dimensions swap, and the stream's reused states equal recomputed ones."""
from dataclasses import replace

import pytest
import torch

from lostattn.residual.metrics import (FLOAT64_EPS, MetricSpec, RankRule, State, Stream, erank, rid, sym_gram,
                              update_metrics)

SPECS = (MetricSpec.official(), MetricSpec.paper_text())


def _residual_like(B, S, H, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, H, generator=g, dtype=torch.float64)
    scale = torch.tensor([20.0, 8.0, 3.0], dtype=torch.float64)
    x += (torch.randn(B, S, 3, generator=g, dtype=torch.float64) * scale) @ torch.randn(B, 3, H, generator=g,
                                                                                      dtype=torch.float64)
    x[:, 0] *= 25
    return x


def test_sym_gram_blocks_equal_the_product():
    z = _residual_like(2, 300, 420, 0)  # m >= 256: the block path on CPU
    g = sym_gram(z)
    assert torch.equal(g, g.transpose(-1, -2))
    torch.testing.assert_close(g, z @ z.transpose(-1, -2), rtol=1e-12, atol=1e-9)


def test_gram_spectrum_equals_svd_and_fallback_resolves_tiny_singular_values():
    x = _residual_like(1, 280, 400, 1)
    st = State(x, basis=True)
    s = torch.linalg.svdvals(x)
    assert not st.exact.any()
    torch.testing.assert_close(st.s, s, rtol=0, atol=1e-11 * float(s.max()))
    u = torch.linalg.svd(x, full_matrices=False)[0]
    top = (st.u[0, :, :5].T @ u[0, :, :5]).abs()
    torch.testing.assert_close(top, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-10)  # same top directions
    rep = x.clone()
    rep[0, 100:200] = rep[0, 100]  # repeated tokens: rank 181, sigma_min ~ 1e-15 sigma_max
    st = State(rep, basis=True)
    s = torch.linalg.svdvals(rep)
    assert st.exact.all()
    torch.testing.assert_close(st.s, s, rtol=0, atol=1e-13 * float(s.max()))
    assert abs(float(st.erank()) - float(erank(rep))) < 1e-10
    r64 = RankRule("numerical", FLOAT64_EPS)
    assert int(rid(rep, rep + 1.0, replace(MetricSpec.official(), rank=r64)).rank) == 181


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_tokens_and_dimensions_swap(spec):
    # RID is symmetric in (S, H): the Gram of the smaller side serves both orientations
    x, d = _residual_like(2, 18, 30, 2), 0.3 * _residual_like(2, 18, 30, 3)
    a = update_metrics(x, d, spec)
    b = update_metrics(x.transpose(-1, -2), d.transpose(-1, -2), spec)
    for k in ("erank_in", "erank_out", "dS", "dD", "projector_rank"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_batched_equals_one_by_one(spec):
    x, d = _residual_like(3, 20, 33, 4), 0.2 * _residual_like(3, 20, 33, 5)
    x[1, 5:10] = x[1, 5]  # one matrix of the batch takes the SVD fallback
    m = update_metrics(x, d, spec)
    for b in range(3):
        one = update_metrics(x[b], d[b], spec)
        for k, v in one.items():
            torch.testing.assert_close(m[k][b], v, rtol=1e-12, atol=1e-12)


def _stream(L, B, S, H, seed):
    x = _residual_like(B, S, H, seed).float()  # model states: float32
    g = torch.Generator().manual_seed(seed + 100)
    out = []
    for _ in range(L):
        mid = x + 0.3 * torch.randn(B, S, H, generator=g)
        nxt = mid + 0.3 * torch.tanh(mid @ torch.randn(H, H, generator=g) / H**0.5)
        out.append((x, mid, nxt))
        x = nxt
    return out


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_stream_reuses_states_and_equals_recomputation(spec):
    layers = _stream(4, 2, 16, 40, 6)
    fast, slow = Stream(spec), Stream(spec, reuse=False)
    for i, (x, mid, out) in enumerate(layers):
        a = fast.layer(x, mid, out, keep_output=i < 3)
        b = slow.layer(x, mid, out)
        for module in ("attention", "ffn"):
            for k, v in a[module].items():
                torch.testing.assert_close(v, b[module][k], rtol=1e-12, atol=1e-12)
        # and each module equals the one-update function on the same states
        ref = update_metrics(x, mid.double() - x.double(), spec)
        torch.testing.assert_close(a["attention"]["rid"], ref["rid"], rtol=1e-10, atol=1e-12)
        kw = {"reference": x} if spec.ffn_reference == "input" else {}
        ref = update_metrics(mid, out.double() - mid.double(), spec, **kw)
        for k in ("rid", "dD", "dS", "mixig", "tme_delta", "erank_in"):
            torch.testing.assert_close(a["ffn"][k], ref[k], rtol=1e-10, atol=1e-12)
    assert fast.counts["reused"] == 3 and slow.counts["reused"] == 0
    assert fast.counts["built"] < slow.counts["built"]


def test_stream_attention_only_and_float32_compute():
    (x, mid, out), = _stream(1, 2, 16, 40, 7)
    st = Stream("official")
    a = st.layer(x, mid, out, modules=("attention",))
    assert set(a) == {"attention"}
    f32 = Stream("official", dtype=torch.float32).layer(x, mid, out)
    f64 = Stream("official").layer(x, mid, out)
    for k in ("dD", "dS", "mixig"):
        torch.testing.assert_close(f32["ffn"][k].double(), f64["ffn"][k], rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    (x, mid, out), = _stream(1, 4, 64, 128, 8)
    for spec in SPECS:
        cpu = Stream(spec).layer(x, mid, out)
        gpu = Stream(spec).layer(x.cuda(), mid.cuda(), out.cuda())
        for module in cpu:
            for k, v in cpu[module].items():
                torch.testing.assert_close(gpu[module][k].cpu(), v, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("spec", SPECS + (replace(MetricSpec.official(), rank=RankRule("fixed", 4)),),
                         ids=lambda s: s.name)
@pytest.mark.parametrize("shape", [(3, 90, 40), (3, 40, 90)], ids=["tokens>dims", "tokens<dims"])
def test_large_states_in_column_blocks_equal_whole_states(spec, shape, monkeypatch):
    # a state over 2 * CHUNK_BYTES is never held whole in float64: its products run over column blocks of Z, each
    # converted from the model's (here float32) tensors; every metric equals the whole-state computation
    B, S, H = shape
    layers = _stream(2, B, S, H, 11)
    x0 = layers[0][0].clone()
    x0[1, 10:80] = x0[1, 10]  # one rank-deficient input: the SVD fallback and the explicit residuals
    layers[0] = (x0, layers[0][1], layers[0][2])
    whole = Stream(spec)
    want = [whole.layer(*states) for states in layers]
    monkeypatch.setattr("lostattn.residual.metrics.CHUNK_BYTES", B * 8 * 40 * 7)  # 7 columns of Z per block
    blocked = Stream(spec)
    for states, ref in zip(layers, want):
        got = blocked.layer(*states)
        for module in ref:
            for k, v in ref[module].items():
                torch.testing.assert_close(got[module][k], v, rtol=1e-10, atol=1e-12, msg=f"{module} {k}")
    st = State(x0, basis=True)
    assert st.lazy and st._x is None and st.width == 7 and st.exact[1] and not st.exact[0]
    assert blocked.counts == whole.counts
