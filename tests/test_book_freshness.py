"""The book says 'up to date' only when it is: after a whole build of exactly the notebooks it shows now."""
from __future__ import annotations

import json
import subprocess

import pytest

from lostattn.pipeline import book as bk
from lostattn.pipeline.profiles import NOTEBOOKS


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A book folder and a profile's executed notebooks; jupyter-book replaced by a stand-in that writes index.html
    (or is interrupted, as by Ctrl-C, when `interrupt` holds True)."""
    book_dir, src = tmp_path / "book", tmp_path / "results" / "p" / "notebooks"
    (book_dir / "_static").mkdir(parents=True)
    (book_dir / "intro.md").write_text("# Intro\n")
    src.mkdir(parents=True)
    for n in NOTEBOOKS:
        (src / f"{n}.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                                    "nbformat_minor": 5}))
    builds, interrupt = [], [False]
    real_run = subprocess.run

    def fake_build(cmd, **kw):
        if cmd[0] != "jupyter-book":  # git, for the landing page's commit and repository address
            return real_run(cmd, **kw)
        if interrupt[0]:
            raise KeyboardInterrupt
        html = book_dir / "_build" / "html"
        html.mkdir(parents=True, exist_ok=True)
        (html / "index.html").write_text("<html></html>")
        builds.append(1)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(bk.subprocess, "run", fake_build)
    monkeypatch.setattr(bk, "_jupyter_book", lambda: "jupyter-book")
    monkeypatch.setattr("lostattn.pipeline.book_assets.ensure_mathjax", lambda d: None)

    def build(rebuild=False):
        return bk.build_book_html("p", rebuild=rebuild, book_dir=book_dir, notebooks_dir=src)

    return build, builds, interrupt, src


def test_the_book_is_rebuilt_when_a_page_it_shows_changed(setup, capsys):
    build, builds, _, src = setup
    assert build() == 0 and len(builds) == 1
    assert build() == 0 and len(builds) == 1 and "book up to date" in capsys.readouterr().out
    # a `reproduce --no-book` or `--cell N` run rewrote one notebook's outputs: the next build must show them
    nb = json.loads((src / "20_table2_sap.ipynb").read_text())
    nb["cells"] = [{"cell_type": "markdown", "metadata": {}, "source": "new result"}]
    (src / "20_table2_sap.ipynb").write_text(json.dumps(nb))
    assert build() == 0 and len(builds) == 2
    (src.parent / "20_table2_sap").mkdir()
    (src.parent / "20_table2_sap" / "table2.png").write_bytes(b"png")  # a figure the page copies
    assert build() == 0 and len(builds) == 3
    assert build() == 0 and len(builds) == 3


def test_a_build_interrupted_by_ctrl_c_is_not_up_to_date(setup, capsys):
    build, builds, interrupt, src = setup
    assert build() == 0 and len(builds) == 1
    interrupt[0] = True  # a rebuild of the same inputs, cut short: the html on disk is half old, half new
    with pytest.raises(KeyboardInterrupt):
        build(rebuild=True)
    interrupt[0] = False
    capsys.readouterr()
    assert build() == 0 and len(builds) == 2 and "book up to date" not in capsys.readouterr().out
