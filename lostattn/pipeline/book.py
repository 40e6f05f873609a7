"""Building the HTML book (Jupyter Book 1, offline, no execution) from a profile's executed notebooks.

The executed notebooks are copied into book/executed/ as a reader should see them (`prepare_notebook`): papermill's
injected-parameters cell dropped, every code cell's input collapsed behind a toggle, and the building machine's
absolute paths in outputs and metadata rewritten (`scrub_paths`). The notebooks under notebooks/ and the executed
ones under results/ are never changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

from lostattn.provenance import REPO_ROOT
from lostattn.pipeline import profiles
from lostattn.pipeline.profiles import NOTEBOOKS

BOOK_DIR = REPO_ROOT / "book"
INJECTED_TAG = "injected-parameters"
HIDE_INPUT_TAG = "hide-input"
# Tags with which a notebook already decides how a cell's input shows (myst-nb's names); such a cell is left as it is.
_INPUT_TAGS = frozenset({"hide-input", "hide-cell", "remove-input", "remove-cell", "remove_input", "remove_cell"})
# Top-level folders where absolute paths of a build machine usually start, besides those of this machine.
_COMMON_ROOTS = ("tmp", "home", "root", "Users", "var", "private", "opt", "usr", "mnt", "srv", "scratch", "work",
                 "data", "workspace", "builds", "content", "kaggle", "models")
# Output mime types holding text (the others, images and PDFs, are base64 and contain '/' by chance).
_TEXT_MIME = re.compile(r"^(text/|application/(json|javascript)$|.*\+(json|xml)$)")


# ---- what a reader sees of a notebook -------------------------------------------------------------------------
_SEG = r"[\w.@+~%-]+"  # one path component (no space, colon or comma: those end a path in running text)


@lru_cache(maxsize=8)
def _path_re(prefixes: tuple[str, ...]) -> re.Pattern:
    # Not after a word character, a dot, '/', '~', '-' or '<': a fraction (1/2), a relative path (a/tmp/b), a URL's
    # path (host/tmp) or a closing HTML tag (</var>) is not an absolute path.
    alt = "|".join(re.escape(r) for r in sorted(prefixes, key=len, reverse=True))
    return re.compile(rf"(?<![\w.~/<-])(?:{alt})(?:/{_SEG})*/?(?!{_SEG})")


@lru_cache(maxsize=1)
def _machine_roots() -> frozenset[str]:
    try:
        return frozenset(e.name for e in os.scandir("/") if e.is_dir() and re.fullmatch(_SEG, e.name))
    except OSError:
        return frozenset()


def scrub_paths(text: str, repo_root: Path = REPO_ROOT) -> str:
    """`text` with the building machine's absolute paths rewritten: one inside the repository relative to it
    (results/tiny/10_table1_rid_mixig), any other by its last component (a temporary folder's or a model folder's
    name); everything else unchanged."""
    repos = sorted({str(Path(repo_root)).rstrip("/"), str(Path(repo_root).resolve()).rstrip("/")}, key=len,
                   reverse=True)

    def short(m: re.Match) -> str:
        p = m.group(0)
        tail = "/" if p.endswith("/") and len(p) > 1 else ""
        p = p.rstrip("/")
        for r in repos:
            if p == r:
                return "." + tail
            if p.startswith(r + "/"):
                return p[len(r) + 1:] + tail
        return (p.rsplit("/", 1)[-1] or p) + tail

    # The repository's own path first, whole: it may hold characters that end a path elsewhere (a space).
    prefixes = tuple(repos) + tuple(f"/{r}" for r in sorted(set(_COMMON_ROOTS) | _machine_roots()))
    return _path_re(prefixes).sub(short, text)


def _scrub(value, repo_root: Path):
    if isinstance(value, str):
        return scrub_paths(value, repo_root)
    if isinstance(value, list):
        return [_scrub(v, repo_root) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, repo_root) for k, v in value.items()}
    return value


def _scrub_output(out: dict, repo_root: Path) -> dict:
    out = dict(out)
    for key in ("text", "traceback", "evalue"):
        if key in out:
            out[key] = _scrub(out[key], repo_root)
    if "data" in out:
        out["data"] = {mime: _scrub(v, repo_root) if _TEXT_MIME.match(mime) else v for mime, v in out["data"].items()}
    if "metadata" in out:
        out["metadata"] = _scrub(out["metadata"], repo_root)
    return out


def prepare_notebook(nb: dict, repo_root: Path = REPO_ROOT) -> dict:
    """The executed notebook `nb` (nbformat 4, as JSON) as the book shows it: without papermill's injected
    parameters cell (it repeats the parameters with the building machine's paths; the page's run summary shows
    them), each code cell's input behind a 'show code' toggle unless the notebook tags the cell otherwise, and
    absolute paths of the building machine in outputs and metadata rewritten by `scrub_paths`. Sources are kept
    as written."""
    cells = []
    for cell in nb.get("cells", []):
        meta = dict(cell.get("metadata", {}))
        tags = list(meta.get("tags", []))
        if INJECTED_TAG in tags:
            continue
        cell = dict(cell)
        if cell.get("cell_type") == "code":
            if not _INPUT_TAGS.intersection(tags):
                tags.append(HIDE_INPUT_TAG)
            cell["outputs"] = [_scrub_output(o, repo_root) for o in cell.get("outputs", [])]
        if tags:
            meta["tags"] = tags
        cell["metadata"] = _scrub(meta, repo_root)
        cells.append(cell)
    return {**nb, "cells": cells, "metadata": _scrub(nb.get("metadata", {}), repo_root)}


def copy_for_book(src: Path, dst: Path, repo_root: Path = REPO_ROOT) -> None:
    """Write the executed notebook `src` to `dst` as `prepare_notebook` makes it."""
    nb = json.loads(Path(src).read_text(encoding="utf-8"))
    Path(dst).write_text(json.dumps(prepare_notebook(nb, repo_root), indent=1, ensure_ascii=False) + "\n",
                         encoding="utf-8")


# ---- the build ------------------------------------------------------------------------------------------------
def book_inputs_digest(profile: str, src: Path, book_dir: Path) -> str:
    """The SHA-256 over everything the built book shows or is built from: the profile's name, each executed
    notebook's bytes and the files of its output folder (name, size, modification time: figures and tables the
    pages copy), the book's pages, configuration and stylesheets, and this build code. The book is up to date only
    when the digest stored by its last whole build equals this one."""
    h = hashlib.sha256(profile.encode())
    for n in NOTEBOOKS:
        nb = src / f"{n}.ipynb"
        h.update(n.encode() + (nb.read_bytes() if nb.is_file() else b"missing"))
        figs = src.parent / n
        for f in sorted(figs.rglob("*")) if figs.is_dir() else []:
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(figs)}:{st.st_size}:{st.st_mtime_ns}".encode())
    here = Path(__file__).parent
    files = sorted(p for p in book_dir.glob("*") if p.suffix in (".md", ".yml"))
    files += sorted(p for p in (book_dir / "_static").rglob("*") if p.is_file() and "mathjax" not in p.parts)
    files += [here / "book.py", here / "book_assets.py"]
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _jupyter_book() -> str:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.is_file():
        return str(exe)
    found = shutil.which("jupyter-book")
    if found is None:
        raise FileNotFoundError("jupyter-book is not installed; run `pip install -e .[book]` (jupyter-book==1.0.4)")
    return found


def build_book_html(profile: str = "tiny", rebuild: bool = True, book_dir: Path = BOOK_DIR,
                    notebooks_dir: Path | None = None) -> int:
    """Copy the executed notebooks (results/<profile>/notebooks/ unless `notebooks_dir`) into `book_dir`/executed/
    as `prepare_notebook` makes them and build the HTML book, offline and without executing anything; returns
    the exit status (0: built or up to date)."""
    book_dir = Path(book_dir)
    src = Path(notebooks_dir) if notebooks_dir else profiles.RESULTS_DIR / profile / "notebooks"
    dst = book_dir / "executed"
    missing = [n for n in NOTEBOOKS if not (src / f"{n}.ipynb").is_file()]
    if missing:
        raise FileNotFoundError(f"executed notebooks missing for profile {profile!r}: {missing}; "
                                f"run `lostattn reproduce --profile {profile}` first")
    html = book_dir / "_build" / "html" / "index.html"
    stamp = book_dir / "_build" / ".built"  # the inputs' digest, written only when a build ends well
    digest = book_inputs_digest(profile, src, book_dir)
    if not rebuild and html.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        print(f"[{profile}] book up to date: {html}")
        return 0
    stamp.unlink(missing_ok=True)  # a build interrupted from here on leaves the book marked out of date
    dst.mkdir(exist_ok=True)
    for n in NOTEBOOKS:
        copy_for_book(src / f"{n}.ipynb", dst / f"{n}.ipynb")
        figs = src.parent / n
        if figs.is_dir():
            shutil.copytree(figs, dst / n, dirs_exist_ok=True)
    (dst / ".profile").write_text(profile)
    from lostattn.pipeline.book_assets import ensure_mathjax

    ensure_mathjax(book_dir)
    cmd = [_jupyter_book(), "build", str(book_dir), "--builder", "html"]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stdout[-4000:], res.stderr[-4000:], file=sys.stderr)
        return res.returncode
    stamp.write_text(digest)
    print(f"[{profile}] book built in {time.perf_counter() - t:.0f}s: {html}")
    return 0


def build_book(profile: str = "tiny") -> int:
    return build_book_html(profile, rebuild=True)
