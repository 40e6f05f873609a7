"""Building the HTML book (Jupyter Book 1, offline, no execution) from a profile's executed notebooks."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from .provenance import REPO_ROOT
from .reproduce import NOTEBOOKS, RESULTS_DIR

BOOK_DIR = REPO_ROOT / "book"


def build_book_html(profile: str = "tiny", rebuild: bool = True) -> int:
    """Copy the executed notebooks into book/executed/ and build the HTML book (offline, no execution)."""
    src = RESULTS_DIR / profile / "notebooks"
    dst = BOOK_DIR / "executed"
    missing = [n for n in NOTEBOOKS if not (src / f"{n}.ipynb").is_file()]
    if missing:
        raise FileNotFoundError(f"executed notebooks missing for profile {profile!r}: {missing}; "
                                f"run `lostattn reproduce --profile {profile}` first")
    html = BOOK_DIR / "_build" / "html" / "index.html"
    stamp = BOOK_DIR / "_build" / ".built"
    pages = [p for p in BOOK_DIR.glob("*") if p.suffix in (".md", ".yml")]
    pages_changed = not stamp.is_file() or any(p.stat().st_mtime > stamp.stat().st_mtime for p in pages)
    if (not rebuild and not pages_changed and html.is_file() and (dst / ".profile").is_file()
            and (dst / ".profile").read_text() == profile):
        print(f"[{profile}] book up to date: {html}")
        return 0
    dst.mkdir(exist_ok=True)
    for n in NOTEBOOKS:
        shutil.copy2(src / f"{n}.ipynb", dst / f"{n}.ipynb")
        figs = RESULTS_DIR / profile / n
        if figs.is_dir():
            shutil.copytree(figs, dst / n, dirs_exist_ok=True)
    (dst / ".profile").write_text(profile)
    from .book_assets import ensure_mathjax

    ensure_mathjax(BOOK_DIR)
    exe = Path(sys.executable).with_name("jupyter-book")
    if not exe.is_file():
        exe = shutil.which("jupyter-book")
    if exe is None:
        raise FileNotFoundError("jupyter-book is not installed; run `pip install -e .[book]` (jupyter-book==1.0.4)")
    cmd = [str(exe), "build", str(BOOK_DIR), "--builder", "html"]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stdout[-4000:], res.stderr[-4000:], file=sys.stderr)
        return res.returncode
    stamp.write_text(profile)
    print(f"[{profile}] book built in {time.perf_counter() - t:.0f}s: {html}")
    return 0


def build_book(profile: str = "tiny") -> int:
    return build_book_html(profile, rebuild=True)
