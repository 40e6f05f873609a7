"""Building the HTML book (Jupyter Book 1, offline, no execution) from a profile's executed notebooks.

The executed notebooks are copied into book/executed/ as a reader should see them (`prepare_notebook`): papermill's
injected-parameters cell dropped, every code cell's input collapsed behind a toggle, and the building machine's
absolute paths in outputs and metadata rewritten (`scrub_paths`). Each page then ends with what it wrote and how to
make it again (`page_footer_markdown`): its tables, records and figures and its executed notebook, copied into the
book so that they download offline, and the command that reruns it. The landing page's scorecard
(`scorecard_markdown`, book/executed/scorecard.md, included by book/intro.md) is read from the verdicts.json each
results page writes. The notebooks under notebooks/ and the executed ones under results/ are never changed.
"""
from __future__ import annotations

import hashlib
import html
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


def scrub_notebook(nb: dict, repo_root: Path = REPO_ROOT) -> dict:
    """The executed notebook `nb` whole (every cell, papermill's injected parameters included, inputs as they
    are), with the building machine's absolute paths rewritten in sources, outputs and metadata, images left
    byte for byte: what a reader downloads to rerun or read the page."""
    cells = []
    for cell in nb.get("cells", []):
        cell = {**cell, "source": _scrub(cell.get("source", ""), repo_root),
                "metadata": _scrub(cell.get("metadata", {}), repo_root)}
        if "outputs" in cell:
            cell["outputs"] = [_scrub_output(o, repo_root) for o in cell["outputs"]]
        cells.append(cell)
    return {**nb, "cells": cells, "metadata": _scrub(nb.get("metadata", {}), repo_root)}


def copy_for_book(src: Path, dst: Path, repo_root: Path = REPO_ROOT) -> None:
    """Write the executed notebook `src` to `dst` as `prepare_notebook` makes it."""
    nb = json.loads(Path(src).read_text(encoding="utf-8"))
    Path(dst).write_text(json.dumps(prepare_notebook(nb, repo_root), indent=1, ensure_ascii=False) + "\n",
                         encoding="utf-8")


# ---- what each page wrote, and how to make it again ----------------------------------------------------------
# Files of an output folder that are the pipeline's bookkeeping, not the page's data.
_BOOKKEEPING = re.compile(r"^\.|\.lock$")
# A data file larger than this stays out of the book (the page says so): the book is not the results archive.
MAX_DATA_BYTES = 50 * 2**20
_TEXT_DATA = {".csv", ".tsv", ".json", ".jsonl", ".txt", ".md", ".yaml", ".yml"}
NOTEBOOK_DOWNLOADS = "_notebooks"  # book/executed/_notebooks/<notebook>.ipynb: the executed notebooks, whole


def page_title(nb: dict, default: str) -> str:
    """The notebook's first markdown heading (its page title in the book), else `default`."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return default


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{max(1, round(n / 1024))} KB"


def copy_page_data(src: Path, dst: Path, repo_root: Path = REPO_ROOT) -> tuple[list[Path], list[Path]]:
    """Copy the data a page wrote (its output folder `src`: tables, records, figures) to `dst`, text files with the
    building machine's paths rewritten (`scrub_paths`); returns (copied files relative to `dst`, files left out as
    larger than MAX_DATA_BYTES, relative to `src`). Bookkeeping files (markers, locks) are not data."""
    copied, too_big = [], []
    if not Path(src).is_dir():
        return copied, too_big
    for f in sorted(Path(src).rglob("*")):
        rel = f.relative_to(src)
        if not f.is_file() or any(_BOOKKEEPING.search(part) for part in rel.parts):
            continue
        if f.stat().st_size > MAX_DATA_BYTES:
            too_big.append(rel)
            continue
        out = Path(dst) / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix in _TEXT_DATA:
            out.write_text(scrub_paths(f.read_text(encoding="utf-8", errors="replace"), repo_root), encoding="utf-8")
        else:
            shutil.copy2(f, out)
        copied.append(rel)
    return copied, too_big


def rerun_markdown(notebook: str) -> str:
    """The 'rerun this page' box: the commands that make this page again, on the embedded model and on the
    reader's own checkpoints (a profile file naming their folders)."""
    lines = [
        ":::{admonition} Rerun this page", ":class: rerun", "",
        "On the embedded model (the `tiny` profile: CPU, offline), from the repository root:", "",
        "```bash", f"lostattn reproduce --only {notebook}", "```", "",
        "On your own checkpoints and benchmark files: copy `profiles/paper.yaml` to `my_paper.yaml`, set each "
        "model's `path:` to a local checkpoint folder and each benchmark's `data:` to its files, then run this page "
        "for every model, or for one model by its `name:` in that file:", "",
        "```bash",
        f"lostattn reproduce --profile paper --config my_paper.yaml --only {notebook}",
        f"lostattn reproduce --profile paper --config my_paper.yaml --only {notebook} --model Qwen2.5-VL-7B-Instruct",
        "```", "",
        "Finished cells are skipped; `--plan` lists the cells and the command of each ([Rerunning on a GPU]"
        "(../rerun_gpu))."]
    if {"model", "device", "dtype"} <= set(profiles.notebook_parameters(notebook)):
        lines += ["", "One checkpoint, without a profile file (the notebook's own parameters):", "",
                  "```bash",
                  f"papermill notebooks/{notebook}.ipynb my_{notebook}.ipynb --cwd notebooks \\\n"
                  "    -p model /path/to/checkpoint -p device cuda -p dtype bfloat16 \\\n"
                  f"    -p out_dir results/my_checkpoint/{notebook}", "```"]
    return "\n".join(lines + [":::"])


def page_footer_markdown(notebook: str, profile: str, files: list[Path], too_big: list[Path]) -> str:
    """The section that ends a results page: links to the data it wrote (`files`, under executed/<notebook>/) and
    to its executed notebook, both downloadable from the book, and the rerun box."""
    lines = ["## This page's data, notebook and command", ""]
    nb_link = f"{{download}}`{notebook}.ipynb <{NOTEBOOK_DOWNLOADS}/{notebook}.ipynb>`"
    lines += [f"- The executed notebook behind this page (profile `{profile}`): {nb_link}"]
    if files:
        lines += [f"- What it wrote (results/{profile}/{notebook}/):"]
        lines += [f"  - {{download}}`{f.as_posix()} <{notebook}/{f.as_posix()}>`" for f in files]
    else:
        lines += [f"- No data files: this build's results/{profile}/{notebook}/ folder was empty or absent."]
    if too_big:
        lines += [f"- Left out of the book as larger than {_size(MAX_DATA_BYTES)} (find them under "
                  f"results/{profile}/{notebook}/): " + ", ".join(f"`{f.as_posix()}`" for f in too_big)]
    return "\n".join(lines + ["", rerun_markdown(notebook)])


def with_footer(nb: dict, footer: str) -> dict:
    """`nb` with a markdown cell `footer` appended."""
    cell = {"cell_type": "markdown", "id": "lostattn-page-footer", "metadata": {}, "source": footer}
    return {**nb, "cells": [*nb.get("cells", []), cell]}


# ---- the landing page's scorecard ----------------------------------------------------------------------------
OUTCOMES = ("holds", "does not hold", "inconclusive")
VERDICT_FIELDS = ("claim", "scope", "outcome", "estimate", "low", "high", "unit", "n", "n_needed")


def repository_url(root: Path = REPO_ROOT) -> str | None:
    """The web address of the clone the book is built from: $LOSTATTN_REPOSITORY_URL, else its `origin` remote
    (an ssh address rewritten as https), else None."""
    url = os.environ.get("LOSTATTN_REPOSITORY_URL")
    if not url:
        try:
            url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root, capture_output=True, text=True,
                                 timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            url = ""
    m = re.fullmatch(r"git@([^:]+):(.+?)(\.git)?", url or "")
    if m:
        url = f"https://{m.group(1)}/{m.group(2)}"
    url = re.sub(r"\.git$", "", url or "")
    return url if url.startswith(("https://", "http://")) else None


def _short(commit: str) -> str:
    sha, _, dirty = commit.partition("+")
    return sha[:12] + (f"+{dirty}" if dirty else "")


def source_markdown(url: str | None, commit: str) -> str:
    """The line naming the code this book was built from: its repository's address and commit."""
    if url:
        return f"This book's code: [{url}]({url}), commit `{commit}`."
    return (f"This book's code: the `lostattn` repository at commit `{commit}` (the clone it was built from has no "
            f"`origin` remote; set LOSTATTN_REPOSITORY_URL to link it here).")


def read_verdicts(path: Path) -> list[dict] | None:
    """The verdicts a results page wrote (its verdicts.json: a list of {page, claim, scope, outcome, estimate,
    low, high, unit, n, n_needed}); None when the page wrote none. A file that is not such a list is refused."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err}); rerun its page with `lostattn reproduce --force --only "
                         f"{path.parent.name}`") from None
    bad = [i for i, v in enumerate(data if isinstance(data, list) else [None])
           if not isinstance(v, dict) or v.get("outcome") not in OUTCOMES or not v.get("claim")]
    if not isinstance(data, list) or bad:
        raise ValueError(f"{path}: entry {bad[0] if bad else 0} is not a verdict (a claim and an outcome among "
                         f"{OUTCOMES}); rerun its page with `lostattn reproduce --force --only {path.parent.name}`")
    return data


def _number(x) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return ""
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _estimate_text(v: dict) -> str:
    """'0.192 [0.15, 0.23] points': the estimate with its interval, in its unit."""
    est, lo, hi = (_number(v.get(k)) for k in ("estimate", "low", "high"))
    text = est + (f" [{lo}, {hi}]" if lo and hi else "")
    unit = v.get("unit") or ""
    return f"{text} {unit}".strip() if text else ""


def _n_text(v: dict) -> str:
    n, need = _number(v.get("n")), _number(v.get("n_needed"))
    if v.get("outcome") == "inconclusive" and need:
        return f"{n} (≈{need} needed)" if n else f"≈{need} needed"
    return n


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def scorecard_markdown(pages: list[tuple[str, str, list[dict] | None]], profile: str) -> str:
    """The landing page's scorecard: for each results page (notebook, title, its verdicts or None) a header row
    linking the page, then a row per claim it tests with its scope, the outcome, the estimate with its interval
    and n, as an HTML table of four columns (it scrolls sideways in its box when a phone is narrower); a page that
    wrote no verdicts.json is listed and says so."""
    e = html.escape
    counts = {o: 0 for o in OUTCOMES}
    rows = []
    for notebook, title, verdicts in pages:
        link = f'<a href="executed/{e(notebook)}.html">{e(title)}</a>'
        if verdicts is None:
            rows.append(f'<tr class="page"><th colspan="4">{link}</th></tr><tr><td colspan="4" class="no-verdicts">'
                        f"no verdicts.json: this page wrote no verdicts in this build (rerun it: "
                        f"<code>lostattn reproduce --only {e(notebook)}</code>)</td></tr>")
            continue
        held = sum(v["outcome"] == "holds" for v in verdicts)
        rows.append(f'<tr class="page"><th colspan="4">{link} <span class="tally">{held} of '
                    f"{_plural(len(verdicts), 'claim', 'claims')} {'holds' if held == 1 else 'hold'}</span></th></tr>")
        if not verdicts:
            rows.append('<tr><td colspan="4" class="no-verdicts">tests no claim on this run</td></tr>')
        for v in verdicts:
            counts[v["outcome"]] += 1
            scope = f'<br><span class="scope">{e(str(v["scope"]))}</span>' if v.get("scope") else ""
            rows.append(f"<tr><td>{e(str(v['claim']))}{scope}</td>"
                        f'<td class="outcome {v["outcome"].replace(" ", "-")}">{e(v["outcome"])}</td>'
                        f'<td class="num">{e(_estimate_text(v))}</td><td class="num">{e(_n_text(v))}</td></tr>')
    missing = [t for _, t, v in pages if v is None]
    summary = (f"Profile `{profile}`: of {_plural(sum(counts.values()), 'claim', 'claims')} tested, "
               f"{counts['holds']} {'holds' if counts['holds'] == 1 else 'hold'}, {counts['does not hold']} "
               f"{'does' if counts['does not hold'] == 1 else 'do'} not hold and {counts['inconclusive']} "
               f"{'is' if counts['inconclusive'] == 1 else 'are'} inconclusive on this run.")
    if len(missing) == len(pages):
        summary = (f"Profile `{profile}`: no results page wrote its verdicts (results/{profile}/<page>/verdicts.json) "
                   f"in this build; `lostattn reproduce --profile {profile} --force` writes them.")
    elif missing:
        summary += (f" {len(missing)} of {len(pages)} pages wrote no verdicts: "
                    + ", ".join(f"*{t}*" for t in missing) + ".")
    head = ('<thead><tr><th>claim (scope)</th><th>outcome</th><th class="num">estimate [interval]</th>'
            '<th class="num">n</th></tr></thead>')
    table = ('<div class="lostattn-table scorecard"><table class="lostattn">' + head + "<tbody>" + "".join(rows)
             + "</tbody></table></div>")
    return summary + "\n\n" + table + "\n"


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


def write_pages(profile: str, notebooks_dir: Path, results_dir: Path, dst: Path) -> None:
    """Write what the book shows into `dst` (book/executed/): each executed notebook of `notebooks_dir` as
    `prepare_notebook` makes it, ending with `page_footer_markdown`; the data of results_dir/<notebook>/ beside
    it; the whole executed notebooks under _notebooks/ for download; and the landing page's scorecard.md."""
    pages = []
    (dst / NOTEBOOK_DOWNLOADS).mkdir(parents=True, exist_ok=True)
    for n in NOTEBOOKS:
        nb = json.loads((notebooks_dir / f"{n}.ipynb").read_text(encoding="utf-8"))
        shutil.rmtree(dst / n, ignore_errors=True)  # an earlier build's data, perhaps of another profile
        files, too_big = copy_page_data(results_dir / n, dst / n)
        shown = with_footer(prepare_notebook(nb), page_footer_markdown(n, profile, files, too_big))
        (dst / f"{n}.ipynb").write_text(json.dumps(shown, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (dst / NOTEBOOK_DOWNLOADS / f"{n}.ipynb").write_text(json.dumps(scrub_notebook(nb), indent=1,
                                                                        ensure_ascii=False) + "\n", encoding="utf-8")
        try:
            verdicts = read_verdicts(results_dir / n / "verdicts.json")
        except ValueError as err:  # the card says which page's file is broken; the build goes on
            print(f"[{profile}] {err}", file=sys.stderr)
            verdicts = None
        pages.append((n, page_title(nb, n), verdicts))
    from lostattn.provenance import git_commit

    (dst / "scorecard.md").write_text(source_markdown(repository_url(), _short(git_commit())) + "\n\n"
                                      + scorecard_markdown(pages, profile), encoding="utf-8")


def build_book_html(profile: str = "tiny", rebuild: bool = True, book_dir: Path = BOOK_DIR,
                    notebooks_dir: Path | None = None, results_dir: Path | None = None) -> int:
    """Write the pages (`write_pages`: the executed notebooks of results/<profile>/notebooks/ unless
    `notebooks_dir`, the data of results/<profile>/<notebook>/ unless `results_dir`) into `book_dir`/executed/
    and build the HTML book, offline and without executing anything; returns the exit status (0: built or up
    to date)."""
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
    write_pages(profile, src, Path(results_dir) if results_dir else src.parent, dst)
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
