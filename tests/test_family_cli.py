"""Every family through the command line, from a local checkpoint folder as a user has it: `lostattn eval` under
both protocols, vanilla and with SAP (gaussian_noise and key under the official presets)."""
import json

import pandas as pd
import pytest

from lostattn.cli import main as cli

from conftest import FAMILIES


def _records(path):
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), pd.DataFrame([json.loads(x) for x in lines[1:]])


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_official_protocol_with_sap_on_every_family(family, checkpoints, tmp_path, capsys):
    ckpt = checkpoints(family, "single" if family.startswith("qwen") else "hub")
    runs = {}
    for mode in ("vanilla", "gaussian_noise", "key"):
        out = tmp_path / f"{mode}.jsonl"
        sap = [] if mode == "vanilla" else ["--sap-mode", mode]
        assert cli(["eval", "--model", ckpt, "--protocol", "official", *sap, "--limit", "1", "--max-new-tokens", "3",
                    "--batch-size", "4", "--out", str(out)]) == 0, capsys.readouterr().err
        head, recs = _records(out)
        assert len(recs) == 6 and recs["id"].is_unique  # one sample per synthetic family
        assert head["run"]["protocol"]["name"] == "official" and head["run"]["protocol"]["family"] == family
        assert (recs["process_rank"] == 0).all() and recs["with_image"].all()
        if mode != "vanilla":
            sap_cfg = head["run"]["sap"]
            assert sap_cfg["mode"] == mode and sap_cfg["vis_layer"] == "last" and sap_cfg["precision"] == "model"
        runs[mode] = recs
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl"])
def test_eval_controlled_protocol_every_image_mode(family, checkpoints, tmp_path, capsys):
    ckpt = checkpoints(family)
    for mode in ("vis_enc_attn", "complexity"):
        out = tmp_path / f"{mode}.jsonl"
        assert cli(["eval", "--model", ckpt, "--sap-mode", mode, "--limit", "1", "--out", str(out)]) == 0, \
            capsys.readouterr().err
        head, recs = _records(out)
        assert head["run"]["protocol"]["name"] == "controlled" and len(recs) == 6
        assert head["run"]["protocol"]["max_new_tokens"] == 8


@pytest.mark.parametrize("family", FAMILIES)
def test_analyze_official_metric_spec_on_every_family(family, checkpoints, tmp_path, capsys):
    out = tmp_path / "an"
    assert cli(["analyze", "--model", checkpoints(family), "--metric-spec", "official", "--limit", "1",
                "--scope", "all,visual,text", "--out", str(out)]) == 0, capsys.readouterr().err
    t1 = pd.read_csv(out / "table1.csv")
    assert list(t1["module"]) == ["Noise Δ", "Noise QKV", "Noise FFN", "Attention", "FFN"]
    assert t1["MixIG"].between(-1, 1).all() and (t1["RID"] >= 0).all() and (t1["spec"] == "official").all()
    m = pd.read_csv(out / "residual_metrics.csv")
    assert set(m["scope"]) == {"all", "visual", "text"}
    assert "metric spec: official" in capsys.readouterr().out
