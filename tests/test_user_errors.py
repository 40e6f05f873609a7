"""Every mistake a user can make at the command line ends in one line that names the input and what would fix it
(exit status 2), never a traceback; and nothing is silently accepted or written before the refusal."""
import base64
import json
import shutil

import pytest
from PIL import Image

from lostattn.cli import main as cli
from lostattn.models.loader import EMBEDDED_DIR


def _png(path, colour=(200, 40, 40)):
    Image.new("RGB", (16, 16), colour).save(path)
    return path


def _one_line_error(capsys, *must_name):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first = err.strip().splitlines()[0]
    assert first.startswith("lostattn ") and ": error: " in first, err
    for word in must_name:
        assert word in first, f"{word!r} not named in: {first}"
    return first


@pytest.fixture
def vmc_dir(tmp_path):
    _png(tmp_path / "a.png")
    return tmp_path


def _write(path, text: str | bytes):
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# (name, files to write relative to tmp_path, cli args with {tmp} for the folder, words the error must hold)
CASES = [
    ("empty benchmark file", {"pope.jsonl": ""}, ["--benchmark", "pope", "--data", "{tmp}/pope.jsonl"],
     ["pope.jsonl", "empty"]),
    ("whitespace-only file", {"pope.json": "\n \n"}, ["--benchmark", "pope", "--data", "{tmp}/pope.json"],
     ["pope.json", "whitespace"]),
    ("JSON that is not a list of objects", {"v.json": json.dumps({"a": 1})},
     ["--benchmark", "vmcbench", "--data", "{tmp}/v.json"], ["v.json", "list of records"]),
    ("a list of numbers", {"v.json": "[1, 2]"}, ["--benchmark", "vmcbench", "--data", "{tmp}/v.json"],
     ["v.json", "record 0", "not an object"]),
    ("non-UTF-8 input", {"v.jsonl": b'{"question": "caf\xe9"}\n'}, ["--benchmark", "vmcbench", "--data",
                                                                      "{tmp}/v.jsonl"], ["v.jsonl", "UTF-8", "line 1"]),
    ("empty TSV", {"v.tsv": ""}, ["--benchmark", "vmcbench", "--data", "{tmp}/v.tsv"], ["v.tsv", "empty"]),
    ("TSV header without rows", {"v.tsv": "index\tquestion\tA\tB\tanswer\timage\n"},
     ["--benchmark", "vmcbench", "--data", "{tmp}/v.tsv"], ["v.tsv", "no records"]),
    ("bad JSONL line is named by its number", {"p.jsonl": json.dumps({"question_id": 1, "image": "a.png",
                                                                      "text": "Is it red?", "label": "yes"})
                                               + "\n{broken\n"},
     ["--benchmark", "pope", "--data", "{tmp}/p.jsonl"], ["p.jsonl", "line 2"]),
    ("base64 that is not an image", {"v.tsv": "index\tquestion\tA\tB\tanswer\timage\n0\tq?\tx\ty\tA\t"
                                     + base64.b64encode(b"plain text, not a picture. " * 40).decode() + "\n"},
     ["--benchmark", "vmcbench", "--data", "{tmp}/v.tsv"], ["v.tsv", "record 0", "image"]),
    ("MMMU answer outside its options", {"m.json": json.dumps([{"id": "v1", "question": "Which?",
                                                                "options": "['x', 'y']", "answer": "D",
                                                                "image_1": "a.png"}])},
     ["--benchmark", "mmmu", "--data", "{tmp}/m.json"], ["m.json", "'v1'", "'D'"]),
    ("RealWorldQA letter the question does not list", {"r.jsonl": json.dumps({"question": "Where?\nA. left\nB. right",
                                                                              "answer": "(C)", "image": "a.png"})},
     ["--benchmark", "realworldqa", "--data", "{tmp}/r.jsonl"], ["r.jsonl", "C"]),
    ("duplicate ids", {"p.jsonl": "".join(json.dumps({"question_id": 7, "image": "a.png", "text": q, "label": "no"})
                                          + "\n" for q in ("Is it a cat?", "Is it a dog?"))},
     ["--benchmark", "pope", "--data", "{tmp}/p.jsonl"], ["p.jsonl", "'7'"]),
    ("--limit 0", {}, ["--limit", "0"], ["--limit", "at least 1"]),
    ("--limit -3", {}, ["--limit", "-3"], ["--limit", "at least 1"]),
    ("--batch-size 0", {}, ["--batch-size", "0"], ["--batch-size", "at least 1"]),
    ("--device cuda without a GPU", {}, ["--device", "cuda"], ["--device cuda", "no CUDA GPU"]),
    ("SAP options without --sap-mode", {}, ["--lam", "0.5"], ["--lam", "--sap-mode"]),
    ("an unknown SAP mode", {}, ["--sap-mode", "gausian_noise"], ["gausian_noise", "gaussian_noise"]),
    ("an inverted head window", {}, ["--sap-mode", "uniform", "--head-min", "0.9", "--head-max", "0.3"],
     ["--head-min 0.9", "--head-max 0.3"]),
    ("half a head window", {}, ["--sap-mode", "uniform", "--head-min", "0.3"], ["--head-min", "--head-max"]),
    ("an unknown protocol", {}, ["--protocol", "offical"], ["--protocol", "official"]),
    ("a model folder that does not exist", {}, ["--model", "{tmp}/nowhere"], ["nowhere", "does not exist"]),
]


@pytest.mark.parametrize("name,files,args,words", CASES, ids=[c[0] for c in CASES])
def test_eval_errors_are_one_clear_line(name, files, args, words, vmc_dir, capsys, monkeypatch):
    monkeypatch.chdir(vmc_dir)
    for rel, text in files.items():
        _write(vmc_dir / rel, text)
    out = vmc_dir / "out.jsonl"
    argv = ["eval", *[a.format(tmp=vmc_dir) for a in args], "--out", str(out)]
    assert cli(argv) == 2
    _one_line_error(capsys, *words)
    assert not out.exists() and not (vmc_dir / "results").exists()  # nothing is written before a refusal


def test_analyze_refuses_a_negative_fixed_rank_and_a_bad_energy_share(tmp_path, capsys):
    assert cli(["analyze", "--rank-rule", "fixed", "--rank-value", "-2", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "--rank-rule fixed", "-2")
    assert cli(["analyze", "--rank-rule", "energy", "--rank-value", "1.5", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "--rank-rule energy", "1.5")


def test_train_refuses_zero_epochs_and_keeps_the_shipped_model(tmp_path, capsys):
    before = (EMBEDDED_DIR / "model.safetensors").stat().st_mtime_ns
    assert cli(["train", "--epochs", "0"]) == 2
    _one_line_error(capsys, "--epochs", "at least 1")
    assert (EMBEDDED_DIR / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_weight_file_is_named(damage, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(EMBEDDED_DIR, ckpt)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x08\x00\x00\x00\x00\x00\x00\x00{not}"
                        + data[16:])
    assert cli(["eval", "--model", str(ckpt), "--limit", "1", "--out", str(tmp_path / "o.jsonl")]) == 2
    _one_line_error(capsys, "model.safetensors")
    assert not (tmp_path / "o.jsonl").exists()


def test_a_results_file_with_a_header_cut_short_by_hand_is_refused(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    out.write_text('{"run": {"model": "emb\n{"id": 1}\n')
    assert cli(["eval", "--limit", "1", "--out", str(out)]) == 2
    _one_line_error(capsys, "o.jsonl", "line 1")


# ---- profile values, checked in full before any cell runs (and for --plan) ---------------------------------------
PROFILE_CASES = [  # (what is written under common unless the key says otherwise, the words the line must hold)
    ("samples_per_family: '8'", ["common.samples_per_family", "'8' is text", "without quotes"]),
    ("samples_per_family: -3", ["common.samples_per_family", "-3 is not a whole number of at least 1"]),
    ("device: 7", ["common.device", "7 is not a device", "cuda:N"]),
    ("batch_size: 0", ["common.batch_size", "0 is not a whole number of at least 1"]),
    ("dtype: float64", ["common.dtype", "'float64' is not one of float32, float16, bfloat16"]),
    ("seed: zero", ["common.seed", "'zero' is text"]),
    ("metric_spec: bogus", ["common.metric_spec", "'bogus' is not one of official, paper_text"]),
    ("lam: 1e-3", ["common.lam", "'1e-3' is not a number", "YAML reads 1e-3 as text", "1.0e-3"]),
    ("lams: 0.5", ["common.lams", "0.5 is not a list", "[0.0, 0.5, 1.0]"]),
    ("modes: [gaussian_noise, gausian]", ["common.modes", "'gausian' is not one of", "did you mean "
                                                                                    "'gaussian_noise'"]),
]


def _profile(tmp_path, common: str, extra: str = "") -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(f"common:\n  device: cpu\n  {common}\nmodels:\n  - name: embedded\n{extra}")
    return str(path)


@pytest.mark.parametrize("line, words", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_a_bad_profile_value_is_one_line_before_any_cell_runs(line, words, tmp_path, capsys):
    cfg = _profile(tmp_path, line)
    assert cli(["reproduce", "--profile", "bad", "--config", cfg, "--plan"]) == 2
    first = _one_line_error(capsys, "bad.yaml", *words)
    assert first.count("profile file") == 1
    assert not (tmp_path / "results").exists()


def test_an_unknown_sap_condition_is_named(tmp_path, capsys):
    cfg = _profile(tmp_path, "seed: 0", "conditions: [gaussian_noise, bogus_mode]\n")
    assert cli(["reproduce", "--profile", "bad", "--config", cfg, "--plan"]) == 2
    _one_line_error(capsys, "bad.yaml", "conditions", "'bogus_mode' is not one of", "gaussian_noise")


@pytest.mark.parametrize("entry, words", [
    ("models:\n  - {name: m, path: /nowhere/llava}\n", ["models[0] (m).path", "/nowhere/llava does not exist"]),
    ("models:\n  - {name: m, path: org/not-cached}\n", ["models[0] (m).path", "org/not-cached", "local cache"]),
    ("benchmarks:\n  - {name: pope, data: /nowhere/pope.jsonl}\n",
     ["benchmarks[0] (pope).data", "/nowhere/pope.jsonl does not exist"]),
], ids=["model folder", "hub id", "benchmark data"])
def test_a_missing_model_or_data_path_is_named_for_plan_and_run(entry, words, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("common: {device: cpu}\n" + entry)
    for extra in (["--plan"], ["--no-book"]):
        assert cli(["reproduce", "--profile", "bad", "--config", str(path), *extra]) == 2
        _one_line_error(capsys, "bad.yaml", *words)
    assert not (tmp_path / "results").exists()


def test_a_cuda_device_this_machine_lacks_is_refused_before_running(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("common: {device: 'cuda:3'}\nmodels:\n  - name: embedded\n")
    cfg = str(cfg)
    assert cli(["reproduce", "--profile", "bad", "--config", cfg, "--plan"]) == 0  # a login node plans for GPUs
    capsys.readouterr()
    assert cli(["reproduce", "--profile", "bad", "--config", cfg, "--no-book"]) == 2
    _one_line_error(capsys, "bad.yaml", "common.device", "'cuda:3'", "0 CUDA device(s)")
