"""MathJax served by the book itself, so that formulas render for a reader who is offline.

The npm package `mathjax` (pinned) is fetched once from the npm registry with `npm pack` and its ES5 bundle
(`tex-mml-chtml.js` and the CHTML fonts) unpacked under book/_static/mathjax/; the book's Sphinx configuration
points `mathjax_path` there. Nothing is fetched while the book builds.
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
