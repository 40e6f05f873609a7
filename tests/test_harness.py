"""The benchmark harness: resume, refusal to mix runs, scoring (the reproduce pipeline: tests/test_reproduce.py)."""
import json

import pandas as pd
import pytest

from lostattn.cli import main as cli
from lostattn.harness.evaluate import EvalSettings, evaluate, summarize
from lostattn.sap.replace import SAPConfig


def test_resume_skips_finished_samples_and_loses_nothing(lm, samples, tmp_path, monkeypatch):
    out = tmp_path / "run.jsonl"
    spec = EvalSettings(model="embedded", benchmark="synthetic")
    first = evaluate(lm, samples[:5], out, spec, batch_size=2, progress=False)
    assert len(first) == 5
    # an interruption mid-write leaves a cut line: it is removed before appending, and that sample is redone
    with out.open("a") as f:
        f.write('{"id": "cut')
    calls = []
    import lostattn.harness.evaluate as ev

    real = ev.generate_replies
    monkeypatch.setattr(ev, "generate_replies",
                        lambda lm_, b, *a, **k: calls.append([s.id for s in b]) or real(lm_, b, *a, **k))
    again = evaluate(lm, samples[:8], out, spec, batch_size=2, progress=False)
    assert sorted(i for c in calls for i in c) == sorted(s.id for s in samples[5:8])
    assert list(again["id"]) == [s.id for s in samples[:8]]
    assert again.iloc[:5].equals(first)
    head = json.loads(out.read_text().splitlines()[0])
    assert head["run"] == spec.bound(lm).key() and "git_commit" in head["provenance"]
    assert len(pd.read_json(out, lines=True)) == 9  # the header and 8 records, no fragment


def test_a_different_run_is_refused(lm, samples, tmp_path):
    out = tmp_path / "run.jsonl"
    evaluate(lm, samples[:1], out, EvalSettings(model="embedded", benchmark="synthetic"), progress=False)
    cfg = SAPConfig()
    with pytest.raises(ValueError, match="different run"):
        evaluate(lm, samples[:1], out, EvalSettings(model="embedded", benchmark="synthetic", sap=cfg.to_dict()),
                 sap_cfg=cfg, progress=False)
    with pytest.raises(ValueError, match="spec.sap"):
        evaluate(lm, samples[:1], tmp_path / "x.jsonl", EvalSettings(model="embedded", benchmark="synthetic"),
                 sap_cfg=cfg, progress=False)


def test_records_of_other_weights_under_the_same_name_are_refused(lm, samples, tmp_path):
    import dataclasses

    out = tmp_path / "run.jsonl"
    spec = EvalSettings(model="embedded", benchmark="synthetic")
    evaluate(lm, samples[:1], out, spec, progress=False)
    assert json.loads(out.read_text().splitlines()[0])["run"]["weights"] == lm.fingerprint
    retrained = dataclasses.replace(lm, fingerprint="0" * 16)
    with pytest.raises(ValueError, match="other weights"):
        evaluate(retrained, samples[:2], out, spec, progress=False)
    assert len(evaluate(lm, samples[:2], out, spec, progress=False)) == 2  # the weights that wrote it resume it


def test_weights_fingerprint_follows_the_weight_bytes(tmp_path):
    import shutil

    from lostattn.models.loader import EMBEDDED_DIR, weights_fingerprint

    copy = tmp_path / "model"
    shutil.copytree(EMBEDDED_DIR, copy)
    assert weights_fingerprint(copy) == weights_fingerprint(EMBEDDED_DIR)
    (copy / "training_curve.csv").write_text("step,loss\n")  # files other than config and weights do not count
    assert weights_fingerprint(copy) == weights_fingerprint(EMBEDDED_DIR)
    data = (EMBEDDED_DIR / "model.safetensors").read_bytes()
    for offset in (4096, len(data) // 2, -4096):  # one changed byte anywhere in a small weight file changes it
        changed = bytearray(data)
        changed[offset] ^= 1
        (copy / "model.safetensors").write_bytes(bytes(changed))
        assert weights_fingerprint(copy) != weights_fingerprint(EMBEDDED_DIR)
    # a large file is sampled at both ends: a change there is seen, one in the middle is not
    changed = bytearray(data)
    changed[len(data) // 2] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(changed))
    assert weights_fingerprint(copy, sample=1024, whole_below=0) == weights_fingerprint(EMBEDDED_DIR, 1024, 0)
    changed[-100] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(changed))
    assert weights_fingerprint(copy, sample=1024, whole_below=0) != weights_fingerprint(EMBEDDED_DIR, 1024, 0)


def test_blind_control_drops_the_image(lm, samples, tmp_path):
    ocr = [s for s in samples if s.family == "ocr"]
    recs = evaluate(lm, ocr, tmp_path / "blind.jsonl", EvalSettings("embedded", "synthetic", blind=True), progress=False)
    assert len(recs) == len(ocr)
    t = summarize(recs)
    assert t.loc[0, "n"] == len(ocr)


def test_cli_eval_and_errors(tmp_path, capsys):
    out = tmp_path / "e.jsonl"
    assert cli(["eval", "--limit", "1", "--out", str(out), "--sap-mode", "uniform"]) == 0
    assert out.with_suffix(".summary.csv").is_file()
    assert "accuracy" in capsys.readouterr().out
    assert cli(["eval", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["eval", "--benchmark", "pope"]) == 2
    assert "needs its local file" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["eval", "analyze"])
def test_threads_option_sets_the_cpu_threads_of_the_run(cmd, tmp_path, monkeypatch):
    import torch

    import lostattn.cli as cli_mod

    seen = []  # the command's function is looked up when the parser is built, so the stand-in is the one run
    monkeypatch.setattr(cli_mod, f"cmd_{cmd}", lambda a: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    try:
        assert cli_mod.main([cmd, "--threads", "1", "--out", str(tmp_path / "x")]) == 0
        assert seen == [1]
    finally:
        torch.set_num_threads(before)
