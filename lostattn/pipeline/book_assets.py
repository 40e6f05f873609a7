"""The book's own static assets: MathJax, served by the book so that formulas render for a reader who is offline,
and the Sphinx extension (`setup`) that puts each asset on a page once.

The npm package `mathjax` (pinned) is fetched once from the npm registry with `npm pack` and its ES5 bundle
(`tex-mml-chtml.js` and the CHTML fonts) unpacked under book/_static/mathjax/; the book's Sphinx configuration
points `mathjax_path` there. Nothing is fetched while the book builds.

Jupyter Book 1 adds every `.js` and `.css` file under book/_static/ to every page. For book/_static/lostattn.css
that is what we want; for MathJax's bundle and its font module it is not: loaded on every page, and a second time
by sphinx.ext.mathjax (with its configuration) on pages with formulas, MathJax fails ("Cannot set property
Package") and its fonts may not load. The extension takes them off the list, so sphinx.ext.mathjax alone loads
MathJax, once, on the pages that have formulas.
"""
from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

MATHJAX_VERSION = "3.2.2"


def ensure_mathjax(book_dir: Path) -> Path:
    target = book_dir / "_static" / "mathjax"
    entry = target / "tex-mml-chtml.js"
    if entry.is_file():
        return entry
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(f"{entry} is missing and npm is not installed; install Node.js/npm and rerun, "
                                f"or unpack mathjax@{MATHJAX_VERSION}'s es5/ folder there")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--silent"], cwd=tmp, check=True,
                       capture_output=True)
        with tarfile.open(Path(tmp) / f"mathjax-{MATHJAX_VERSION}.tgz") as tar:
            members = [m for m in tar.getmembers()
                       if m.name == "package/es5/tex-mml-chtml.js" or m.name.startswith("package/es5/output/chtml/")]
            tar.extractall(tmp, members=members, filter="data")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(tmp) / "package" / "es5", target, dirs_exist_ok=True)
    return entry


def _without_mathjax(entries) -> list:
    def name(e):
        return e[0] if isinstance(e, (tuple, list)) else e

    return [e for e in entries if not str(name(e)).startswith("mathjax/")]


def _load_mathjax_once(app, config) -> None:
    config.html_js_files = _without_mathjax(config.html_js_files)
    config.html_css_files = _without_mathjax(config.html_css_files)


def setup(app):
    """Sphinx extension (book/_config.yml lists `lostattn.pipeline.book_assets`)."""
    app.connect("config-inited", _load_mathjax_once)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
