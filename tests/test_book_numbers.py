"""No page of the book can state a number that the results do not hold.

- Results pages (the notebooks): their typed text (markdown cells) holds no measured number at all; numbers come
  from computed outputs (verdicts, tables) or are glued (`{glue:text}`). A decimal or a percentage in a markdown
  cell outside math, code and glue roles fails.
- Narrative pages (book/*.md): every decimal and percentage outside math and code must be found in a source of
  record: the paper's reported values (data/paper), recorded experiments (experiments/results), cost measurements
  (benchmarks/results), the committed model's files (data/embedded_model) and profiles, or the package's own
  constants (the numbers written in lostattn/'s source: presets, windows, thresholds). A typed result of this run
  matches none of them and fails, so a sentence cannot go stale.
"""
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.\-])[-−]?\d[\d,]*\.\d+(?![\d.]*\.\d)(?:[eE][-+]?\d+)?(?:\s?%)?"
                    r"|(?<![\w.])\d+(?:\.\d+)?\s?%")
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
_GLUE = re.compile(r"\{glue(?::\w+)?\}`[^`]*`")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_ARXIV = re.compile(r"arXiv:?\s*\d{4}\.\d{4,5}", re.I)


def _prose(text: str) -> str:
    for pat in (_GLUE, _CODE, _MATH, _LINK_TARGET, _ARXIV):
        text = pat.sub(" ", text)
    return text


def numbers_in(text: str) -> list[str]:
    return [m.group(0) for m in NUMBER.finditer(_prose(text))]


def _value(token: str) -> tuple[float, float, bool]:
    """(value, half the last shown digit's unit, is a percentage) of a number as written."""
    pct = token.rstrip().endswith("%")
    t = token.replace("%", "").replace("−", "-").replace(",", "").strip()
    mantissa, _, exp = t.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return float(t), 0.5 * 10 ** (int(exp or 0) - decimals), pct


_SOURCE_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _record_numbers() -> list[float]:
    files = [*(REPO / "data" / "paper").glob("*.csv"), *(REPO / "experiments" / "results").glob("*"),
             *(REPO / "benchmarks" / "results").glob("*.json"), *(REPO / "data" / "embedded_model").glob("*.json"),
             *(REPO / "profiles").glob("*.yaml"), *(REPO / "lostattn").rglob("*.py")]
    out = []
    for f in files:
        if f.is_file():
            out += [float(x) for x in _SOURCE_NUMBER.findall(f.read_text(errors="ignore"))]
    return out


@pytest.fixture(scope="module")
def known():
    return _record_numbers()


def _found(token: str, known: list[float]) -> bool:
    """Whether a source holds the number as shown (rounded to its decimals; a percentage also as a fraction)."""
    v, half_unit, pct = _value(token)
    tol = half_unit * (1 + 1e-9)
    for k in known:
        for shown in ([k, 100 * k] if pct else [k]):
            if abs(abs(shown) - abs(v)) <= tol:
                return True
    return False


def test_the_pattern_finds_results_and_skips_what_is_not_one():
    text = ("Attention's RID is 0.238 here (92.5% of the FFN's) and $x = 0.5$; see `0.7` and "
            "{glue:text}`eps_run`, arXiv 2605.05668, Jupyter Book 1.0.4, [a](x/0.9.html).")
    assert numbers_in(text) == ["0.238", "92.5%"]


def test_results_pages_type_no_measured_number():
    bad = []
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "markdown":
                found = numbers_in("".join(cell["source"]))
                if found:
                    bad.append(f"{nb.name} cell {i}: {found}")
    assert not bad, "typed numbers in notebook text (glue them or show them in an output):\n" + "\n".join(bad)


@pytest.mark.parametrize("page", sorted(p.name for p in (REPO / "book").glob("*.md")))
def test_narrative_pages_state_only_numbers_of_record(page, known):
    text = (REPO / "book" / page).read_text()
    stale = [n for n in numbers_in(text) if not _found(n, known)]
    assert not stale, (f"{page} states numbers found in no result, record or constant (glue them from a results "
                       f"page, or record the experiment under experiments/results): {stale}")


def test_a_stale_number_is_caught(known):
    assert not _found("43.57", known) and not _found("61.173", known)
    assert _found("0.062", known) and _found("87.8", known) and _found("0.25", known)
