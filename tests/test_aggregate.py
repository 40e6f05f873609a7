"""The paper's tables over a matrix: Table 1 per model and its mean over models, Table 2 per model, benchmark and
condition, the paper's values beside ours; missing cells stay missing."""
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from lostattn.paper import aggregate as ag
from lostattn.pipeline import folders, plan as planning, profiles
from lostattn.pages.display import table
from lostattn.provenance import REPO_ROOT

MODELS = [{"name": "tiny-a", "path": "/models/a"}, {"name": "Qwen2.5-VL-3B-Instruct", "path": "/models/qwen"},
          {"name": "never-run", "path": "/models/c"}]


def t1(rid_attn, n, noise_ffn=True):
    rows = [("Noise Δ", 0.6, -0.8), ("Noise QKV", 0.4, -0.5), ("Attention", rid_attn, 0.6), ("FFN", 0.2, 0.0)]
    rows += [("Noise FFN", 0.3, -0.1)] if noise_ffn else []
    return pd.DataFrame([{"module": m, "RID": r, "dS": r / 4, "dD": 3 * r / 4, "MixIG": x, "RID_sd": 0.01,
                          "MixIG_sd": 0.02, "n": n} for m, r, x in rows])


def t2(rows, protocol=None):
    df = pd.DataFrame(rows, columns=["family", "n", "accuracy", "condition"])
    df["f1"], df["yes_ratio"] = np.nan, np.nan
    if protocol:
        df["protocol"] = protocol
    return df


@pytest.fixture
def matrix(tmp_path):
    """A 3 models × 2 benchmarks profile; the third model never ran; outputs written as notebooks 10 and 20 do."""
    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": MODELS, "benchmarks": [{"name": "synthetic"}, {"name": "pope", "data": "/data/pope"}],
        "conditions": ["gaussian_noise"], "run": ["10_table1_rid_mixig", "20_table2_sap", "30_paper_tables"]}))
    results = tmp_path / "results"
    cells = {(c.model, c.benchmark, c.notebook): c for c in planning.plan(profiles.load_profile("m", cfg), results)}

    def write(model, bench, nb, df, name, **meta):
        c = cells[model, bench, nb]
        c.out_dir.mkdir(parents=True, exist_ok=True)
        df.to_csv(c.out_dir / f"{name}.csv", index=False)
        (c.out_dir / f"{name}.meta.json").write_text(json.dumps(
            {"model": c.params["model"], "benchmark": bench, **meta}))
        return c

    write("tiny-a", "synthetic", "10_table1_rid_mixig", t1(0.2, 10), "table1")
    write("tiny-a", "pope", "10_table1_rid_mixig", t1(0.5, 30, noise_ffn=False), "table1")
    write("Qwen2.5-VL-3B-Instruct", "synthetic", "10_table1_rid_mixig", t1(0.1, 10), "table1")
    # a failed run's leftovers are not used
    failed = write("Qwen2.5-VL-3B-Instruct", "pope", "10_table1_rid_mixig", t1(9.0, 10), "table1")
    (failed.out_dir / folders.MARKER).write_text(json.dumps({"written_by": "lostattn", "state": "failed"}))

    syn = [("exist", 4, 100.0, c) for c in ("vanilla", "blind", "gaussian_noise")]
    syn += [("mc", 4, 50.0, "vanilla"), ("mc", 4, 25.0, "blind"), ("mc", 4, 75.0, "gaussian_noise")]
    write("tiny-a", "synthetic", "20_table2_sap", t2(syn), "table2_scores")
    write("Qwen2.5-VL-3B-Instruct", "synthetic", "20_table2_sap", t2(syn), "table2_scores")
    pope = [("pope_random", 2, 50.0, "vanilla"), ("pope_popular", 6, 100.0, "vanilla"),
            ("pope_random", 2, 0.0, "gaussian_noise"), ("pope_popular", 6, 50.0, "gaussian_noise")]
    other = [("pope_random", 2, 7.0, "vanilla"), ("pope_popular", 6, 7.0, "vanilla")]
    write("Qwen2.5-VL-3B-Instruct", "pope", "20_table2_sap",
          pd.concat([t2(pope, "official"), t2(other, "controlled")], ignore_index=True), "table2_scores",
          protocol="official")
    # outputs of another benchmark in this cell's folder (its sidecar says so) are not used either
    write("tiny-a", "pope", "20_table2_sap", t2(pope), "table2_scores")
    meta = cells["tiny-a", "pope", "20_table2_sap"].out_dir / "table2_scores.meta.json"
    meta.write_text(json.dumps({"model": "/models/a", "benchmark": "mmmu"}))
    return ag.collect("m", cfg, results)


def test_coverage_names_every_cell_and_why_it_is_left_out(matrix):
    cov = matrix.coverage.set_index(["model", "benchmark", "notebook"])["state"]
    assert len(cov) == 12
    assert cov["Qwen2.5-VL-3B-Instruct", "pope", "10_table1_rid_mixig"] == "failed"
    assert cov["tiny-a", "pope", "20_table2_sap"] == "other run"
    assert (cov.xs("never-run") == "not run").all()
    assert (cov == "done").sum() == 6
    counts = ag.coverage_counts(matrix).set_index("notebook")
    assert counts.loc["10_table1_rid_mixig", "done"] == 3 and counts.loc["10_table1_rid_mixig", "failed"] == 1


def test_table1_pools_a_models_benchmarks_and_averages_models_alike(matrix):
    per = ag.table1_per_model(matrix).set_index(["model", "module"])
    assert ag.table1_metrics(matrix) == ["RID", "dS", "dD", "MixIG"]
    # tiny-a: 0.2 over n=10 (synthetic) and 0.5 over n=30 (POPE), pooled
    assert per.loc[("tiny-a", "Attention"), "RID"] == pytest.approx((0.2 * 10 + 0.5 * 30) / 40)
    assert per.loc[("tiny-a", "Attention"), "benchmarks"] == 2
    assert per.loc[("tiny-a", "Noise FFN"), "RID"] == pytest.approx(0.3), "a module one cell lacks: the others"
    assert per.loc[("Qwen2.5-VL-3B-Instruct", "Attention"), "RID"] == pytest.approx(0.1), "the failed cell left out"
    assert per.loc["never-run"]["RID"].isna().all()

    rid = ag.table1_layout(matrix, "RID")
    assert list(rid["model"]) == ["tiny-a", "Qwen2.5-VL-3B-Instruct", "never-run", ag.MEAN]
    assert list(rid.columns[1:]) == ["Noise Δ", "Noise QKV", "Attention", "FFN", "Noise FFN"]
    mean = rid.set_index("model").loc[ag.MEAN]
    assert mean["Attention"] == pytest.approx(((0.2 * 10 + 0.5 * 30) / 40 + 0.1) / 2), "the two models with values"
    assert math.isnan(rid.set_index("model").loc["never-run", "FFN"])

    t = ag.table1_mean(matrix).set_index("module")
    assert t.loc["Attention", "RID"] == pytest.approx(mean["Attention"]) and t.loc["Attention", "models"] == 2
    assert t.loc["Attention", "RID paper"] == 0.06 and t.loc["Noise Δ", "MixIG paper"] == -0.80
    assert math.isnan(t.loc["Noise FFN", "RID paper"]), "the paper reports no Noise FFN row: none is made up"
    assert list(t.columns) == ["RID", "RID paper", "dS", "dD", "MixIG", "MixIG paper", "models"]


def test_table2_weighs_families_by_count_and_sets_the_papers_values_beside(matrix):
    s = ag.table2_scores(matrix).set_index(["model", "benchmark", "condition"]).sort_index()
    qwen = "Qwen2.5-VL-3B-Instruct"
    # POPE: 50% of 2 and 100% of 6 samples, the main protocol's rows only
    assert s.loc[(qwen, "POPE", "vanilla"), "accuracy"] == pytest.approx(87.5)
    assert s.loc[(qwen, "POPE", "vanilla"), "n"] == 8
    assert s.loc[(qwen, "POPE", "gaussian_noise"), "accuracy"] == pytest.approx(37.5)
    assert s.loc[(qwen, "POPE", "vanilla"), "paper"] == 86.13
    assert s.loc[(qwen, "POPE", "gaussian_noise"), "paper"] == 87.58
    assert math.isnan(s.loc[(qwen, "POPE", "blind"), "paper"])
    # the synthetic benchmark, whole and by family, each family beside the benchmark it stands for
    assert s.loc[(qwen, "Synthetic", "vanilla"), "accuracy"] == pytest.approx(75.0)
    assert math.isnan(s.loc[(qwen, "Synthetic", "vanilla"), "paper"])
    assert s.loc[(qwen, "Synthetic: exist ≈ POPE", "vanilla"), "accuracy"] == 100.0
    assert s.loc[(qwen, "Synthetic: exist ≈ POPE", "vanilla"), "paper"] == 86.13
    assert s.loc[(qwen, "Synthetic: mc ≈ VMCBench", "gaussian_noise"), "accuracy"] == 75.0
    assert math.isnan(s.loc[(qwen, "Synthetic: spatial ≈ 3DSRBench", "vanilla"), "accuracy"]), "no such family run"
    # tiny-a has no paper values; its POPE cell held another benchmark's outputs; never-run has nothing
    assert s.loc["tiny-a"]["paper"].isna().all()
    assert s.loc[("tiny-a", "POPE")]["accuracy"].isna().all()
    assert s.loc["never-run"]["accuracy"].isna().all() and (s.loc["never-run"]["n"] == 0).all()
    assert matrix.conditions == ["vanilla", "blind", "gaussian_noise"]

    wide = ag.table2_layout(matrix)
    assert list(wide.columns) == ["model", "benchmark", "vanilla", "vanilla (paper)", "blind", "gaussian_noise",
                                  "gaussian_noise (paper)"]
    assert len(wide) == 3 * (1 + 4 + 1)
    html = table(wide, digits=1)._repr_html_()
    assert "87.5" in html and "86.13" not in html and "86.1" in html and "—" in html


def test_the_tables_are_saved_with_provenance(matrix, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSTATTN_OUT_ROOT", str(tmp_path / "root"))
    paths = ag.save_tables(matrix, "results/m/30_paper_tables")
    assert paths["table1"] == tmp_path / "root" / "30_paper_tables" / "table1.csv"
    assert pd.read_csv(paths["table2"]).shape[0] == len(ag.table2_scores(matrix))
    meta = json.loads(paths["table1"].with_suffix(".meta.json").read_text())
    assert meta["profile"] == "m" and meta["cells_done"] == 6 and meta["cells"] == 12 and "git_commit" in meta


def test_the_pages_example_matrix_is_complete():
    fixture = REPO_ROOT / "tests" / "fixtures" / "paper_tables"
    m = ag.collect("example", fixture / "profile.yaml", fixture / "outputs")
    assert set(m.coverage["state"]) == {"done"} and len(m.coverage) == 12
    assert list(ag.table1_layout(m, "RID")["model"]) == ["embedded", "tiny-llava", "tiny-qwen2_5_vl", ag.MEAN]


def test_the_tables_in_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LOSTATTN_OUT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    fixture = REPO_ROOT / "tests" / "fixtures" / "paper_tables"
    assert ag.print_tables("example", fixture / "profile.yaml", fixture / "outputs", out_dir="tables") == 0
    out = capsys.readouterr().out
    assert "12 of 12 cells" in out and re.search(r"^mean over models +\d", out, re.M) and "Table 2" in out
    assert (tmp_path / "tables" / "table1.csv").is_file(), "a relative --out is the caller's"


def test_the_pages_words_and_figure(matrix):
    """The page's sentence counts in the right number, and the Table 2 panel shows every model · benchmark row and
    a scale wider than the 'barely changes' band even when every change is 0."""
    assert ag.matrix_text(matrix).startswith("3 models × 2 benchmarks; ")
    one = ag.Matrix(**{**matrix.__dict__, "models": ["tiny-a"], "benchmarks": ["synthetic"],
                       "coverage": matrix.coverage.iloc[:1]})
    assert re.fullmatch(r"1 model × 1 benchmark; [01] of 1 cell behind these tables (has|have) finished outputs",
                        ag.matrix_text(one))
    d = ag.sap_deltas(matrix)
    assert set(d["condition"]) == {"gaussian_noise"}
    syn = d[(d["model"] == "tiny-a") & (d["benchmark"] == "Synthetic")]["Δ"]
    assert syn.tolist() == [pytest.approx(12.5)]  # (100·4 + 75·4)/8 − (100·4 + 50·4)/8
    fig = ag.paper_tables_figure(matrix, barely=3.0)
    t2_ax = [ax for ax in fig.get_axes() if ax.get_title().startswith("Table 2")][0]
    labels = [t.get_text() for t in t2_ax.get_yticklabels()]
    assert labels == [f"{m} · {b}" for m in ("tiny-a", "Qwen2.5-VL-3B-Instruct", "never-run")
                      for b in ("Synthetic", "POPE")]
    lo, hi = t2_ax.get_xlim()
    assert lo == -hi and hi >= 12.5 and t2_ax.xaxis.label.get_fontsize() >= 9
    import matplotlib.pyplot as plt

    plt.close(fig)


# ---- every table checked: complete, parseable, its cell's key current -------------------------------------------
@pytest.fixture
def finished(tmp_path):
    """A 1 model × 1 benchmark profile whose two cells finished as reproduce leaves them (marker with key, state
    done, table digests); returns (profile file, results folder, cells by notebook)."""
    from lostattn.pipeline.keys import CacheKeys

    cfg = tmp_path / "f.yaml"
    cfg.write_text(yaml.safe_dump({"models": [{"name": "embedded"}], "benchmarks": [{"name": "synthetic"}],
                                   "run": ["10_table1_rid_mixig", "20_table2_sap", "30_paper_tables"]}))
    results = tmp_path / "results"
    cells = planning.plan(profiles.load_profile("f", cfg), results)
    keys = CacheKeys(cells)
    by_nb = {}
    for c, df, name in ((cells[0], t1(0.2, 10), "table1"),
                        (cells[1], t2([("exist", 4, 100.0, "vanilla"), ("exist", 4, 50.0, "blind")]),
                         "table2_scores")):
        marker = folders.prepare_out_dir(c, keys.key(c))
        df.to_csv(c.out_dir / f"{name}.csv", index=False)
        (c.out_dir / f"{name}.meta.json").write_text(json.dumps({"model": "embedded", "benchmark": "synthetic"}))
        folders._update_marker(c, marker, state="done")
        by_nb[c.notebook] = c
    return cfg, results, by_nb


def _state(cfg, results, nb):
    cov = ag.collect("f", cfg, results).coverage.set_index("notebook")
    return cov.loc[nb, "state"], cov.loc[nb, "why"]


def test_finished_cells_with_current_keys_are_used(finished):
    cfg, results, _ = finished
    m = ag.collect("f", cfg, results)
    assert list(m.coverage["state"]) == ["done", "done"]
    assert ag.table1_per_model(m).set_index("module").loc["FFN", "RID"] == pytest.approx(0.2)


@pytest.mark.parametrize("cut", ["mid-row", "whole-row"])
def test_a_cut_short_table_of_a_finished_cell_is_left_out_and_named(finished, cut):
    cfg, results, cells = finished
    path = cells["10_table1_rid_mixig"].out_dir / "table1.csv"
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    path.write_bytes(data[:-25] if cut == "mid-row" else b"".join(lines[:-2]))  # FFN's row cut, or it and the next
    state, why = _state(cfg, results, "10_table1_rid_mixig")
    assert state == "unreadable" and "table1.csv changed since its run finished" in why
    m = ag.collect("f", cfg, results)
    assert len(m.table1_cells) == 0, "nothing of the cut table is used"


@pytest.mark.parametrize("content, words", [
    ("module,RID,n\nAttention,0.3,10\nFFN,0.1", "cut short"),
    ("module,RID,n\nAttention,0.3,10\n", "lacks the row(s) of FFN"),
    ("module,RID,n\nAttention,0.3,10\nFFN,abc,10\n", "non-numeric values in RID"),
    ("module,RID\nAttention,0.3\nFFN,0.1\n", "lacks column(s) n"),
])
def test_a_table_copied_without_a_marker_is_checked_too(finished, content, words):
    cfg, results, cells = finished
    out = cells["10_table1_rid_mixig"].out_dir
    (out / folders.MARKER).unlink()  # outputs copied from elsewhere: no digest, no key to compare
    (out / "table1.csv").write_text(content)
    state, why = _state(cfg, results, "10_table1_rid_mixig")
    assert state == "unreadable" and words in why


def test_a_cell_whose_key_is_stale_is_left_out_and_named(finished):
    cfg, results, cells = finished
    marker = folders.read_marker(cells["20_table2_sap"].out_dir)
    marker["key"] = "a key of other inputs or code"
    (cells["20_table2_sap"].out_dir / folders.MARKER).write_text(json.dumps(marker))
    state, why = _state(cfg, results, "20_table2_sap")
    assert state == "stale" and "changed since it ran" in why
    assert _state(cfg, results, "10_table1_rid_mixig")[0] == "done"


def test_cells_of_different_code_versions_are_marked(finished):
    cfg, results, cells = finished
    for nb, commit in (("10_table1_rid_mixig", "aaaaaaaaaaaaaaaa"), ("20_table2_sap", "bbbbbbbbbbbbbbbb")):
        out = cells[nb].out_dir
        (out / folders.MARKER).unlink()
        meta = next(out.glob("*.meta.json"))
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "git_commit": commit}))
    cov = ag.collect("f", cfg, results).coverage.set_index("notebook")
    assert list(cov["state"]) == ["done", "done"]
    assert "written by commit aaaaaaaaaaaa" in cov.loc["10_table1_rid_mixig", "why"]
    assert "2 code versions" in cov.loc["20_table2_sap", "why"]
