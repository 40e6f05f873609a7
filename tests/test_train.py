"""Training entry point: writes a loadable checkpoint, a curve and provenance; same seed, same weights."""
import json

import pandas as pd
import torch
from safetensors.torch import load_file

from lostattn.tasks.synthetic import SyntheticConfig
from lostattn.models.embedded import EmbeddedArch
from lostattn.models.loader import load_model
from lostattn.models.train import TrainConfig, train_embedded

TINY = SyntheticConfig(images={"train": 24, "validation": 4, "test": 8})
ARCH = EmbeddedArch(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=2,
                    text_heads=2, text_kv_heads=1, text_intermediate=64)
CFG = TrainConfig(epochs=1, batch_size=16, warmup_steps=2, vision_steps=4, log_every=2, threads=1)


def test_training_is_deterministic_and_writes_everything(tmp_path):
    a = train_embedded(tmp_path / "a", CFG, ARCH, TINY, progress=False)
    b = train_embedded(tmp_path / "b", CFG, ARCH, TINY, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    curve = pd.read_csv(a / "training_curve.csv")
    assert set(curve["stage"]) == {"vision", "instruct"} and curve["loss"].notna().all()
    meta = json.loads((a / "train_meta.json").read_text())
    assert meta["seed"] == 0 and meta["train"]["epochs"] == 1 and "git_commit" in meta
    lm = load_model(str(a))
    assert lm.adapter.num_layers == 2
    c = train_embedded(tmp_path / "c", TrainConfig(**{**CFG.__dict__, "seed": 1}), ARCH, TINY, progress=False)
    wc = load_file(c / "model.safetensors")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_cached_vision_features_give_the_same_logits_as_pixel_values():
    from lostattn.tasks.synthetic import SyntheticBenchmark
    from lostattn.models.embedded import build_embedded
    from lostattn.models.train import _collate, embed_with_image, encode_split, vision_features

    bench = SyntheticBenchmark(TINY)
    model, proc = build_embedded(bench, ARCH)
    model.eval()
    ids, starts, pixels, image_index = encode_split(bench, proc, "train")
    rows = list(range(0, len(ids), 7))[:12]
    x, _, mask = _collate(ids, starts, rows, proc.tokenizer.pad_token_id)
    with torch.no_grad():
        ref = model(input_ids=x, attention_mask=mask, pixel_values=pixels[image_index[rows]]).logits
        got = model(inputs_embeds=embed_with_image(model, x, vision_features(model, pixels)[image_index[rows]]),
                    attention_mask=mask).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_length_bucketed_batches_cover_every_sample_once_and_cut_padding():
    from lostattn.models.train import batch_order

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 60, (1000,), generator=g).tolist()
    plain = batch_order(lengths, 32, 1, torch.Generator().manual_seed(1))
    pooled = batch_order(lengths, 32, 8, torch.Generator().manual_seed(1))
    for batches in (plain, pooled):
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1000)) and len(batches) == 32  # ceil(1000 / 32)

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded(pooled) < 0.8 * padded(plain)
    assert pooled == batch_order(lengths, 32, 8, torch.Generator().manual_seed(1))
