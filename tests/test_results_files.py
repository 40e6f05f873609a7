"""Results files: the resume key names every input, records never mix, a killed writer's file is repaired, one writer
at a time, and a record never depends on its batch companions."""
import dataclasses
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from lostattn.harness import records
from lostattn.cli import main as cli
from lostattn.harness.evaluate import EvalSettings, evaluate
from lostattn.sap.replace import SAPConfig

SPEC = EvalSettings(model="embedded", benchmark="synthetic")


def _lines(path):
    return path.read_text().splitlines()


def _pope(folder, name, questions):
    """A POPE file in the official JSON-lines layout, one small image per question."""
    folder.mkdir(exist_ok=True)
    with (folder / name).open("w") as f:
        for i, (q, a) in enumerate(questions):
            Image.new("RGB", (32, 32), (40 * i % 255, 90, 200)).save(folder / f"img{i}.png")
            f.write(json.dumps({"question_id": i, "image": f"img{i}.png", "text": q, "label": a}) + "\n")
    return folder / name


def test_pope_subsets_sharing_ids_get_their_own_records(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rnd = _pope(tmp_path / "pope", "coco_pope_random.jsonl", [("Is there a dog?", "no"), ("Is there a cat?", "yes")])
    pop = _pope(tmp_path / "pope", "coco_pope_popular.jsonl", [("Is there a car?", "no"), ("Is there a man?", "no")])
    assert cli(["eval", "--benchmark", "pope", "--data", str(rnd)]) == 0
    assert cli(["eval", "--benchmark", "pope", "--data", str(pop)]) == 0
    files = sorted((tmp_path / "results" / "eval").glob("*.jsonl"))
    assert len(files) == 2 and "coco_pope_random" in files[0].name + files[1].name
    for f in files:
        recs = pd.read_json(f, lines=True).iloc[1:]
        assert len(recs) == 2
    by_file = {json.loads(_lines(f)[0])["run"]["data"].split(":")[0]: f for f in files}
    assert set(by_file) == {"coco_pope_random.jsonl", "coco_pope_popular.jsonl"}
    # one output file for both subsets: the second is refused, naming the file that differs
    capsys.readouterr()
    out = tmp_path / "shared.jsonl"
    assert cli(["eval", "--benchmark", "pope", "--data", str(rnd), "--out", str(out)]) == 0
    assert cli(["eval", "--benchmark", "pope", "--data", str(pop), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "coco_pope_popular.jsonl" in err and str(out) in err


def test_dtype_is_part_of_the_key(lm, samples, tmp_path):
    from lostattn.models.loader import load_model

    out = tmp_path / "run.jsonl"
    evaluate(lm, samples[:1], out, SPEC, progress=False)
    with pytest.raises(ValueError, match="dtype 'float32' there, 'bfloat16' now"):
        evaluate(load_model("embedded", dtype="bfloat16"), samples[:1], out, SPEC, progress=False)
    head = json.loads(_lines(out)[0])["run"]
    assert {head["dtype"], head["device"], head["split"]} == {"float32", "cpu", "test"}


def test_files_of_the_previous_format_are_refused(lm, samples, tmp_path):
    out = tmp_path / "old.jsonl"
    old_key = {"model": "embedded", "benchmark": "synthetic", "sap": None, "blind": False, "max_new_tokens": 8,
               "seed": 42}
    out.write_text(json.dumps({"run": old_key, "weights": lm.fingerprint}) + "\n"
                   + json.dumps({"id": samples[0].id, "reply": "x"}) + "\n")
    with pytest.raises(ValueError, match="earlier lostattn"):
        evaluate(lm, samples[:2], out, SPEC, progress=False)
    assert len(_lines(out)) == 2  # untouched


def test_a_record_made_from_other_inputs_is_computed_again(lm, samples, tmp_path):
    out = tmp_path / "run.jsonl"
    first = evaluate(lm, samples[:2], out, SPEC, progress=False)
    edited = [dataclasses.replace(samples[0], question=samples[0].question + " Really?"), samples[1]]
    again = evaluate(lm, edited, out, SPEC, progress=False)
    assert len(_lines(out)) == 1 + 3  # header, two records, the edited sample's new one
    assert again["inputs"].iloc[0] != first["inputs"].iloc[0] and again["inputs"].iloc[1] == first["inputs"].iloc[1]


def test_an_overwritten_image_file_is_noticed_and_its_reply_computed_again(lm, samples, tmp_path):
    from PIL import Image

    img = tmp_path / "a.png"
    samples[0].load_image().save(img)
    s = dataclasses.replace(samples[0], image=str(img))
    out = tmp_path / "run.jsonl"
    first = evaluate(lm, [s], out, SPEC, progress=False)
    assert len(evaluate(lm, [s], out, SPEC, progress=False)) == 1 and len(_lines(out)) == 2  # unchanged: reused
    Image.new("RGB", (64, 64), "black").save(img)  # same name, other content
    again = evaluate(lm, [s], out, SPEC, progress=False)
    assert len(_lines(out)) == 3 and again["inputs"].iloc[0] != first["inputs"].iloc[0]


def test_arrow_and_file_images_are_identified_by_their_content(tmp_path):
    import io

    import pyarrow as pa
    from PIL import Image

    from lostattn.tasks.images import ArrowImage, file_fingerprint, image_fingerprint

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
        return buf.getvalue()

    col = pa.chunked_array([pa.array([{"bytes": png("red"), "path": None}, {"bytes": png("blue"), "path": None}])])
    red, blue = (image_fingerprint(ArrowImage(col, i, "x")) for i in (0, 1))
    assert red != blue and red == image_fingerprint(ArrowImage(col, 0, "y"))
    (tmp_path / "a.png").write_bytes(png("red"))
    before = file_fingerprint(tmp_path / "a.png")
    (tmp_path / "a.png").write_bytes(png("blue"))
    assert file_fingerprint(tmp_path / "a.png") != before
    assert file_fingerprint(tmp_path / "gone.png").endswith(":missing")


@pytest.mark.parametrize("sap_cfg", [None, SAPConfig(mode="gaussian_noise")], ids=["vanilla", "sap"])
def test_mixed_image_and_text_only_batches_give_the_same_records_at_every_batch_size(lm, samples, tmp_path, sap_cfg):
    # HallusionBench mixes both kinds: a text-only sample must not strip the images (and SAP) of its batch companions
    mixed = [dataclasses.replace(s, image=None) if i in (1, 4) else s for i, s in enumerate(samples[:8])]
    spec = dataclasses.replace(SPEC, sap=sap_cfg.to_dict() if sap_cfg else None)
    got = {}
    for bs in (1, 2, 3, 7):
        out = tmp_path / f"bs{bs}.jsonl"
        evaluate(lm, mixed, out, spec, batch_size=bs, sap_cfg=sap_cfg, progress=False)
        got[bs] = _lines(out)[1:]
    assert got[2] == got[1] and got[3] == got[1] and got[7] == got[1]
    recs = [json.loads(r) for r in got[1]]
    assert [r["with_image"] for r in recs] == [i not in (1, 4) for i in range(8)]


def test_a_record_cut_short_is_repaired_and_redone(lm, samples, tmp_path):
    out = tmp_path / "run.jsonl"
    evaluate(lm, samples[:3], out, SPEC, progress=False)
    whole = out.read_bytes()
    out.write_bytes(whole[:-25])  # the writer was killed inside the last record
    again = evaluate(lm, samples[:4], out, SPEC, progress=False)
    assert list(again["id"]) == [s.id for s in samples[:4]]
    table = pd.read_json(out, lines=True)
    assert len(table) == 5 and list(table["id"].iloc[1:]) == [s.id for s in samples[:4]]
    assert out.read_bytes().startswith(whole)


def test_a_header_cut_short_is_rewritten_and_foreign_files_are_refused(lm, samples, tmp_path):
    out = tmp_path / "run.jsonl"
    out.write_text('{"format": 2, "run": {"model": "emb')  # killed while starting: no record yet
    assert len(evaluate(lm, samples[:1], out, SPEC, progress=False)) == 1
    assert json.loads(_lines(out)[0])["format"] == records.FORMAT
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\nmore\n")
    with pytest.raises(ValueError, match="notes.jsonl: line 1 is not a run header"):
        evaluate(lm, samples[:1], notes, SPEC, progress=False)
    assert notes.read_text() == "my notes\nmore\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"x": 1}) + "\n")
    with pytest.raises(ValueError, match="not a lostattn results file"):
        evaluate(lm, samples[:1], bad, SPEC, progress=False)


def test_repeated_ids_and_empty_batches_are_refused(lm, samples, tmp_path):
    with pytest.raises(ValueError, match="repeat"):
        evaluate(lm, [samples[0], samples[0]], tmp_path / "d.jsonl", SPEC, progress=False)
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        evaluate(lm, samples[:1], tmp_path / "b.jsonl", SPEC, batch_size=0, progress=False)


def _eval_cmd(out, limit):
    return [sys.executable, "-m", "lostattn", "eval", "--limit", str(limit), "--out", str(out), "--threads", "1"]


def test_a_second_writer_is_refused_and_never_truncates(tmp_path):
    from filelock import FileLock

    out = tmp_path / "run.jsonl"
    out.write_text("")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with FileLock(str(records.lock_path(out))):  # another process holds the file
        res = subprocess.run(_eval_cmd(out, 1), capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "being written by another run" in res.stderr and "Traceback" not in res.stderr
    assert out.read_text() == ""
    # two runs started together: each sample is written once, whichever run wrote it
    procs = [subprocess.Popen(_eval_cmd(out, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for rc, err in results:
        assert rc == 0 or (rc == 2 and "being written by another run" in err), err
    ids = list(pd.read_json(out, lines=True)["id"].iloc[1:])
    assert len(ids) == 12 and len(set(ids)) == 12


def test_a_prompt_longer_than_the_context_is_refused_naming_the_sample(lm, samples, tmp_path):
    long = dataclasses.replace(samples[1], id="too-long", question="Which colour? " * 200)
    out = tmp_path / "run.jsonl"
    with pytest.raises(ValueError, match=r"sample too-long: its prompt is \d+ tokens .*context of 256 tokens"):
        evaluate(lm, [samples[0], long], out, SPEC, batch_size=1, progress=False)
    assert len(_lines(out)) == 2  # the sample before it is kept, nothing was scored for it


def test_analyze_refuses_a_prompt_longer_than_the_context_naming_the_sample(lm, samples):
    from lostattn.residual.analysis import residual_metrics, rope_baseline

    long = dataclasses.replace(samples[1], id="too-long", question="Which colour? " * 200)
    for run in (residual_metrics, rope_baseline):
        with pytest.raises(ValueError, match=r"sample too-long: its prompt is \d+ tokens .*context of 256 tokens holds"):
            run(lm, [samples[0], long], layers=[1], batch_size=2, progress=False)
    fits = dataclasses.replace(samples[1], id="fits", question="Which colour? " * 20)
    assert len(residual_metrics(lm, [fits], layers=[1], conditions=("vanilla",), progress=False)) == 2


def test_a_full_disk_names_the_file_being_written_and_keeps_the_records(lm, samples, tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    out = tmp_path / "run.jsonl"
    evaluate(lm, samples[:1], out, SPEC, progress=False)
    real_open = Path.open

    class Full:  # a file on a full disk: opening works, writing does not
        def __init__(self, f):
            self.f = f

        def tell(self):
            return self.f.tell()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            self.f.close()

    def fake_open(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        return Full(f) if self == out and "a" in mode else f

    monkeypatch.setattr(Path, "open", fake_open)
    with pytest.raises(OSError, match=f"No space left on device while writing {out}; what was written before is "
                                      f"kept"):
        evaluate(lm, samples[:2], out, SPEC, progress=False)
    monkeypatch.undo()
    assert len(_lines(out)) == 2 and json.loads(_lines(out)[1])["id"] == samples[0].id


def test_a_rank_record_computed_again_replaces_the_merged_one(tmp_path):
    from lostattn.harness import records, runner

    key, prov = {"run": "k"}, {}
    out = tmp_path / "run.jsonl"
    with records.Writer(out, key, prov) as w:
        w.append([{"id": "a", "inputs": "old", "reply": "x"}, {"id": "b", "inputs": "same", "reply": "y"}])
    with records.Writer(runner.part_path(out, 1), key, prov) as w:  # rank 1 redid 'a' after its image changed
        w.append([{"id": "a", "inputs": "new", "reply": "z"}, {"id": "b", "inputs": "same", "reply": "y"}])
    assert runner.merge_parts(out, key, ["a", "b"], prov) == 1
    got = records.read(out, key)
    assert got["a"]["reply"] == "z" and got["b"]["reply"] == "y" and not runner.parts(out)
