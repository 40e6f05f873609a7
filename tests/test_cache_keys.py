"""A reproduce cell's cache key: every input that changes its outputs is in it (the code the notebook runs, the
bytes of every image its benchmark names), and nothing else (an edit of code no notebook runs reruns nothing)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lostattn.pipeline import keys
from lostattn.pipeline.keys import CacheKeys, code_files, notebook_imports
from lostattn.pipeline.plan import plan
from lostattn.pipeline.profiles import NOTEBOOKS, load_profile
from lostattn.pipeline.reproduce import print_plan
from lostattn.provenance import REPO_ROOT

PKG = REPO_ROOT / "lostattn"


def _edited(monkeypatch, target: Path) -> None:
    """Make `target` read as if a line had been added to it (the file itself is left alone)."""
    real = Path.read_bytes

    def read_bytes(self):
        data = real(self)
        return data + b"\n# an edit\n" if self.resolve() == target.resolve() else data

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_module_a_notebook_loads_is_in_its_key(notebook):
    """Run the notebook's import lines in a fresh interpreter: every lostattn module then loaded is one the key
    hashes (imports inside functions, which only run later, come from the import graph)."""
    import ast

    src = keys._code_cells(notebook)
    tree = ast.parse("\n".join(ln for ln in src.split("\n") if not ln.lstrip().startswith(("%", "!"))))
    imports = "\n".join(ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
    probe = imports + "\nimport sys, json\nprint(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() " \
                      "if n.split('.')[0] == 'lostattn' and getattr(m, '__file__', None))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT, env={**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT)})
    loaded = {Path(f).resolve() for f in json.loads(out.stdout.strip().splitlines()[-1])}
    hashed = {f.resolve() for f in code_files(notebook)}
    assert loaded and loaded <= hashed, sorted(str(f) for f in loaded - hashed)


def test_editing_a_module_a_notebook_imports_changes_its_key_and_only_its(monkeypatch):
    before = {nb: CacheKeys([]).code(nb) for nb in NOTEBOOKS}
    # harness/costs.py (the SAP cost measurement): imported by page 20 alone
    uses = {nb for nb in NOTEBOOKS if (PKG / "harness" / "costs.py").resolve() in
            {f.resolve() for f in code_files(nb)}}
    assert uses == {"20_table2_sap"}
    _edited(monkeypatch, PKG / "harness" / "costs.py")
    after = {nb: CacheKeys([]).code(nb) for nb in NOTEBOOKS}
    assert {nb for nb in NOTEBOOKS if after[nb] != before[nb]} == uses


def test_editing_code_no_notebook_runs_leaves_every_key(monkeypatch):
    before = {nb: CacheKeys([]).code(nb) for nb in NOTEBOOKS}
    _edited(monkeypatch, PKG / "cli.py")
    assert {nb: CacheKeys([]).code(nb) for nb in NOTEBOOKS} == before


@pytest.mark.parametrize("src", ["import importlib\nm = importlib.import_module(name)", "exec(code)",
                                 "import runpy", "%run other.ipynb", "x = __import__(name)"])
def test_a_notebook_with_an_import_that_cannot_be_read_takes_the_whole_package(monkeypatch, src):
    monkeypatch.setattr(keys, "_code_cells", lambda nb: src)
    assert notebook_imports("01_embedded_model") is None
    assert (PKG / "cli.py") in code_files("01_embedded_model")


def test_a_literal_dynamic_import_is_followed(monkeypatch):
    monkeypatch.setattr(keys, "_code_cells", lambda nb: "m = __import__('lostattn.sap.replace').sap\n"
                                                         "import importlib\nimportlib.import_module('lostattn.cli')")
    assert notebook_imports("01_embedded_model") == {"lostattn.sap.replace", "lostattn.cli"}
    files = code_files("01_embedded_model")
    assert (PKG / "sap" / "replace.py") in files and (PKG / "cli.py") in files


def test_an_overwritten_image_makes_its_cells_to_run(tmp_path, monkeypatch):
    """reproduce --plan: a finished cell whose benchmark image was overwritten (same name) is 'to run' again."""
    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")
    (tmp_path / "rwqa.jsonl").write_text(json.dumps({"id": "q1", "question": "What colour?", "answer": "red",
                                                     "image": "a.png"}) + "\n")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"common: {{device: cpu}}\nbenchmarks:\n  - {{name: realworldqa, data: {tmp_path / 'rwqa.jsonl'}}}\n"
                   f"run: [01_embedded_model]\n")
    prof = load_profile("imgkey", cfg)
    cells = plan(prof, tmp_path / "results")
    (cell,) = cells
    cell.out_nb.parent.mkdir(parents=True)
    cell.out_nb.write_text("{}")
    cell.key_file.write_text(CacheKeys(cells).key(cell))  # as a finished run leaves it

    def state() -> str:
        buf = io.StringIO()
        print_plan(prof, cells, cells, CacheKeys(cells), out=buf)
        return buf.getvalue().splitlines()[1]

    assert "up to date" in state()
    Image.new("RGB", (16, 16), "blue").save(tmp_path / "a.png")
    assert "to run" in state()
