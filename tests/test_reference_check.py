"""The figure-data regression check used by every notebook."""
import pandas as pd
import pytest

from lostattn.pages import setup as notebook


def test_within_tolerance_passes_and_outside_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(notebook, "REFERENCE_DIR", tmp_path)
    ref = pd.DataFrame({"module": ["Attention", "FFN"], "RID": [0.10, 0.20]})
    ref.to_csv(tmp_path / "t.csv", index=False)
    ok = notebook.check_reference(pd.DataFrame({"module": ["FFN", "Attention"], "RID": [0.20005, 0.1]}), "t",
                                  ["module"], {"RID": 1e-4})
    assert "within tolerance" in ok
    with pytest.raises(AssertionError, match=r"RID differs .* at \{'module': 'FFN'\}"):
        notebook.check_reference(pd.DataFrame({"module": ["Attention", "FFN"], "RID": [0.1, 0.25]}), "t",
                                 ["module"], {"RID": 1e-4})
    with pytest.raises(AssertionError, match="rows differ"):
        notebook.check_reference(pd.DataFrame({"module": ["Attention"], "RID": [0.1]}), "t", ["module"],
                                 {"RID": 1e-4})
    with pytest.raises(AssertionError, match="no reference"):
        notebook.check_reference(ref, "missing", ["module"], {"RID": 1e-4})


def test_write_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(notebook, "REFERENCE_DIR", tmp_path)
    monkeypatch.setattr(notebook, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("LOSTATTN_WRITE_REFERENCE", "1")
    df = pd.DataFrame({"k": ["a"], "v": [1.0], "extra": [2]})
    notebook.check_reference(df, "w", ["k"], {"v": 0.1})
    assert list(pd.read_csv(tmp_path / "w.csv").columns) == ["k", "v"]


def test_the_page_check_is_silent_within_tolerance_and_fails_outside(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(notebook, "REFERENCE_DIR", tmp_path)
    pd.DataFrame({"family": ["a", "b"], "accuracy": [50.0, 60.0]}).to_csv(tmp_path / "acc.csv", index=False)
    run = notebook.Run(lm=None, samples=[], out_dir=tmp_path, meta={})
    assert run.check(pd.DataFrame({"family": ["b", "a"], "accuracy": [61.0, 50.0]}), "acc", ["family"],
                     {"accuracy": 2.0}) is None
    assert capsys.readouterr().out == ""
    with pytest.raises(AssertionError, match="accuracy differs"):
        run.check(pd.DataFrame({"family": ["a", "b"], "accuracy": [50.0, 70.0]}), "acc", ["family"],
                  {"accuracy": 2.0})


def test_figures_are_numbered_per_page_with_caption_and_alt_text(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    meta = {"profile": "tiny", "model_label": "m", "benchmark": "b", "git_commit": "0" * 12, "seed": 0}
    run = notebook.Run(lm=None, samples=[], out_dir=tmp_path, meta=meta)
    for name in ("one", "two"):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        run.show_figure(fig, name, f"the {name} curve", alt=f"a rising line ({name})")
    figures, captions = shown[0::2], shown[1::2]
    assert [f.number for f in figures] == [1, 2] and repr(figures[1]) == "Figure 2: the two curve"
    data, meta = figures[0]._repr_mimebundle_()
    assert data["image/png"] and meta == {"image/png": {"alt": "a rising line (one)"}}
    assert captions[0]._repr_markdown_() == "**Figure 1:** the one curve"
    assert (tmp_path / "two.png").is_file()


def test_open_page_names_a_missing_parameter():
    with pytest.raises(ValueError, match="lacks .*'out_dir'"):
        notebook.open_page({"profile": "tiny"})
