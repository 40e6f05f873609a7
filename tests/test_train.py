"""Training entry point: writes a loadable checkpoint, a curve and provenance; same seed, same weights."""
import json

import pandas as pd
import torch
from safetensors.torch import load_file

from lostattn.bench.synthetic import SyntheticConfig
from lostattn.models.embedded import EmbeddedArch
from lostattn.models.loader import load_model
from lostattn.train import TrainConfig, train_embedded

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
