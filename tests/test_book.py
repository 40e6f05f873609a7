"""The HTML book as a reader gets it: built offline from executed notebooks, no path of the building machine on any
page, papermill's injected parameters cell gone, code collapsed, MathJax and every script loaded once, no download
or fullscreen button, the book's stylesheet linked, and the verdict box and tables of lostattn.pages.display rendered.

The build runs on a copy of book/ in a temporary folder, from fixture notebooks shaped as papermill writes them
with fixture verdicts.json and data files (a few seconds), from the stored notebooks under notebooks/ (the real
pages, always), and, when `lostattn reproduce` has made results/tiny/, from its executed notebooks too."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lostattn.pipeline import book
from lostattn.provenance import REPO_ROOT
from lostattn.pipeline.profiles import NOTEBOOKS, RESULTS_DIR

bs4 = pytest.importorskip("bs4")
pytest.importorskip("jupyter_book")

# The markup lostattn.paper.verdicts emits (a text/markdown output); the book must render it as an admonition.
VERDICT = """:::{admonition} Verdict: what this run shows
:class: verdict

- ✅ **Attention mixes tokens (MixIG > 0)** — holds: MixIG $0.41$ (paper 0.61)
- ❌ **Attention's RID is near ε_RoPE** — does not hold: 0.27 against 0.06

1 of 2 tested claims hold on this run.
:::"""


# ---- scrubbing and preparing one notebook (no build) -----------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    (f'out_dir = "{REPO_ROOT}/results/tiny/01_embedded_model"', 'out_dir = "results/tiny/01_embedded_model"'),
    (f"cwd {REPO_ROOT}, done", "cwd ., done"),
    ("read /tmp/pytest-of-root/pytest-3/ckpt/model.safetensors.", "read model.safetensors."),
    ("/usr/lib/python3.11/site-packages/torch/nn/module.py:12: UserWarning", "module.py:12: UserWarning"),
    ("model /home/reader/models/llava-1.5-7b-hf, cache /root/.cache/x", "model llava-1.5-7b-hf, cache x"),
    ("<td>1/2</td><var>x</var> a/tmp/b https://example.org/home/x ~/x", None),
])
def test_scrub_paths(text, expected):
    assert book.scrub_paths(text) == (text if expected is None else expected)


def test_scrub_paths_repository_elsewhere():
    repo = Path("/home/a reader/lostattn")
    assert book.scrub_paths(f"{repo}/results/tiny/x.csv and /home/a", repo) == "results/tiny/x.csv and a"
    assert book.scrub_paths("/home/a reader/lostattnX/y", repo).endswith("y")


def _png(width: int, height: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (70, 130, 180)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _executed_notebook(name: str, tmp: Path, math: bool) -> dict:
    """A notebook as papermill leaves it, with outputs carrying the machine's paths in every place they occur and
    a table and a verdict box as the notebooks show them."""
    from lostattn.pages.display import run_summary_markdown, table

    out_dir = f"{tmp}/results/{name}"
    wide = pd.DataFrame({f"column {i}": [0.1234 * i, 12345.0] for i in range(14)}).assign(family=["count", "ocr"])
    narrow = pd.DataFrame({"family": ["count", "ocr"], "accuracy": [0.5, 0.975], "n": [40, 40]})

    def code(source, tags=(), outputs=()):
        return {"cell_type": "code", "execution_count": 1, "id": hashlib.md5(source.encode()).hexdigest()[:8],
                "metadata": {"tags": list(tags), "papermill": {"duration": 0.1}}, "source": source,
                "outputs": list(outputs)}

    def display(data):
        return {"output_type": "display_data", "metadata": {}, "data": data}

    cells = [
        {"cell_type": "markdown", "id": "title", "metadata": {},
         "source": f"# Fixture {name}\n\n" + ("Inline math $x^2$ and\n\n$$\\mathrm{RID} = 1$$\n" if math else "Text.")},
        code('profile = "tiny"\nout_dir = None', ["parameters"]),
        code(f'# Parameters\nprofile = "tiny"\nout_dir = "{out_dir}"\n', ["injected-parameters"]),
        code("show_verdict()", outputs=[display({"text/markdown": VERDICT, "text/plain": "<verdict>"})]),
        code("run = start(...)", outputs=[
            {"output_type": "stream", "name": "stdout",
             "text": [f"outputs in {out_dir}; model {REPO_ROOT}/data/embedded_model\n",
                      "cache /root/.cache/huggingface/hub, home /home/reader/x\n"]},
            {"output_type": "stream", "name": "stderr",
             "text": f"{tmp}/site-packages/torch/x.py:3: UserWarning: slow\n"},
            display({"text/markdown": run_summary_markdown({"out_dir": out_dir, "seed": 0}, "Run parameters"),
                     "text/plain": "<summary>"}),
        ]),
        code("table(acc)", outputs=[
            {"output_type": "execute_result", "execution_count": 1, "metadata": {},
             "data": {"text/html": table(narrow, caption=f"Accuracy ({out_dir})")._repr_html_(),
                      "text/plain": repr(table(narrow))}},
            display({"text/html": table(wide, caption="A wide table")._repr_html_(), "text/plain": "<wide>"}),
        ]),
        code("fig", outputs=[display({"image/png": _png(2400, 240), "text/plain": "<Figure 2400x240>"})]),
        code("# kept whole", ["hide-cell"], outputs=[{"output_type": "stream", "name": "stdout", "text": "hidden\n"}]),
    ]
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"},
                         "papermill": {"input_path": str(REPO_ROOT / "notebooks" / f"{name}.ipynb"),
                                       "output_path": f"{tmp}/notebooks/{name}.ipynb",
                                       "parameters": {"out_dir": out_dir}}}}


def test_prepare_notebook(tmp_path):
    nb = _executed_notebook(NOTEBOOKS[0], tmp_path, math=False)
    before = json.dumps(nb)
    shown = book.prepare_notebook(nb)
    assert json.dumps(nb) == before, "the executed notebook itself is left as it is"
    tags = [c["metadata"].get("tags", []) for c in shown["cells"] if c["cell_type"] == "code"]
    assert not any("injected-parameters" in t for t in tags)
    assert ["parameters", "hide-input"] in tags and ["hide-cell"] in tags
    assert all("hide-input" in t or "hide-cell" in t for t in tags)
    text = json.dumps(shown)
    assert str(tmp_path) not in text and str(REPO_ROOT) not in text
    assert f"outputs in {NOTEBOOKS[0]};" in text and "model data/embedded_model" in text
    png = [c for c in shown["cells"] if "fig" == c["source"]][0]["outputs"][0]["data"]["image/png"]
    assert png == [c for c in nb["cells"] if "fig" == c["source"]][0]["outputs"][0]["data"]["image/png"]
    whole = book.scrub_notebook(nb)
    assert json.dumps(nb) == before and len(whole["cells"]) == len(nb["cells"]), "the download keeps every cell"
    text = json.dumps(whole)
    assert str(tmp_path) not in text and str(REPO_ROOT) not in text
    assert f'out_dir = "{NOTEBOOKS[0]}"' in whole["cells"][2]["source"], "the injected parameters, paths shortened"
    # base64 images are not text: a '/tmp/'-like run of characters in them is not a path
    fake = {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "outputs": [
        {"output_type": "display_data", "metadata": {}, "data": {"image/png": "/tmp/AAAA+/home/CC"}}]}]}
    assert book.scrub_notebook(fake)["cells"] == fake["cells"]


# ---- a page's data, verdicts and rerun box (no build) ----------------------------------------------------------
def test_read_verdicts(tmp_path):
    f = tmp_path / "10_table1_rid_mixig" / "verdicts.json"
    assert book.read_verdicts(f) is None, "a page without verdicts.json is not an error"
    f.parent.mkdir()
    f.write_text(json.dumps(FIXTURE_VERDICTS))
    assert [v["outcome"] for v in book.read_verdicts(f)] == ["holds", "inconclusive", "does not hold"]
    for bad in ("{not json", json.dumps({"claim": "x"}), json.dumps([dict(FIXTURE_VERDICTS[0], outcome="yes")])):
        f.write_text(bad)
        with pytest.raises(ValueError, match=r"verdicts\.json.*lostattn reproduce --force --only 10_table1_rid_mixig"):
            book.read_verdicts(f)


def test_copy_page_data(tmp_path, monkeypatch):
    src = _results(tmp_path) / NOTEBOOKS[0]
    (src / "big.bin").write_bytes(b"0" * 2048)
    monkeypatch.setattr(book, "MAX_DATA_BYTES", 1024)
    copied, too_big = book.copy_page_data(src, tmp_path / "copy")
    assert [f.as_posix() for f in copied] == ["records/vanilla.jsonl", "table1.csv", "verdicts.json"]
    assert too_big == [Path("big.bin")], "the marker and the lock are bookkeeping, not data"
    assert str(tmp_path) not in (tmp_path / "copy" / "table1.csv").read_text()
    footer = book.page_footer_markdown(NOTEBOOKS[0], "tiny", copied, too_big)
    assert f"{{download}}`table1.csv <{NOTEBOOKS[0]}/table1.csv>`" in footer and "`big.bin`" in footer
    assert book.copy_page_data(tmp_path / "absent", tmp_path / "copy2") == ([], [])


def test_rerun_box_names_a_checkpoint_only_where_the_page_takes_one():
    from lostattn.pipeline.profiles import notebook_parameters

    for n in NOTEBOOKS:
        box = book.rerun_markdown(n)
        assert box.startswith(":::{admonition} Rerun this page") and box.endswith(":::")
        assert f"lostattn reproduce --only {n}\n" in box and f"--config my_paper.yaml --only {n}\n" in box
        takes_model = "model" in notebook_parameters(n)
        assert ("-p model /path/to/checkpoint" in box) == takes_model, n
        if takes_model:
            assert f"-p out_dir results/my_checkpoint/{n}" in box
    assert "papermill" not in book.rerun_markdown("30_paper_tables")  # it reads the matrix, not one checkpoint


def test_scorecard_counts_and_grammar():
    text = book.scorecard_markdown([("a", "Page A", FIXTURE_VERDICTS[:1]), ("b", "Page B", None)], "tiny")
    assert text.startswith("Profile `tiny`: of 1 claim tested, 1 holds, 0 do not hold and 0 are inconclusive")
    assert "1 of 2 pages wrote no verdicts: *Page B*." in text
    assert '<a href="executed/a.html">Page A</a> <span class="tally">1 of 1 claim holds</span>' in text
    assert "&lt;" in book.scorecard_markdown([("a", "A", [dict(FIXTURE_VERDICTS[0], claim="x < y")])], "tiny")


def test_repository_url(monkeypatch):
    monkeypatch.setenv("LOSTATTN_REPOSITORY_URL", "git@github.com:someone/lostattn.git")
    assert book.repository_url() == "https://github.com/someone/lostattn"
    monkeypatch.setenv("LOSTATTN_REPOSITORY_URL", "https://example.org/x/lostattn.git")
    assert book.repository_url() == "https://example.org/x/lostattn"
    assert "no `origin` remote" in book.source_markdown(None, "abc")


# ---- the built book ------------------------------------------------------------------------------------------
MACHINE_PATH = re.compile(r"/tmp/|/root/|/home/|" + re.escape(str(REPO_ROOT)))


def _book_copy(tmp: Path) -> Path:
    """book/ without its build outputs, in `tmp`; MathJax copied when set up here, else a stand-in (the checks
    below read the script tags, not the formulas)."""
    dst = tmp / "book"
    shutil.copytree(book.BOOK_DIR, dst, ignore=shutil.ignore_patterns("_build", "executed", "mathjax"))
    mj = book.BOOK_DIR / "_static" / "mathjax"
    if (mj / "tex-mml-chtml.js").is_file():
        shutil.copytree(mj, dst / "_static" / "mathjax")
    else:
        (dst / "_static" / "mathjax").mkdir(parents=True)
        (dst / "_static" / "mathjax" / "tex-mml-chtml.js").write_text("/* stand-in */\n")
    return dst


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.ipynb")):
        h.update(f.read_bytes())
    return h.hexdigest()


def _build(tmp: Path, notebooks: Path, results: Path | None = None) -> Path:
    executed = _digest(notebooks)
    bdir = _book_copy(tmp)
    assert book.build_book_html("tiny", book_dir=bdir, notebooks_dir=notebooks, results_dir=results) == 0
    assert _digest(notebooks) == executed, "the build changes its copies only"
    return bdir / "_build" / "html"


def _verdict(claim: str, outcome: str, **kw) -> dict:
    return {"page": "", "claim": claim, "scope": "all tokens", "outcome": outcome, "estimate": 0.41, "low": 0.3,
            "high": 0.52, "unit": "", "n": 40, "n_needed": None, **kw}


# The fixture run's verdicts: every outcome once, and one page (the third) that wrote no verdicts.json.
FIXTURE_VERDICTS = [_verdict("Attention mixes tokens", "holds"),
                    _verdict("SAP barely changes accuracy", "inconclusive", unit="points", n_needed=400),
                    _verdict("Attention's RID is near ε_RoPE", "does not hold")]
NO_VERDICTS = 2


def _results(tmp: Path) -> Path:
    """An output folder per page as reproduce leaves them: data, a marker, a lock, verdicts (not on one page)."""
    res = tmp / "results"
    for i, n in enumerate(NOTEBOOKS):
        d = res / n
        (d / "records").mkdir(parents=True)
        (d / "table1.csv").write_text(f"module,RID\nAttention,0.2\n# from {tmp}/results/{n}\n")
        (d / "records" / "vanilla.jsonl").write_text('{"id": 1}\n')
        (d / ".lostattn.json").write_text("{}")
        (d / "table1.lock").write_text("")
        if i != NO_VERDICTS:
            (d / "verdicts.json").write_text(json.dumps([dict(v, page=n) for v in FIXTURE_VERDICTS[: i % 3 + 1]]))
    return res


@pytest.fixture(scope="module")
def fixture_html(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("book")
    nbs = tmp / "notebooks"
    nbs.mkdir()
    for i, name in enumerate(NOTEBOOKS):
        (nbs / f"{name}.ipynb").write_text(json.dumps(_executed_notebook(name, tmp, math=i % 2 == 0)))
    return _build(tmp, nbs, _results(tmp)), tmp


def _book_pages() -> list[str]:
    """The executed notebooks the table of contents shows (a notebook may run without a page of its own)."""
    return re.findall(r"file:\s*executed/(\w+)", (book.BOOK_DIR / "_toc.yml").read_text())


def _pages(html: Path) -> dict[str, "bs4.BeautifulSoup"]:
    return {p.relative_to(html).as_posix(): bs4.BeautifulSoup(p.read_text(encoding="utf-8"), "html.parser")
            for p in html.rglob("*.html") if "_static" not in p.parts and p.name != "index.html"}


def _check_book(html: Path, tmp: Path) -> dict:
    leaks = []
    for f in html.rglob("*"):
        if f.is_file() and f.suffix in (".html", ".js", ".txt", ".ipynb", ".md", ".json", ".css", ".inv"):
            text = f.read_text(encoding="utf-8", errors="replace")
            leaks += [f"{f.relative_to(html)}: {m.group(0)}" for m in MACHINE_PATH.finditer(text)]
            leaks += [f"{f.relative_to(html)}: {tmp}"] if str(tmp) in text else []
    assert not leaks, f"paths of the building machine on built pages: {leaks[:10]}"
    pages = _pages(html)
    shown = _book_pages()
    assert shown and {f"executed/{n}.html" for n in shown} <= set(pages)
    for name, soup in pages.items():
        scripts = soup.find_all("script")
        assert sum("THEBE_JS_URL" in (s.string or "") for s in scripts) <= 1, name
        mathjax = [s["src"] for s in scripts if s.get("src") and "mathjax" in s["src"].lower()]
        assert len(mathjax) <= 1, f"{name} loads MathJax {len(mathjax)} times: {mathjax}"
        if soup.select(".math"):
            assert len(mathjax) == 1 and "mathjax/tex-mml-chtml.js" in mathjax[0], name
        srcs = [s.get("src") for s in scripts if s.get("src")]
        assert len(srcs) == len(set(srcs)), f"{name} loads a script twice"
        assert not soup.select(".btn-download-source-button, .dropdown-download-buttons, .btn-fullscreen-button"), \
            f"{name} shows a download or fullscreen button"
        assert "toggleFullScreen" not in str(soup), name
        css = [link.get("href", "") for link in soup.find_all("link", rel="stylesheet")]
        assert any("_static/lostattn.css" in h for h in css), f"{name} does not link lostattn.css"
    assert not (html / "genindex.html").exists(), "an empty general index page"
    assert not any(a.get("href", "").endswith("genindex.html") for soup in pages.values() for a in soup.find_all("a"))
    intro = pages["intro.html"]
    assert intro.find("a", href="https://arxiv.org/abs/2605.05668")
    assert intro.find("a", href="https://github.com/Lrbomchz/vlms_lost_in_attn")
    assert re.search(r"This book.s code: .* commit", intro.get_text())
    card = intro.select_one("div.scorecard table")
    assert card is not None, "the landing page has no scorecard"
    assert [a["href"] for a in card.select("tr.page a")] == [f"executed/{n}.html" for n in NOTEBOOKS]
    framework = pages["framework.html"].get_text()
    assert "<|vision_start|>" in framework and "<|image_pad|>" in framework and "paper\\_text" not in framework
    for n in shown:
        soup = pages[f"executed/{n}.html"]
        assert not soup.select(".tag_injected-parameters") and "# Parameters" not in soup.get_text(), n
        rerun = soup.select_one("div.admonition.rerun")
        assert rerun is not None, f"{n}: no rerun box"
        commands = [c.get_text() for c in rerun.select("pre")]
        assert f"lostattn reproduce --only {n}" in commands[0], n
        assert f"lostattn reproduce --profile paper --config my_paper.yaml --only {n}" in commands[1], n
        downloads = {a.get_text(strip=True): a["href"] for a in soup.select("a.download")}
        assert f"{n}.ipynb" in downloads, f"{n}: no notebook download"
        for href in downloads.values():
            assert (html / "executed" / href).resolve().is_file(), f"{n}: {href} is not in the built book"
        whole = json.loads((html / "executed" / downloads[f"{n}.ipynb"]).read_text())
        assert len(whole["cells"]) >= len([c for c in soup.select("div.cell")]), "the download is the whole notebook"
        inputs = soup.select("div.cell div.cell_input")
        assert inputs, f"{n}: no code cells"
        for ci in inputs:
            details = ci.find_parent("details")
            assert details is not None and not details.has_attr("open"), f"{n}: a code input is not collapsed"
    return pages


def test_fixture_book(fixture_html):
    pages = _check_book(*fixture_html)
    for n in _book_pages():
        soup = pages[f"executed/{n}.html"]
        verdict = soup.select("div.admonition.verdict")
        assert len(verdict) == 1, n
        assert verdict[0].select_one(".admonition-title").get_text(strip=True) == "Verdict: what this run shows"
        assert len(verdict[0].select("li strong")) == 2 and verdict[0].select(".math"), n
        assert soup.select("details.run-parameters"), f"{n}: the run's parameters dropdown did not render"
        tables = soup.select("div.lostattn-table > table.lostattn")
        assert len(tables) == 2 and tables[0].select("td.num"), n
        assert tables[0].caption.get_text() == f"Accuracy ({n})"  # the out_dir outside the repository, by name
        assert soup.select("div.cell.tag_hide-cell details"), f"{n}: a cell tagged hide-cell lost its toggle"
    assert pages["executed/01_embedded_model.html"].select(".math")  # MathJax checked on a page that has math
    # the data each page wrote: downloadable, paths scrubbed, bookkeeping (marker, lock, verdicts) left out
    html = fixture_html[0]
    for n in _book_pages():
        links = {a.get_text(strip=True): a["href"] for a in pages[f"executed/{n}.html"].select("a.download")}
        wrote_verdicts = {"verdicts.json"} if n != NOTEBOOKS[NO_VERDICTS] else set()
        assert set(links) == {f"{n}.ipynb", "records/vanilla.jsonl", "table1.csv"} | wrote_verdicts, links
        assert (html / "executed" / links["table1.csv"]).read_text().endswith(f"# from {n}\n")
    # the scorecard, read from the fixture verdicts
    card = pages["intro.html"].select_one("div.scorecard")
    outcomes = [td.get_text() for td in card.select("td.outcome")]
    wrote = [i % 3 + 1 for i in range(len(NOTEBOOKS)) if i != NO_VERDICTS]
    assert len(outcomes) == sum(wrote)
    assert outcomes.count("holds") == len(wrote) and outcomes.count("does not hold") == wrote.count(3)
    assert "0.41 [0.3, 0.52] points" in card.get_text() and "40 (≈400 needed)" in card.get_text()
    missing = card.select("td.no-verdicts")
    assert len(missing) == 1 and f"--only {NOTEBOOKS[NO_VERDICTS]}" in missing[0].get_text()
    summary = pages["intro.html"].get_text()
    assert f"of {sum(wrote)} claims tested, {len(wrote)} hold" in summary
    assert f"1 of {len(NOTEBOOKS)} pages wrote no verdicts" in summary


def test_stylesheet_rules():
    css = (book.BOOK_DIR / "_static" / "lostattn.css").read_text()
    rule = lambda sel: re.search(re.escape(sel) + r"[^{]*\{([^}]*)\}", css).group(1)  # noqa: E731
    assert "overflow-x: auto" in rule(".lostattn-table")
    assert "text-align: right" in rule("table.lostattn td.num")
    assert "max-width: 100%" in rule("div.cell_output img")
    assert "div.admonition.verdict" in css
    # nothing cut off: outputs and display formulas scroll in their box, column names break, figures on a phone
    # keep a legible width in a box that scrolls
    assert "overflow-x: auto" in rule(".bd-article div.math")
    assert "overflow-wrap: normal" in rule("table.lostattn thead th")  # names break after "_" (<wbr>), not mid-word
    assert "white-space: normal" in rule("table.lostattn thead th.num")
    phone = css[css.index("@media (max-width: 640px) {\n  div.cell_output:has(> img)"):]
    assert "overflow-x: auto" in phone.split("}")[0] and "width: 640px" in phone.split("}")[1]


def test_real_book_from_the_stored_notebooks(tmp_path):
    """The book a reader gets, from the real pages (the stored notebooks' outputs), in a few seconds."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for n in NOTEBOOKS:
        shutil.copy2(REPO_ROOT / "notebooks" / f"{n}.ipynb", nbs)
    pages = _check_book(_build(tmp_path, nbs, tmp_path / "results"), tmp_path)
    for n in _book_pages():
        soup = pages[f"executed/{n}.html"]
        assert soup.find("h1"), f"{n}: no title"
        assert soup.select("div.cell_output"), f"{n}: no outputs: the stored notebook was not executed"
        assert f"results/tiny/{n}/ folder was empty or absent" in soup.get_text()  # no results folder given
    card = pages["intro.html"].select("div.scorecard td.no-verdicts")
    assert len(card) == len(NOTEBOOKS), "no page wrote verdicts here, and the scorecard says so for each"
    assert "no results page wrote its verdicts" in pages["intro.html"].get_text()


@pytest.mark.skipif(not all((RESULTS_DIR / "tiny" / "notebooks" / f"{n}.ipynb").is_file() for n in NOTEBOOKS),
                    reason="results/tiny/ not made yet (python3 -m lostattn reproduce --no-book)")
def test_real_book(tmp_path):
    # A snapshot, so that a `lostattn reproduce` running meanwhile cannot change what is built.
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for n in NOTEBOOKS:
        shutil.copy2(RESULTS_DIR / "tiny" / "notebooks" / f"{n}.ipynb", nbs)
    _check_book(_build(tmp_path, nbs, RESULTS_DIR / "tiny"), tmp_path)
