"""The reproduce pipeline: the profile's matrix of cells, the plan a cluster runs, skipping and resuming, failures
that do not stop the others, output folders it never empties of files it did not write, profile checks, progress.

The last test runs a small matrix end to end on CPU: the embedded model and two random-weight checkpoints × the
synthetic benchmark and a POPE-format file, notebooks 10, 20 and 30, killed mid-run and resumed."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lostattn.pipeline import execute, folders, keys, plan as planning, profiles, reproduce as rp
from lostattn.provenance import REPO_ROOT


def fake_run(calls, fail=()):
    """A stand-in for papermill: records the cell, writes its executed notebook and one output file."""

    def run(cell, progress=None):
        calls.append(cell.number)
        cell.out_nb.parent.mkdir(parents=True, exist_ok=True)
        cell.out_nb.write_text("{}")
        if cell.notebook in fail:
            raise RuntimeError("cell 3: ZeroDivisionError")
        (cell.out_dir / "table.csv").write_text("x\n1\n")

    return run


def write_profile(tmp_path, data: dict, name="matrix.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---- the tiny profile --------------------------------------------------------------------------------------------
def test_tiny_is_a_one_by_one_matrix_that_lands_where_the_book_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path)
    cells = planning.plan(profiles.load_profile("tiny"))
    assert [c.notebook for c in cells] == list(profiles.NOTEBOOKS)
    assert [c.number for c in cells] == list(range(1, len(profiles.NOTEBOOKS) + 1))
    for c in cells:
        assert c.book and c.out_nb == tmp_path / "tiny" / "notebooks" / f"{c.notebook}.ipynb"
        assert c.out_dir == tmp_path / "tiny" / c.notebook
    first = cells[0].params
    assert first["model"] == "embedded" and first["benchmark"] == "synthetic" and first["profile"] == "tiny"
    assert cells[-1].once and cells[-1].params["results"] == str(tmp_path / "tiny")


def test_unchanged_cells_are_skipped_and_force_reruns(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path)
    calls = []
    monkeypatch.setattr(rp, "run_notebook", fake_run(calls))
    assert rp.reproduce("tiny", only="11_layer_curves", build_book=False) == 0
    assert rp.reproduce("tiny", only="11_layer_curves", build_book=False) == 0
    assert calls == [3]
    out = capsys.readouterr().out
    assert "11_layer_curves: up to date, skipped" in out and "nothing changed: no notebook was run" in out
    assert rp.reproduce("tiny", only="11_layer_curves", force=True, build_book=False) == 0
    assert calls == [3, 3]


def test_the_cache_key_follows_parameters_inputs_and_code(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path)
    cell = planning.plan(profiles.load_profile("tiny"))[1]
    key = keys.cache_key(cell)
    cell.params["seed"] = 1
    assert keys.cache_key(cell) != key
    cell.params["seed"] = 0
    assert keys.cache_key(cell) == key
    data = tmp_path / "bench.jsonl"
    data.write_text("a\n")
    cell.params["data"] = str(data)
    with_data = keys.cache_key(cell)
    data.write_text("b\n")  # same path, other bytes: the file's fingerprint enters the key
    assert keys.cache_key(cell) != with_data


def test_a_failing_cell_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path)
    calls = []
    monkeypatch.setattr(rp, "run_notebook", fake_run(calls, fail=("11_layer_curves", "21_sap_sweeps")))
    assert rp.reproduce("tiny", build_book=True) == 1  # failures: the book is not built
    assert calls == list(range(1, 8)), "every cell ran, past the failures"
    err = capsys.readouterr().err
    assert "2 of 7 cells FAILED" in err and "RuntimeError: cell 3: ZeroDivisionError" in err
    nb = tmp_path / "tiny" / "notebooks"
    assert f"partly executed notebook: {nb / '11_layer_curves.ipynb'}" in err
    assert "rerun it alone: lostattn reproduce --profile tiny --cell 3" in err
    assert (nb / "12_token_scope.cachekey").is_file() and not (nb / "11_layer_curves.cachekey").exists()
    assert folders.read_marker(tmp_path / "tiny" / "11_layer_curves")["state"] == "failed"
    calls.clear()
    monkeypatch.setattr(rp, "run_notebook", fake_run(calls))
    assert rp.reproduce("tiny", build_book=False) == 0
    assert calls == [3, 6, 7], "only the failed cells and the aggregated tables ran again"


# ---- a matrix profile: plan, cells, filters ------------------------------------------------------------------------
def matrix_data(root: Path, create: bool = True, **extra) -> dict:
    """A 3-model × 2-benchmark profile; its checkpoint folders and POPE file under `root` (made when `create`: a
    profile naming paths that do not exist is refused before any cell runs)."""
    if create:
        for name in ("qwen-3b", "ocean"):
            (root / "models" / name).mkdir(parents=True, exist_ok=True)
            (root / "models" / name / "config.json").write_text("{}")
        (root / "data").mkdir(exist_ok=True)
        (root / "data" / "pope.jsonl").write_text("")
    data = {"common": {"device": "cpu", "seed": 0, "check_reference": False},
            "models": [{"name": "embedded"}, {"name": "Qwen2.5-VL-3B-Instruct", "path": f"{root}/models/qwen-3b"},
                       {"name": "Ocean-R1-7B", "path": f"{root}/models/ocean", "reasoning": True}],
            "benchmarks": [{"name": "synthetic", "samples_per_family": 2},
                           {"name": "POPE", "data": f"{root}/data/pope.jsonl", "samples_per_family": 4}],
            "conditions": ["gaussian_noise"],
            "run": ["01_embedded_model", "10_table1_rid_mixig", "20_table2_sap", "30_paper_tables"],
            "notebooks": {"01_embedded_model": {"over": "model"},
                          "10_table1_rid_mixig": {"samples_per_family": 1}}}
    data.update(extra)
    return data


def test_matrix_plan_cells_and_filters(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path / "results")
    cfg = write_profile(tmp_path, matrix_data(tmp_path, book={"model": "Qwen2.5-VL-3B-Instruct",
                                                              "benchmark": "pope"}))
    prof = profiles.load_profile("mx", cfg)
    cells = planning.plan(prof)
    # per model: 01 once (first benchmark), then 10 and 20 per benchmark; the aggregated tables last
    assert len(cells) == 3 * (1 + 2 * 2) + 1
    assert [(c.model, c.benchmark, c.notebook) for c in cells[:5]] == [
        ("embedded", "synthetic", "01_embedded_model"), ("embedded", "synthetic", "10_table1_rid_mixig"),
        ("embedded", "synthetic", "20_table2_sap"), ("embedded", "pope", "10_table1_rid_mixig"),
        ("embedded", "pope", "20_table2_sap")]
    assert cells[-1].notebook == "30_paper_tables" and cells[-1].params["config"] == str(cfg)
    by = {(c.model, c.benchmark, c.notebook): c for c in cells}
    q20 = by["Qwen2.5-VL-3B-Instruct", "pope", "20_table2_sap"]
    assert q20.book and q20.out_dir == tmp_path / "results" / "mx" / "20_table2_sap"
    assert q20.params["model"] == f"{tmp_path}/models/qwen-3b" and q20.params["data"] == f"{tmp_path}/data/pope.jsonl"
    assert q20.params["modes"] == ["gaussian_noise"] and q20.params["samples_per_family"] == 4
    if "model_name" in profiles.notebook_parameters("20_table2_sap"):
        assert q20.params["model_name"] == "Qwen2.5-VL-3B-Instruct"
    e10 = by["embedded", "synthetic", "10_table1_rid_mixig"]
    assert not e10.book and e10.out_dir == tmp_path / "results" / "mx" / "cells" / "embedded" / "synthetic" / \
        "10_table1_rid_mixig"
    assert e10.params["samples_per_family"] == 1, "the notebook's section wins over the benchmark's entry"
    assert "modes" not in e10.params, "a parameter reaches only the notebooks that declare it"
    ocean = by["Ocean-R1-7B", "pope", "20_table2_sap"]
    if "reasoning" in profiles.notebook_parameters("20_table2_sap"):
        assert ocean.params["reasoning"] is True and "reasoning" not in q20.params
    assert len({c.out_dir for c in cells}) == len(cells)

    assert [c.number for c in planning.select(cells, model="ocean-r1-7b")] == [c.number for c in cells
                                                                         if c.model == "Ocean-R1-7B"] + [16]
    assert {c.benchmark for c in planning.select(cells, benchmark="POPE") if not c.once} == {"pope"}
    assert [c.number for c in planning.select(cells, cell=6)] == [6]
    with pytest.raises(ValueError, match=r"not a model of the profile; did you mean 'Ocean-R1-7B'"):
        planning.select(cells, model="Ocean-R1")
    with pytest.raises(ValueError, match="numbered 1 to 16"):
        planning.select(cells, cell=17)

    assert rp.reproduce("mx", config=str(cfg), plan_only=True) == 0
    out = capsys.readouterr().out
    assert "3 model(s) × 2 benchmark(s), 16 cells" in out
    assert re.search(rf"^ +6  Qwen2.5-VL-3B-Instruct × Synthetic · 01_embedded_model +to run +lostattn reproduce "
                     rf"--profile mx --config {re.escape(str(cfg))} --cell 6$", out, re.M)
    assert "--array=1-15" in out and "--dependency=afterany:$jid" in out and "--cell 16'" in out


def test_cell_runs_one_and_filters_leave_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path / "results")
    cfg = write_profile(tmp_path, matrix_data(tmp_path, create=False, models=[{"name": "embedded"}]))
    calls = []
    monkeypatch.setattr(rp, "run_notebook", fake_run(calls))
    # the POPE file does not exist: refused before any cell runs, naming it, even for cells that do not read it
    with pytest.raises(FileNotFoundError, match=r"benchmarks\[1\] \(pope\)\.data: .*pope.jsonl does not exist"):
        rp.reproduce("mx", config=str(cfg), benchmark="synthetic", build_book=False)
    assert calls == []
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pope.jsonl").write_text("")
    assert rp.reproduce("mx", config=str(cfg), benchmark="synthetic", build_book=False) == 0
    assert calls == [1, 2, 3, 6]
    assert rp.reproduce("mx", config=str(cfg), cell=4, build_book=False) == 0
    assert calls == [1, 2, 3, 6, 4]


# ---- output folders ----------------------------------------------------------------------------------------------
def test_an_out_dir_holding_foreign_files_is_refused_and_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path / "results")
    mine = tmp_path / "my_results"
    (mine / "drafts").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    (mine / "drafts" / "a.txt").write_text("a")
    cfg = write_profile(tmp_path, {"notebooks": {"11_layer_curves": {"out_dir": str(mine)}}})
    calls = []
    monkeypatch.setattr(rp, "run_notebook", fake_run(calls))
    with pytest.raises(ValueError) as e:
        rp.reproduce("mine", config=str(cfg), build_book=False)
    msg = str(e.value)
    assert f"out_dir {mine} of 11_layer_curves" in msg and "thesis.tex" in msg and "drafts/a.txt" in msg
    assert "Point out_dir at a new or empty folder" in msg
    assert calls == [], "refused before anything ran"
    assert (mine / "thesis.tex").read_text() == "years of work" and (mine / "drafts" / "a.txt").is_file()


def _layer_curves_into_out(tmp_path, monkeypatch):
    """A profile that runs 11_layer_curves into tmp_path/out: (out, the profile's data, its file)."""
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path / "results")
    out = tmp_path / "out"
    data = {"notebooks": {"11_layer_curves": {"out_dir": str(out)}}, "run": ["11_layer_curves"]}
    return out, data, write_profile(tmp_path, data)


def test_only_the_projects_files_are_removed_when_a_cell_starts_afresh(tmp_path, monkeypatch):
    out, data, cfg = _layer_curves_into_out(tmp_path, monkeypatch)
    calls = []
    monkeypatch.setattr(rp, "run_notebook", fake_run(calls))
    assert rp.reproduce("mine", config=str(cfg), build_book=False) == 0
    assert folders.read_marker(out)["files"] == ["table.csv"] and folders.read_marker(out)["state"] == "done"

    # a file put there after a finished run is not the project's: a fresh start is refused
    (out / "notes.txt").write_text("mine")
    data["common"] = {"seed": 1}
    write_profile(tmp_path, data)
    with pytest.raises(ValueError, match=r"holds files lostattn did not write \(notes.txt\)"):
        rp.reproduce("mine", config=str(cfg), build_book=False)
    assert (out / "notes.txt").is_file() and (out / "table.csv").is_file()
    (out / "notes.txt").unlink()

    # a run killed before it listed its files: what it wrote after it started is the project's, older files not
    marker = folders.read_marker(out)
    marker.update(state="running", run_started=time.time() - 60)
    (out / folders.MARKER).write_text(json.dumps(marker))
    (out / "sub").mkdir()
    (out / "sub" / "partial.jsonl").write_text("{}\n")
    old = out / "old.txt"
    old.write_text("before the run")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    with pytest.raises(ValueError, match=r"\(old.txt\)"):
        rp.reproduce("mine", config=str(cfg), build_book=False)
    old.unlink()
    assert rp.reproduce("mine", config=str(cfg), build_book=False) == 0
    assert sorted(p.name for p in out.iterdir()) == [folders.MARKER, "table.csv"], "partial.jsonl and sub/ removed"
    assert folders.read_marker(out)["files"] == ["table.csv"] and calls == [1, 1]


def test_user_files_written_during_or_after_a_run_are_never_removed(tmp_path, monkeypatch):
    out, data, cfg = _layer_curves_into_out(tmp_path, monkeypatch)
    calls = []
    table_and_notes = fake_run(calls)

    def run(cell, progress=None):  # the user saves notes into the folder while the cell runs
        table_and_notes(cell, progress)
        (cell.out_dir / "notes.md").write_text("my reading of the table")
        if progress is not None and progress.on_cell_done:
            progress.on_cell_done()

    monkeypatch.setattr(rp, "run_notebook", run)
    assert rp.reproduce("mine", config=str(cfg), build_book=False) == 0
    assert folders.read_marker(out)["files"] == ["table.csv"]
    data["common"] = {"seed": 1}
    write_profile(tmp_path, data)
    with pytest.raises(ValueError, match=r"holds files lostattn did not write \(notes.md\)"):
        rp.reproduce("mine", config=str(cfg), build_book=False)
    assert (out / "notes.md").read_text() == "my reading of the table"

    # after a kill (the marker still says running): a new analysis notebook of the user's is not claimed either
    marker = folders.read_marker(out)
    marker.update(state="running", run_started=time.time() - 60)
    (out / folders.MARKER).write_text(json.dumps(marker))
    (out / "analysis.ipynb").write_text("{}")
    with pytest.raises(ValueError, match=r"analysis.ipynb, notes.md"):
        rp.reproduce("mine", config=str(cfg), build_book=False)
    assert (out / "analysis.ipynb").is_file() and (out / "notes.md").is_file()


def test_a_folder_left_by_an_earlier_version_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path)
    legacy = tmp_path / "tiny" / "11_layer_curves"
    legacy.mkdir(parents=True)
    (legacy / ".runkey").write_text("an old key")
    (legacy / "old.csv").write_text("x\n")
    calls = []
    monkeypatch.setattr(rp, "run_notebook", fake_run(calls))
    assert rp.reproduce("tiny", only="11_layer_curves", build_book=False) == 0
    assert sorted(p.name for p in legacy.iterdir()) == [folders.MARKER, "table.csv"]


# ---- profile checks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../..", "a/b", ".hidden", "", "tiny/../x"])
def test_profile_names_must_be_plain(name, tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path / "results")
    cfg = write_profile(tmp_path, {})
    with pytest.raises(ValueError, match="not a plain name"):
        rp.reproduce(name, config=str(cfg), build_book=False)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("data, where, wrong, right", [
    ({"common": {"sample_per_family": 3}}, "common", "sample_per_family", "samples_per_family"),
    ({"notebooks": {"10_table1_rid_mixig": {"rank_rul": "tol"}}}, "notebooks.10_table1_rid_mixig", "rank_rul",
     "rank_rule"),
    ({"models": [{"name": "embedded", "batch_sise": 2}]}, r"models\[0\] \(embedded\)", "batch_sise", "batch_size"),
    ({"benchmarks": [{"name": "synthetic", "splt": "test"}]}, r"benchmarks\[0\] \(synthetic\)", "splt", "split"),
    ({"notebook": {}}, "unknown top-level key", "notebook", "notebooks"),
])
def test_unknown_keys_are_refused_with_the_closest_parameter(tmp_path, data, where, wrong, right):
    cfg = write_profile(tmp_path, data)
    with pytest.raises(ValueError, match=rf"{where}.*{wrong!r}.*did you mean {right!r}"):
        profiles.load_profile("x", cfg)


def test_unknown_notebooks_models_and_benchmarks_are_refused(tmp_path):
    for data, match in [({"notebooks": {"20_table2": {}}}, "unknown notebook '20_table2'; did you mean '20_table2_sap'"),
                        ({"run": ["10_table1"]}, "run: unknown notebook '10_table1'"),
                        ({"benchmarks": [{"name": "popee"}]}, r"benchmarks\[0\]: unknown benchmark 'popee'"),
                        ({"book": {"model": "llava"}}, r"book: model 'llava' is not in the profile's models"),
                        ({"common": {"out_dir": "x"}}, "'out_dir' is set by reproduce"),
                        ({"notebooks": {"10_table1_rid_mixig": {"over": "modle"}}}, "is not an axis")]:
        with pytest.raises(ValueError, match=match):
            profiles.load_profile("x", write_profile(tmp_path, data))


def test_parameters_are_read_from_the_notebooks_themselves(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for n in profiles.NOTEBOOKS:
        nb = json.loads((profiles.NOTEBOOK_DIR / f"{n}.ipynb").read_text())
        if n == "10_table1_rid_mixig":
            cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
            cell["source"] = "".join(cell["source"]) + "\nnew_knob = 1\nlow, high = 0.0, 1.0\n"
        (nbs / f"{n}.ipynb").write_text(json.dumps(nb))

    monkeypatch.setattr(profiles, "NOTEBOOK_DIR", nbs)
    cfg = write_profile(tmp_path, {"notebooks": {"10_table1_rid_mixig": {"new_knob": 2, "high": 0.5}}})
    cell = next(c for c in planning.plan(profiles.load_profile("x", cfg)) if c.notebook == "10_table1_rid_mixig")
    assert cell.params["new_knob"] == 2 and cell.params["high"] == 0.5
    with pytest.raises(ValueError, match="new_knob"):
        profiles.load_profile("x", write_profile(tmp_path, {"notebooks": {"11_layer_curves": {"new_knob": 2}}}))


def test_malformed_yaml_is_named_with_its_file_and_line(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("common:\n  seed: 1\n  device: [cpu\nmodels:\n  - name: embedded\n")
    with pytest.raises(ValueError) as e:
        profiles.load_profile("x", cfg)
    msg = str(e.value)
    assert str(cfg) in msg and re.search(r"line [3-5], column \d+", msg) and "\n" not in msg
    cfg.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="the file must be a mapping"):
        profiles.load_profile("x", cfg)


def test_a_profile_of_the_earlier_layout_still_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path / "results")
    cfg = write_profile(tmp_path, {
        "common": {"model": "/models/llava-1.5-7b-hf", "device": "cuda", "check_reference": False},
        "notebooks": {"10_table1_rid_mixig": {"benchmark": "vmcbench", "data": "/data/vmcbench/test.tsv"},
                      "20_table2_sap": {"benchmark": "pope", "data": "/data/pope/coco_pope_random.jsonl"}}})
    cells = {c.notebook: c for c in planning.plan(profiles.load_profile("paper", cfg))}
    assert len(cells) == len(profiles.NOTEBOOKS)
    assert cells["10_table1_rid_mixig"].model == "llava-1.5-7b-hf"
    assert cells["10_table1_rid_mixig"].params["model"] == "/models/llava-1.5-7b-hf"
    assert (cells["20_table2_sap"].benchmark, cells["20_table2_sap"].params["data"]) == \
        ("pope", "/data/pope/coco_pope_random.jsonl")
    assert cells["11_layer_curves"].benchmark == "synthetic"
    assert all(c.book for c in cells.values())


def test_the_paper_profile_is_the_papers_matrix():
    from lostattn.paper.tables import paper_table

    prof = profiles.load_profile("paper")
    names = [m["name"] for m in prof.models]
    assert names == ["llava-1.5-7b-hf", "llava-v1.6-vicuna-7b-hf", "llava-onevision-qwen2-7b-ov-hf",
                     "Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-7B-Instruct", "Ocean-R1-7B"]
    assert set(paper_table("table2")["model"]) <= set(names), "results join the paper's model column"
    assert [b["name"] for b in prof.benchmarks] == ["pope", "3dsrbench", "realworldqa", "mmmu", "vmcbench",
                                                    "mathvista", "hallusionbench"]
    assert [m.get("reasoning", False) for m in prof.models] == [False] * 5 + [True]
    cells = planning.plan(prof)
    assert sum(c.notebook == "20_table2_sap" for c in cells) == 6 * 7
    assert sum(c.notebook == "01_embedded_model" for c in cells) == 6
    assert [c for c in cells if c.book and c.notebook == "20_table2_sap"][0].model == "Qwen2.5-VL-3B-Instruct"


# ---- progress --------------------------------------------------------------------------------------------------
def test_a_line_per_code_cell_named_by_what_it_does_and_encrypted_kernels():
    import io

    import nbformat

    out = io.StringIO()
    done = []
    p = execute.NotebookProgress(out, on_cell_done=lambda: done.append(1))
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("# papermill parameters\nx = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import numpy as np\nfrom a import (b,\n  c)\nmetrics = compute(x)\nshow()"),
        nbformat.v4.new_markdown_cell("# Title\n\ntext\n\n## Table 2: *replacing* attention"),
        nbformat.v4.new_code_cell("# Score every SAP condition on each benchmark\nmain = conditions_of(p)"),
        nbformat.v4.new_code_cell("# NBVAL_IGNORE_OUTPUT\nscores = harness.evaluate(model, f(x))"),
        nbformat.v4.new_code_cell("display(table(t))")])
    p.begin(nb)
    for c in nb.cells:
        p.start(c)
        p.end(c, failed=c.source.startswith("display"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and len(done) == 4 and len(p.seconds) == 4
    # no comment and no heading above it: its first assignment after the imports
    assert re.fullmatch(r" +\[1/4\] metrics = compute\(x\) \.\.\. \d+\.\ds", lines[0])
    # its first comment line, not its code
    assert re.fullmatch(r" +\[2/4\] Score every SAP condition on each benchmark \.\.\. \d+\.\ds", lines[1])
    # no comment (an nbval directive is none): the heading of its section, and what it computes, as a cell beside
    # it shares the heading; a cell that only shows keeps the heading alone
    assert re.fullmatch(r" +\[3/4\] Table 2: replacing attention \(evaluate\) \.\.\. \d+\.\ds", lines[2])
    assert re.fullmatch(r" +\[4/4\] Table 2: replacing attention \.\.\. FAILED after \d+\.\ds", lines[3])
    import zmq

    if zmq.has("curve"):
        assert execute._kernel_config().KernelManager.transport_encryption == "auto"


def test_a_long_cell_reports_while_it_runs():
    import io

    import nbformat

    out = io.StringIO()
    p = execute.NotebookProgress(out, expected=[12.0], heartbeat=0.05)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# Evaluate the model\nrun()")])
    p.begin(nb)
    p.start(nb.cells[0])
    time.sleep(0.18)
    p.end(nb.cells[0])
    lines = out.getvalue().splitlines()
    beats = [ln for ln in lines if "still running" in ln]
    assert lines[0] == "    [1/1] Evaluate the model " and 2 <= len(beats) <= 4, lines
    assert all(re.fullmatch(r" +still running: 0s \(took 12s last run\)", b) for b in beats), beats
    assert re.fullmatch(r" +\[1/1\] \.\.\. 0\.\ds", lines[-1]), lines
    time.sleep(0.12)
    assert out.getvalue().count("still running") == len(beats), "the reports stop when the cell ends"


def test_eta_from_durations_measured_by_earlier_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path / "results")
    cfg = write_profile(tmp_path, {"common": {"seed": 0}, "models": [{"name": "embedded"}],
                                   "benchmarks": [{"name": "synthetic", "samples_per_family": 1}],
                                   "run": ["10_table1_rid_mixig", "20_table2_sap"]})
    prof = profiles.load_profile("matrix", cfg)
    cells = planning.plan(prof)
    path = rp._durations_path(prof)
    assert path == tmp_path / "results" / "matrix" / "durations.json" and rp.load_durations(path) == {}
    # never timed: no invented number
    assert rp._eta_text([rp._estimate(c, {}, {}) for c in cells]) == "ETA unknown (no earlier run timed these cells)"
    rp.record_duration(path, cells[0], 780.04, [1.0, 779.0])
    history = rp.load_durations(path)
    assert history[cells[0].label] == {"notebook": cells[0].notebook, "seconds": 780.0, "cells": [1.0, 779.0]}
    ests = [rp._estimate(c, history, {}) for c in cells]
    assert ests == [780.0, None] and rp._eta_text(ests) == "ETA 13m00s + 1 cell(s) never timed"
    # this run's measured cells of the same notebook stand in for a cell never timed itself
    assert rp._estimate(cells[1], history, {cells[1].notebook: [60.0, 120.0]}) == 90.0
    path.write_text("not json")
    assert rp.load_durations(path) == {}


def test_reproduce_records_durations_and_uses_them(tmp_path, monkeypatch):
    calls = []

    def run(cell, progress=None):
        fake_run(calls)(cell)
        progress.seconds = [0.5, 2.0]

    monkeypatch.setattr(rp, "run_notebook", run)
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path / "results")
    cfg = write_profile(tmp_path, {"common": {"seed": 0}, "models": [{"name": "embedded"}],
                                   "benchmarks": [{"name": "synthetic", "samples_per_family": 1}],
                                   "run": ["10_table1_rid_mixig"]})
    assert rp.reproduce("matrix", config=str(cfg), build_book=False) == 0
    prof = profiles.load_profile("matrix", cfg)
    history = rp.load_durations(rp._durations_path(prof))
    (cell,) = planning.plan(prof)
    assert history[cell.label]["cells"] == [0.5, 2.0] and history[cell.label]["seconds"] >= 0
    seen = []
    monkeypatch.setattr(rp, "_run_cell", lambda c, key, expected=None, durations_file=None: seen.append(expected))
    assert rp.reproduce("matrix", config=str(cfg), build_book=False, force=True) == 0
    assert seen == [[0.5, 2.0]], "the next run's progress lines know each code cell's last duration"


# ---- end to end: a small matrix on CPU, killed and resumed ---------------------------------------------------------
def _pope_fixture(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    recs = []
    for i, (colour, label) in enumerate([("red", "yes"), ("blue", "no"), ("green", "yes"), ("white", "no")]):
        Image.new("RGB", (32, 32), colour).save(folder / f"img{i}.png")
        recs.append({"question_id": i, "image": f"img{i}.png", "text": f"Is there a {colour} square in the image?",
                     "label": label})
    path = folder / "coco_pope_random.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


_RUN = ("import sys; from pathlib import Path; from lostattn.pipeline import execute, folders, keys, plan as planning, profiles, reproduce as rp; "
        "profiles.RESULTS_DIR = Path(sys.argv[1]); "
        "sys.exit(rp.reproduce('matrix', config=sys.argv[2], build_book=False, only=sys.argv[3] or None, "
        "benchmark=sys.argv[4] or None))")


def _start(results, cfg, only="", benchmark=""):
    return subprocess.Popen([sys.executable, "-c", _RUN, str(results), str(cfg), only, benchmark], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_tree(proc) -> None:
    """SIGKILL a process started here and every process below it (its notebook kernel runs in a session of its
    own), and wait until they are gone."""
    def children(pid):
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(stat.parent.name))
        return kids

    tree, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children(pid)
    for pid in reversed(tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in tree[1:]) and \
            time.time() < deadline:
        time.sleep(0.05)


def _state(pid) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _complete_lines(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def _records(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("*vanilla*.jsonl")) if out_dir.is_dir() else []


def test_a_matrix_runs_end_to_end_and_resumes_after_a_kill(tmp_path, checkpoints, monkeypatch):
    from lostattn.paper import aggregate as ag

    nb20 = profiles.notebook_parameters("20_table2_sap")
    quick = {k: v for k, v in {"protocol": "controlled", "compare_protocols": False, "max_new_tokens": 2}.items()
             if k in nb20}  # the notebook's own fast settings, where it has them
    data = {"common": {"device": "cpu", "dtype": "float32", "seed": 0, "check_reference": False, "batch_size": 4},
            "models": [{"name": "embedded"}, {"name": "tiny-llava", "path": checkpoints("llava")},
                       # a random-weight stand-in under a paper name, so the paper's values join
                       {"name": "Qwen2.5-VL-3B-Instruct", "path": checkpoints("qwen2_5_vl")}],
            "benchmarks": [{"name": "synthetic", "samples_per_family": 1},
                           {"name": "pope", "data": str(_pope_fixture(tmp_path / "pope")), "samples_per_family": 4}],
            "conditions": ["gaussian_noise"],
            "run": ["10_table1_rid_mixig", "20_table2_sap", "30_paper_tables"],
            "notebooks": {"10_table1_rid_mixig": {"samples_per_family": 1}, "20_table2_sap": quick}}
    cfg = write_profile(tmp_path, data)
    results = tmp_path / "results"
    monkeypatch.setattr(profiles, "RESULTS_DIR", results)
    cells = planning.plan(profiles.load_profile("matrix", cfg))
    assert len(cells) == 3 * 2 * 2 + 1
    sap_cells = [c for c in cells if c.notebook == "20_table2_sap"]

    # 1. killed (the whole process group, kernel included) while a Table 2 cell is writing its records
    proc = _start(results, cfg)
    victim, deadline = None, time.time() + 150
    while victim is None and proc.poll() is None and time.time() < deadline:
        for c in sap_cells:
            if not c.key_file.exists() and any(len(f.read_text().splitlines()) >= 2 for f in _records(c.out_dir)):
                victim = c
                break
        time.sleep(0.02)
    _kill_tree(proc)
    out, err = proc.communicate()
    assert victim is not None, f"no cell was caught mid-run:\n{out[-3000:]}\n{err[-3000:]}"
    assert "ETA" in out and re.search(r"^ +\[1/\d+\] \S", out, re.M), out[-2000:]
    assert "without encryption" not in err, "the kernel's TCP warning reached the terminal"
    kept = {f.name: _complete_lines(f) for f in _records(victim.out_dir)}
    finished = {c.number: c.out_nb.stat().st_mtime_ns for c in cells if c.key_file.is_file()}
    assert victim.number not in finished and folders.read_marker(victim.out_dir)["state"] == "running"

    # 2. resumed by two processes at once, one per benchmark (as cluster tasks would), without the tables page
    workers = [_start(results, cfg, "10_table1_rid_mixig,20_table2_sap", b) for b in ("synthetic", "pope")]
    logs = [w.communicate(timeout=240) for w in workers]
    for w, (o, e) in zip(workers, logs):
        assert w.returncode == 0, f"{o[-3000:]}\n{e[-3000:]}"
        assert "without encryption" not in e
    for b, (o, _) in zip(("synthetic", "pope"), logs):
        done_before = [n for n in finished if cells[n - 1].benchmark == b]
        assert not done_before or f"{len(done_before)} of 6 cells up to date, skipped" in o, o[:3000]
    for n, mtime in finished.items():
        assert cells[n - 1].out_nb.stat().st_mtime_ns == mtime, f"finished cell {n} ran again"
    for name, before in kept.items():
        after = (victim.out_dir / name).read_bytes()
        assert after.startswith(before) and len(before.splitlines()) >= 2, "the records were resumed, not restarted"

    # 3. the whole profile again: every cell up to date, the aggregated tables made
    assert rp.reproduce("matrix", config=str(cfg), build_book=False) == 0
    m = ag.collect("matrix", cfg, results / "matrix")
    assert set(m.coverage["state"]) == {"done"} and len(m.coverage) == 12
    rid = ag.table1_layout(m, "RID")
    assert list(rid["model"]) == ["embedded", "tiny-llava", "Qwen2.5-VL-3B-Instruct", ag.MEAN]
    modules = [c for c in rid.columns if c != "model"]
    assert {"Noise Δ", "Noise QKV", "Attention", "FFN"} <= set(modules) and rid[modules].notna().all().all()
    pd.testing.assert_series_equal(rid.iloc[3][modules].astype(float), rid.iloc[:3][modules].astype(float).mean(),
                                   check_names=False)
    t2 = ag.table2_scores(m)
    q = t2[(t2["model"] == "Qwen2.5-VL-3B-Instruct") & (t2["benchmark"] == "POPE")].set_index("condition")
    assert q.loc["vanilla", "paper"] == 86.13 and q.loc["vanilla", "n"] == 4
    assert t2["accuracy"].notna().all()
    page = results / "matrix" / "30_paper_tables"
    assert pd.read_csv(page / "table1_per_model.csv")["model"].nunique() == 3

    # 4. the interrupted cell's tables equal those of an uninterrupted run of it
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(profiles, "RESULTS_DIR", fresh)
    assert rp.reproduce("matrix", config=str(cfg), cell=victim.number, build_book=False) == 0
    again = planning.plan(profiles.load_profile("matrix", cfg))[victim.number - 1]
    pd.testing.assert_frame_equal(pd.read_csv(victim.out_dir / "table2_scores.csv"),
                                  pd.read_csv(again.out_dir / "table2_scores.csv"))
