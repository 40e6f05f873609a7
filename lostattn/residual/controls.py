"""The paper's noise controls, as reversible context managers (the model is restored bit-exactly on exit).

- `noise_qkv`, preset "official" (as `replace_all_qkv_with_gaussian_` in the official `utils/noise_utils.py`):
  every module of the model that has q_proj, k_proj and v_proj (the decoder and, for LLaVA / OneVision, the vision
  tower), or a fused `qkv_proj` / `Wqkv` / `in_proj_weight`, has each projection *weight* redrawn from
  N(mean, std^2) of that tensor (float32 statistics, population std; std 0 becomes 1e-6), from a generator on the
  tensor's device seeded with 42 afresh for every tensor; biases keep their values. (Same seed and shape give the
  same standard-normal draw: q, k and v of equal shape get proportional noise, as in the official code. Qwen2.5-VL's
  vision blocks fuse Q, K, V in a module named `qkv`, which that scan does not match: their vision tower keeps
  its weights.)
- `noise_qkv`, preset "decoder_layers" (the project's earlier control): the Q, K, V projections of the chosen decoder
  layers only, weights and biases, from one generator seeded once, sample std.
- `noise_ffn` (official `replace_all_ffn_with_gaussian_`): every module named `mlp` (decoder and vision tower) has
  its gate_proj / up_proj / down_proj weights, or, without those names, every Linear weight inside, redrawn the
  same way; "decoder_layers" redraws the chosen decoder layers' MLP parameters like "decoder_layers" above.
- `noise_delta`: the project's own control (the official code has none): every chosen layer's attention update
  dX_attn is replaced by Gaussian noise of matched norm, per token row by default or per sample over all tokens.

The redrawn weights' values wait in host memory (weights on an accelerator) or in a temporary file (weights in host
memory), so a control never doubles the weights' memory on their device; restoring copies the exact bytes back.

In both presets `layers` restricts the decoder layers touched (None: all); modules outside the decoder are part of
the official scope whatever `layers` says. Each manager yields the names of the parameters it redrew.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager

import torch
from torch import nn

MATCH = ("row", "sample")
NOISE_PRESETS = ("official", "decoder_layers")
OFFICIAL_SEED = 42
NOISE_CONDITIONS = ("vanilla", "noise_delta", "noise_qkv", "noise_ffn")


def _layers(adapter, layers):
    return list(range(adapter.num_layers)) if layers is None else list(layers)


def _check_preset(preset):
    if preset not in NOISE_PRESETS:
        raise ValueError(f"noise preset {preset!r} is not one of {NOISE_PRESETS}")


@contextmanager
def noise_delta(lm, layers: list[int] | None = None, seed: int = 0, match: str = "row",
                keys: list[str] | None = None, valid: torch.Tensor | None = None):
    """Replace dX_attn of the chosen layers by Gaussian noise of the same norm (per token row, or per sample).

    With `keys` (one per sample of the batch) and `valid` (B, S) the non-padding positions, each sample's noise is
    drawn from its own generator, seeded by (seed, key, layer), for its own tokens in order: a sample gets the
    same noise in any batch, with any padding, on any rank. Without them one generator seeded by `seed` serves
    the whole batch."""
    if match not in MATCH:
        raise ValueError(f"match {match!r} is not one of {MATCH}")
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def draw(d, layer):
        if keys is None:
            return torch.randn(d.shape, generator=gen, dtype=torch.float32)
        from lostattn.sap.distributions import sample_generator

        noise = torch.zeros(d.shape, dtype=torch.float32)
        for b, key in enumerate(keys):
            pos = valid[b].cpu().bool() if valid is not None else torch.ones(d.shape[1], dtype=torch.bool)
            g = sample_generator(seed, f"noise_delta|{key}|{layer}")
            noise[b, pos] = torch.randn((int(pos.sum()), d.shape[-1]), generator=g, dtype=torch.float32)
        return noise

    def hook_for(layer):
        def hook(module, args, out):
            d = out[0] if isinstance(out, tuple) else out
            noise = draw(d, layer).to(d.device)
            df = d.float()
            if match == "row":
                scale = df.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            else:
                scale = df.flatten(1).norm(dim=1).view(-1, 1, 1) / noise.flatten(1).norm(dim=1).view(-1, 1, 1)
            noise = (noise * scale).to(d.dtype)
            return (noise, *out[1:]) if isinstance(out, tuple) else noise
        return hook

    handles = [lm.adapter.attn_update(i).register_forward_hook(hook_for(i)) for i in _layers(lm.adapter, layers)]
    try:
        yield []
    finally:
        for h in handles:
            h.remove()


# --- which parameters each preset redraws ---------------------------------------------------------------------------

def _excluded_decoder_modules(lm, layers) -> set[int]:
    """ids of the modules of decoder layers outside `layers` (none when layers is None)."""
    if layers is None:
        return set()
    keep = set(layers)
    return {id(m) for i, layer in enumerate(lm.adapter.layers) if i not in keep for m in layer.modules()}


def _weight(module, attr):
    sub = getattr(module, attr, None)
    w = getattr(sub, "weight", None) if isinstance(sub, nn.Module) else None
    return w if isinstance(w, nn.Parameter) else None


def official_qkv_parameters(lm, layers=None) -> list[tuple[str, nn.Parameter]]:
    """The weights the official Noise QKV redraws: q/k/v projections of every attention module (or a fused
    qkv_proj / Wqkv / in_proj_weight), biases excluded."""
    skip = _excluded_decoder_modules(lm, layers)
    out = []
    for name, module in lm.model.named_modules():
        if id(module) in skip:
            continue
        qkv = [(a, _weight(module, a)) for a in ("q_proj", "k_proj", "v_proj")]
        if all(isinstance(getattr(module, a, None), nn.Module) for a, _ in qkv):
            out += [(f"{name}.{a}.weight", w) for a, w in qkv if w is not None]
            continue
        for a in ("qkv_proj", "Wqkv"):
            w = _weight(module, a)
            if w is not None:
                out.append((f"{name}.{a}.weight", w))
        w = getattr(module, "in_proj_weight", None)
        if isinstance(w, nn.Parameter):
            out.append((f"{name}.in_proj_weight", w))
    return out


def official_ffn_parameters(lm, layers=None) -> list[tuple[str, nn.Parameter]]:
    """The weights the official Noise FFN redraws: in every module named `mlp`, gate_proj / up_proj / down_proj,
    or without those every Linear inside; biases excluded."""
    skip = _excluded_decoder_modules(lm, layers)
    out = []
    for name, module in lm.model.named_modules():
        if id(module) in skip or not (name == "mlp" or name.endswith(".mlp")):
            continue
        named = [(a, _weight(module, a)) for a in ("gate_proj", "up_proj", "down_proj")]
        named = [(f"{name}.{a}.weight", w) for a, w in named if w is not None]
        if not named:
            named = [(f"{name}.{sub}.weight" if sub else f"{name}.weight", m.weight)
                     for sub, m in module.named_modules() if isinstance(m, nn.Linear)]
        out += named
    return out


def _ours_parameters(lm, layers, part) -> list[tuple[str, nn.Parameter]]:
    out = []
    for i in _layers(lm.adapter, layers):
        if part == "qkv":
            attn = lm.adapter.attn(i)
            for a in ("q_proj", "k_proj", "v_proj"):
                out += [(f"layers.{i}.{a}.{n}", p) for n, p in getattr(attn, a).named_parameters()]
        else:
            out += [(f"layers.{i}.mlp.{n}", p) for n, p in lm.adapter.mlp(i).named_parameters()]
    return out


# --- redrawing ------------------------------------------------------------------------------------------------------

# A redraw holds one float32 tensor of the weight's size at a time (its statistics' copy, then the noise, which
# `copy_` rounds into the weight's dtype as `.to` would): 4 bytes a parameter on top of the weights, not 10.

def _redraw_official(p: torch.Tensor, seed: int) -> None:
    pf = p.detach().float()
    mean, std = float(pf.mean()), float(pf.std(unbiased=False))
    del pf
    if std == 0.0:
        std = float(torch.tensor(1e-6))
    g = torch.Generator(device=p.device).manual_seed(seed)
    noise = torch.empty(p.shape, dtype=torch.float32, device=p.device).normal_(mean, std, generator=g)
    p.copy_(noise)


def _redraw_ours(p: torch.Tensor, gen: torch.Generator) -> None:
    pf = p.detach().float()
    std = (pf.std() if p.numel() > 1 else torch.tensor(0.0)).cpu()
    mean = pf.mean().cpu()
    del pf
    noise = torch.randn(p.shape, generator=gen)
    p.copy_(noise.mul_(std).add_(mean))


class _Originals:
    """The values of the weights a control redraws, kept off the device they live on so that a control never holds
    two copies of them there: in host memory when the weights are on an accelerator, in a temporary file (one tensor
    read back at a time) when they are in host memory already. Restoring copies the exact bytes back."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.on_host = all(p.device.type == "cpu" for p in params)
        self.copies: list[torch.Tensor] = []
        self.file = tempfile.TemporaryFile(prefix="lostattn-weights-") if self.on_host else None

    def save(self, p: torch.Tensor) -> None:
        if self.file is None:
            self.copies.append(p.detach().to("cpu", copy=True))
        else:
            self.file.write(memoryview(p.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))

    @torch.no_grad()
    def restore(self) -> None:
        if self.file is not None:
            self.file.seek(0)
        for i, p in enumerate(self.params[: len(self.copies)] if self.file is None else self.params):
            if self.file is None:
                p.copy_(self.copies[i].to(p.device))
                continue
            buf = torch.empty(p.numel() * p.element_size(), dtype=torch.uint8)
            if self.file.readinto(memoryview(buf.numpy())) != buf.numel():
                break  # this parameter was never saved (the redraw stopped before it)
            p.copy_(buf.view(p.dtype).view(p.shape))
        if self.file is not None:
            self.file.close()


@contextmanager
def _redrawn(params: list[tuple[str, nn.Parameter]], preset: str, seed: int):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    originals = _Originals([p for _, p in params])
    try:
        with torch.no_grad():
            for _, p in params:
                originals.save(p)
                _redraw_official(p, seed) if preset == "official" else _redraw_ours(p, gen)
        yield [n for n, _ in params]
    finally:
        with torch.no_grad():
            originals.restore()


@contextmanager
def noise_qkv(lm, layers: list[int] | None = None, seed: int | None = None, preset: str = "official"):
    """Q, K, V projection weights redrawn as Gaussian noise of each tensor's mean and std (see the module
    docstring for the two presets); seed: 42 for "official" (reset per tensor), 0 for "decoder_layers" (seeded once)."""
    _check_preset(preset)
    params = official_qkv_parameters(lm, layers) if preset == "official" else _ours_parameters(lm, layers, "qkv")
    seed = (OFFICIAL_SEED if preset == "official" else 0) if seed is None else seed
    with _redrawn(params, preset, seed) as names:
        yield names


@contextmanager
def noise_ffn(lm, layers: list[int] | None = None, seed: int | None = None, preset: str = "official"):
    """FFN (MLP) weights redrawn as Gaussian noise of each tensor's mean and std, like `noise_qkv`."""
    _check_preset(preset)
    params = official_ffn_parameters(lm, layers) if preset == "official" else _ours_parameters(lm, layers, "ffn")
    seed = (OFFICIAL_SEED if preset == "official" else 0) if seed is None else seed
    with _redrawn(params, preset, seed) as names:
        yield names


def control(condition: str, lm, layers: list[int] | None = None, seed: int = 0, preset: str = "official",
            keys: list[str] | None = None, valid: torch.Tensor | None = None):
    """The context manager of a condition (vanilla: nothing). Under the official preset Noise QKV and Noise FFN
    act on the whole model with the official seed, as the official code does, and `layers` / `seed` only steer
    Noise Delta; under "decoder_layers" every control acts on `layers` with `seed`. `keys` and `valid` (the batch's sample
    ids and non-padding positions) make Noise Delta's draw per sample (see `noise_delta`)."""
    from contextlib import nullcontext

    _check_preset(preset)
    if condition not in NOISE_CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose from {NOISE_CONDITIONS}")
    if condition == "vanilla":
        return nullcontext([])
    if condition == "noise_delta":
        return noise_delta(lm, layers, seed=seed, keys=keys, valid=valid)
    fn = noise_qkv if condition == "noise_qkv" else noise_ffn
    if preset == "official":
        return fn(lm, None, preset="official")
    return fn(lm, layers, seed=seed, preset="decoder_layers")


__all__ = ["noise_delta", "noise_qkv", "noise_ffn", "control", "official_qkv_parameters",
           "official_ffn_parameters", "NOISE_PRESETS", "NOISE_CONDITIONS", "OFFICIAL_SEED"]
