"""A checkpoint that cannot give right answers is refused at load, naming what is wrong, before any sample runs."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from lostattn.cli import main as cli
from lostattn.models.loader import load_model
from lostattn.models.random_checkpoints import RANDOM_CHECKPOINT_FAMILIES


@pytest.mark.parametrize("family", RANDOM_CHECKPOINT_FAMILIES)
def test_a_checkpoint_missing_a_weight_tensor_is_refused_naming_it(checkpoints, tmp_path, family):
    folder = tmp_path / family
    shutil.copytree(checkpoints(family), folder)
    tensors = load_file(folder / "model.safetensors")
    gone = sorted(k for k in tensors if "layers.0." in k and k.endswith("q_proj.weight"))[0]
    del tensors[gone]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 weight tensor\(s\) its model needs \(.*q_proj.weight\)"):
        load_model(str(folder))


def _without_token(folder, token: str) -> None:
    """The tokenizer files of `folder` with `token` removed (as a tokenizer of another model would be)."""
    path = folder / "tokenizer.json"
    tj = json.loads(path.read_text())
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] != token]
    tj["model"]["vocab"].pop(token, None)
    path.write_text(json.dumps(tj))
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in [k for k, v in cfg.items() if v == token]:
        cfg.pop(k)
    cfg["added_tokens_decoder"] = {i: t for i, t in cfg.get("added_tokens_decoder", {}).items()
                                   if t.get("content") != token}
    cfg["extra_special_tokens"] = {k: v for k, v in (cfg.get("extra_special_tokens") or {}).items() if v != token} \
        if isinstance(cfg.get("extra_special_tokens"), dict) else cfg.get("extra_special_tokens")
    cfg_path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_a_tokenizer_without_the_image_token_is_refused_before_the_weights_load(checkpoints, tmp_path, family,
                                                                              monkeypatch, capsys):
    folder = tmp_path / family
    shutil.copytree(checkpoints(family), folder)
    token = load_model(str(folder)).processor.image_token
    _without_token(folder, token)
    (folder / "model.safetensors").write_bytes(b"")  # not reached: the refusal comes before the weights are read
    with pytest.raises(ValueError, match=rf"has no image token '{token}'.*config.json expects id"):
        load_model(str(folder))
    assert cli(["eval", "--model", str(folder), "--limit", "1", "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no image token '{token}'" in err[0]
