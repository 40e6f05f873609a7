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
