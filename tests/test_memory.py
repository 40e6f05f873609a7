"""What keeps memory at a real checkpoint's size: vis_enc_attn's chunked accumulation, noise controls that keep no
second copy of the weights on their device, analyze without full-vocabulary logits."""
import pytest
import torch

from lostattn.models import layouts
from lostattn.models.prompts import prepare_inputs
from lostattn.residual import controls
from lostattn.residual.analysis import residual_metrics
from lostattn.tasks.synthetic import SyntheticBenchmark


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "llava_onevision"])
def test_vis_enc_attn_in_chunks_equals_the_whole_matrix(family, family_lm, monkeypatch):
    """Query rows in chunks of 1 (LLaVA, OneVision) or 4 (Qwen's 2x2 groups) rows give the mean of the whole
    matrix's softmax, computed here directly."""
    lm = family_lm(family)
    inputs = prepare_inputs(lm, SyntheticBenchmark().samples("test", limit_per_family=1)[:1])
    layout = lm.adapter.layout
    layer = len(layout.vision_layers(lm)) - 1
    seen = []
    real = layouts._Recorder.__call__

    def spy(self, query, key, scaling, attention_mask):  # the whole matrix, as a reference
        k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        p = torch.softmax(torch.matmul(query.float(), k.float().transpose(-1, -2)) * scaling, dim=-1)
        seen.append(p)
        return real(self, query, key, scaling, attention_mask)

    monkeypatch.setattr(layouts._Recorder, "__call__", spy)
    whole = layout.received_attention(lm, inputs, layer)
    monkeypatch.setattr(layouts._Recorder, "budget", 1)  # one row (one 2x2 group for Qwen) per chunk
    seen.clear()
    chunked = layout.received_attention(lm, inputs, layer)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    p = seen[0][0]  # (heads, L, L) of the first image (chunk)
    if layout.kind == "merged":
        u = 4
        L = p.shape[-1] // u
        direct = p.reshape(p.shape[0], L, u, L, u).amax(2).amax(3).mean(1).mean(0)
        direct = direct[torch.argsort(_window_order(lm, inputs))]
    elif lm.model.config.vision_feature_select_strategy == "default":
        direct = p[:, 1:, 1:].mean(1).mean(0)
    else:
        direct = p.mean(1).mean(0)
    torch.testing.assert_close(chunked[0][0], direct, rtol=1e-5, atol=1e-7)


def _window_order(lm, inputs):
    import importlib

    tower = lm.adapter.layout.tower(lm)
    mod = importlib.import_module(type(tower).__module__)
    grid = inputs["image_grid_thw"][:1]
    win, _ = mod.get_vision_window_index(grid, spatial_merge_size=tower.spatial_merge_size,
                                        window_size=tower.window_size, patch_size=tower.patch_size, kwargs={})
    return win


def _toy(dtype):
    torch.manual_seed(0)
    m = torch.nn.Module()
    m.mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)).to(dtype)
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_redrawn_weights_wait_in_a_file_and_come_back_exactly(dtype):
    m = _toy(dtype)
    params = [(n, p) for n, p in m.named_parameters() if n.endswith("weight")]
    before = [p.detach().clone() for _, p in params]
    with controls._redrawn(params, "official", 42):
        assert not any(torch.equal(p, b) for (_, p), b in zip(params, before))  # redrawn
    assert all(torch.equal(p, b) and p.dtype == dtype for (_, p), b in zip(params, before))
    keeper = controls._Originals([p for _, p in params])
    for _, p in params:
        keeper.save(p)
    assert keeper.copies == [] and keeper.file is not None  # no second copy in memory for host weights
    assert keeper.file.tell() == sum(p.numel() * p.element_size() for _, p in params)
    keeper.restore()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_redraw_rounds_the_float32_draw_into_the_weights_dtype(dtype):
    """The noise goes into the weight without a rounded copy in between (one float32 tensor at a time): the official
    draw N(mean, population std) in float32 from a generator seeded 42, the "decoder_layers" one randn * std + mean,
    each rounded to the weight's dtype as `.to` rounds."""
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(1)).mul_(0.02).add_(0.001).to(dtype)
    w0 = w.clone()
    controls._redraw_official(w, 42)
    f = w0.float()
    want = torch.empty(w.shape).normal_(float(f.mean()), float(f.std(unbiased=False)),
                                        generator=torch.Generator().manual_seed(42))
    assert torch.equal(w, want.to(dtype))
    zero = torch.zeros(8, 8, dtype=dtype)
    controls._redraw_official(zero, 42)  # std 0 becomes 1e-6
    want = torch.empty(8, 8).normal_(0.0, float(torch.tensor(1e-6)), generator=torch.Generator().manual_seed(42))
    assert torch.equal(zero, want.to(dtype))
    w = w0.clone()
    controls._redraw_ours(w, torch.Generator().manual_seed(3))
    want = torch.randn(w.shape, generator=torch.Generator().manual_seed(3)) * f.std() + f.mean()
    assert torch.equal(w, want.to(dtype))


def test_a_redraw_that_fails_half_way_restores_what_it_changed(monkeypatch):
    m = _toy(torch.float32)
    params = [(n, p) for n, p in m.named_parameters() if n.endswith("weight")]
    before = [p.detach().clone() for _, p in params]
    calls = []
    real = controls._redraw_official

    def failing(p, seed):
        calls.append(1)
        if len(calls) == 2:
            p.fill_(7.0)
            raise RuntimeError("out of memory")
        real(p, seed)

    monkeypatch.setattr(controls, "_redraw_official", failing)
    with pytest.raises(RuntimeError):
        with controls._redrawn(params, "official", 42):
            pass
    assert all(torch.equal(p, b) for (_, p), b in zip(params, before))


def test_analyze_computes_the_last_logits_only(lm, samples):
    shapes = []
    hook = lm.model.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.logits.shape)))
    try:
        residual_metrics(lm, samples[:2], layers=[1], conditions=("vanilla",), progress=False)
    finally:
        hook.remove()
    assert shapes and all(s[1] == 1 for s in shapes)


def test_analyze_states_its_peak_memory(family_lm, tmp_path, capsys, checkpoints):
    from lostattn.cli import main as cli

    assert cli(["analyze", "--model", checkpoints("llava"), "--limit", "1", "--layers", "1",
                "--out", str(tmp_path / "an")]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("peak resident memory")]
    assert line and float(line[0].split()[3]) > 0.05  # GiB: at least the interpreter and torch
