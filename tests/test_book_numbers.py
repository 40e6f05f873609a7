"""No page of the book can state a number that the results do not hold.

- Results pages (the notebooks): their typed text (markdown cells) holds no measured number at all; numbers come
  from computed outputs (verdicts, tables) or are glued (`{glue:text}`). A decimal or a percentage in a markdown
  cell outside math, code and glue roles fails.
- Narrative pages (book/*.md): every decimal and percentage outside math and code sits on a line that
  `book/_numbers.yml` binds to one record: a row or value of the paper's reported values (data/paper), of a recorded
  experiment (experiments/results), of a cost measurement (benchmarks/results), or a constant of the package read
  by an expression (`py:module:expression`). Each number must equal (to its shown decimals) a value of *that*
  record, so a number is matched with its context: "0.06" beside "RID" must be the paper's attention RID, not any
  0.06 anywhere. A record that changes, or a number typed without a record, fails.

Locators: `csv:PATH?COL=VALUE&...#COLUMN` (the row where every COL equals VALUE; all its numbers, or one COLUMN),
`csv-columns:PATH#PREFIX` (numbers in the column names after PREFIX),
`json:PATH#KEY.KEY...` (a leaf, or every number under a key; `*` for every key or item at its level; through a list of
records, those that have the next key), `py:MODULE:EXPRESSION` (a number or a list of them).
"""
import importlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

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


NUMBERS_OF_RECORD = REPO / "book" / "_numbers.yml"


def _flatten(x) -> list[float]:
    if isinstance(x, bool):
        return []
    if isinstance(x, (int, float)):
        return [float(x)]
    if isinstance(x, dict):
        return [v for y in x.values() for v in _flatten(y)]
    if isinstance(x, (list, tuple)):
        return [v for y in x for v in _flatten(y)]
    return []


def resolve(locator: str) -> list[float]:
    """The numbers a locator names (see the module's docstring); a locator that names nothing raises."""
    kind, _, rest = locator.partition(":")
    if kind == "py":
        module, _, expr = rest.partition(":")
        return _flatten(eval(expr, vars(importlib.import_module(module))))  # noqa: S307 - the repo's own file
    path, _, field = rest.partition("#")
    path, _, query = path.partition("?")
    if kind == "json":
        return _flatten(_walk(json.loads((REPO / path).read_text()), [k for k in field.split(".") if k]))
    if kind == "csv-columns":  # numbers written in column names, e.g. init_0.02 -> 0.02 (field: the prefix)
        cols = pd.read_csv(REPO / path, comment="#", nrows=0).columns
        return [float(c[len(field):]) for c in cols if c.startswith(field) and _is_number(c[len(field):])]
    if kind == "csv":
        df = pd.read_csv(REPO / path, comment="#", dtype=str)
        for cond in filter(None, query.split("&")):
            col, _, value = cond.partition("=")
            df = df[df[col].str.strip() == value]
        if len(df) != 1:
            raise LookupError(f"{locator}: {len(df)} rows match, not one")
        cells = [df.iloc[0][field]] if field else list(df.iloc[0])
        return [float(c) for c in cells if _is_number(c)]
    raise ValueError(f"{locator}: unknown kind {kind!r} (csv, json, py)")


def _walk(x, keys: list[str]):
    """The value at a key path; `*` stands for every key at its level."""
    if not keys:
        return x
    if keys[0] == "*":
        items = x.values() if isinstance(x, dict) else x
        return [_walk(v, keys[1:]) for v in items if len(keys) == 1 or not isinstance(v, dict) or keys[1] in v]
    if isinstance(x, list):  # a list of records: those that have the key
        return [_walk(v, keys) for v in x if isinstance(v, dict) and keys[0] in v]
    return _walk(x[keys[0]], keys[1:])


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def _matches(token: str, values: list[float]) -> bool:
    """Whether one of `values` is the number as shown (rounded to its decimals; a percentage also as a fraction)."""
    v, half_unit, pct = _value(token)
    tol = half_unit * (1 + 1e-9)
    return any(abs(shown - v) <= tol for k in values for shown in ([k, 100 * k] if pct else [k]))


def unbound_numbers(text: str, bindings: list[dict]) -> list[str]:
    """The numbers of a page's prose that no binding on their line accounts for: '<number> on line N: <why>'."""
    bad = []
    resolved = {b["source"]: resolve(b["source"]) for b in bindings}
    for n, line in enumerate(_prose(text).splitlines(), start=1):
        found = numbers_in(line)
        if not found:
            continue
        mine = [b for b in bindings if b["near"].lower() in line.lower()]
        if not mine:
            bad += [f"{tok} on line {n}: no binding in book/_numbers.yml names this line" for tok in found]
            continue
        values = [v for b in mine for v in resolved[b["source"]]]
        bad += [f"{tok} on line {n}: not in {', '.join(b['source'] for b in mine)}" for tok in found
                if not _matches(tok, values)]
    return bad


@pytest.fixture(scope="module")
def bindings() -> dict:
    return yaml.safe_load(NUMBERS_OF_RECORD.read_text()) or {}


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
def test_narrative_pages_state_only_numbers_of_record(page, bindings):
    text = (REPO / "book" / page).read_text()
    bad = unbound_numbers(text, bindings.get(page, []))
    assert not bad, (f"{page} states numbers no record on their line holds (bind the line to its record in "
                     f"book/_numbers.yml, or glue the number from a results page):\n" + "\n".join(bad))


def test_every_binding_resolves_and_is_used(bindings):
    for page, entries in bindings.items():
        text = _prose((REPO / "book" / page).read_text()).lower()
        for b in entries:
            assert resolve(b["source"]), f"{page}: {b['source']} names no number"
            assert b["near"].lower() in text, f"{page}: no line holds {b['near']!r} any more (a dead binding)"


def test_a_stale_or_unbound_number_is_caught():
    paper = [{"near": "attention's RID", "source": "csv:data/paper/table1.csv?module=Attention#RID"}]
    assert unbound_numbers("Attention's RID is 0.06 in the paper.", paper) == []
    assert unbound_numbers("Attention's RID is 0.07 in the paper.", paper)  # stale: the record says 0.06
    assert unbound_numbers("The FFN's RID is 0.21 in the paper.", paper)  # no binding names the line
    # context matters: 0.21 is a number of record (the FFN's RID), but not of the record bound to this line
    assert unbound_numbers("Attention's RID is 0.21 in the paper.", paper)
    assert _matches("62%", [0.62]) and _matches("0.062", resolve("csv:data/paper/eps_rope.csv?quantity=eps_RoPE"))
    with pytest.raises(LookupError):
        resolve("csv:data/paper/table1.csv?module=Nothing")
