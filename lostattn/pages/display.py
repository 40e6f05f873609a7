"""What a reader sees of a result: tables as HTML that fit the book's column, small key-value tables instead of
raw dicts, the run's parameters with the building machine's paths taken out, and labelled figures laid out for
the page width.

Every notebook shows its tables through `table` (never `print(df.to_string())`): the HTML is deterministic (no
random ids, so stored outputs compare under nbval) and sits in a `lostattn-table` box that scrolls sideways
inside the column when a table is wider than the page (book/_static/lostattn.css).
"""
from __future__ import annotations

import html
import math
import numbers
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd

from lostattn.provenance import REPO_ROOT

Format = str | Callable[[object], str]
MISSING = "—"


# ---- paths ---------------------------------------------------------------------------------------------------
def display_path(value) -> str:
    """`value` as a reader may see it: a path inside the repository relative to it, any other absolute path by its
    last component (a model folder's name, a benchmark file's name), anything else unchanged."""
    if value is None:
        return "None"
    s = str(value)
    if not s.startswith(("/", "~")) and not (len(s) > 2 and s[1] == ":" and s[2] in "\\/"):
        return s
    p = Path(s).expanduser()
    try:
        return p.resolve().relative_to(REPO_ROOT.resolve()).as_posix()
    except (ValueError, OSError):
        return p.name or s


# ---- tables --------------------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def _is_missing(v) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def format_cell(v, fmt: Format | None = None, digits: int = 3) -> str:
    """One cell as text: `fmt` (a format string such as "{:+.1f}" or a callable) when given, else integers as
    integers, other numbers to `digits` decimals, missing values as an em dash."""
    if _is_missing(v):
        return MISSING
    if fmt is not None:
        return fmt(v) if callable(fmt) else fmt.format(v)
    if _is_number(v):
        if isinstance(v, numbers.Integral) or (float(v).is_integer() and abs(v) >= 1000):
            return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{v:.{digits}f}"
    return display_path(v) if isinstance(v, (str, Path)) and str(v).startswith("/") else str(v)


def _breakable(name) -> str:
    """A column name as HTML that may break after an underscore or a dot (gaussian_<wbr>noise), never inside a
    word: a wide table reflows to the column before it scrolls, and no name reads 'vanill/a'."""
    return html.escape(str(name)).replace("_", "_<wbr>").replace(".", ".<wbr>")


class HtmlTable:
    """A DataFrame as the book shows it: HTML in a box that fits the column (`_repr_html_`), plain aligned text
    in a terminal (`__repr__`). Build it with `table(...)`."""

    def __init__(self, df: pd.DataFrame, digits: int | Mapping[str, int] = 3, formats: Mapping[str, Format] | None = None,
                 caption: str | None = None, index: bool = False, note: str | None = None):
        self.df = df.reset_index() if index else df.reset_index(drop=True)
        self.digits = digits
        self.formats = dict(formats or {})
        self.caption = caption
        self.note = note

    def _digits(self, col) -> int:
        if isinstance(self.digits, Mapping):
            return self.digits.get(col, 3)
        return self.digits

    def cells(self) -> list[list[str]]:
        """The body as formatted strings, one list per row."""
        return [[format_cell(v, self.formats.get(c), self._digits(c)) for c, v in zip(self.df.columns, row)]
                for row in self.df.itertuples(index=False, name=None)]

    def _numeric(self) -> list[bool]:
        return [pd.api.types.is_numeric_dtype(self.df[c]) and not pd.api.types.is_bool_dtype(self.df[c])
                for c in self.df.columns]

    def _repr_html_(self) -> str:
        num = self._numeric()
        out = ['<div class="lostattn-table">', '<table class="lostattn">']
        if self.caption:
            out.append(f"<caption>{html.escape(self.caption)}</caption>")
        cls = ['' if not n else ' class="num"' for n in num]
        out.append("<thead><tr>" + "".join(f"<th{k}>{_breakable(c)}</th>" for c, k in zip(self.df.columns, cls))
                   + "</tr></thead>")
        out.append("<tbody>")
        for row in self.cells():
            out.append("<tr>" + "".join(f"<td{k}>{html.escape(v)}</td>" for v, k in zip(row, cls)) + "</tr>")
        out.append("</tbody></table>")
        if self.note:
            out.append(f'<p class="lostattn-table-note">{html.escape(self.note)}</p>')
        out.append("</div>")
        return "\n".join(out)

    def __repr__(self) -> str:
        head = [str(c) for c in self.df.columns]
        rows = self.cells()
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
        num = self._numeric()

        def line(vals):
            return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, num)).rstrip()

        text = [self.caption] if self.caption else []
        text += [line(head)] + [line(r) for r in rows]
        if self.note:
            text.append(self.note)
        return "\n".join(text)


def table(df: pd.DataFrame, digits: int | Mapping[str, int] = 3, formats: Mapping[str, Format] | None = None,
          caption: str | None = None, index: bool = False, note: str | None = None) -> HtmlTable:
    """`df` rendered for the page: numbers rounded to `digits` (per column with a mapping), per-column `formats`,
    missing values as an em dash, absolute paths shortened; `index=True` shows the index as the first columns."""
    return HtmlTable(df, digits, formats, caption, index, note)


def key_value_table(values: Mapping[str, object], labels: Mapping[str, str] | None = None,
                    formats: Mapping[str, Format] | None = None, caption: str | None = None,
                    digits: int = 3) -> HtmlTable:
    """A small two-column table (what, value) for a dict of measurements, in the order of `labels` when given
    (keys not in `labels` follow under their own names)."""
    labels = dict(labels or {})
    formats = dict(formats or {})
    keys = [k for k in labels if k in values] + [k for k in values if k not in labels]
    rows = [{"what": labels.get(k, k), "value": format_cell(values[k], formats.get(k), digits)} for k in keys]
    return HtmlTable(pd.DataFrame(rows, columns=["what", "value"]), caption=caption)


# ---- the run's parameters ------------------------------------------------------------------------------------
def run_summary_markdown(params: Mapping[str, object], summary: str) -> str:
    """A collapsed MyST dropdown titled `summary` holding the run's parameters as a table, paths shortened."""
    lines = [f":::{{dropdown}} {summary}", ":class-container: run-parameters", "",
             "| parameter | value |", "|---|---|"]
    for k, v in params.items():
        text = display_path(v) if isinstance(v, (str, Path)) else repr(v) if isinstance(v, (list, tuple)) else str(v)
        lines.append(f"| `{k}` | `{text.replace('|', '/')}` |")
    lines.append(":::")
    return "\n".join(lines)


# ---- figures -------------------------------------------------------------------------------------------------
PAGE_WIDTH_IN = 7.0  # the book's text column at the figure dpi: fonts stay legible at column width


def panel_grid(n: int, ncols: int | None = None, panel_height: float = 2.4, width: float = PAGE_WIDTH_IN,
               **subplot_kw):
    """A figure of `n` panels in rows of at most `ncols` (default: 2 up to 4 panels, else 3), sized for the
    column; returns (fig, flat list of the `n` axes), unused grid cells removed."""
    import matplotlib.pyplot as plt

    ncols = ncols or (n if n <= 2 else 2 if n == 4 else 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, panel_height * nrows), squeeze=False,
                             layout="constrained", **subplot_kw)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def legend_below(fig, axes, ncol: int | None = None, **kw):
    """One legend for the whole figure, below the panels (outside them, so it covers no data point); needs the
    constrained layout `panel_grid` sets up."""
    handles, labels = [], []
    for ax in axes if isinstance(axes, (list, tuple)) else [axes]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not handles:
        return None
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol or min(len(labels), 4), frameon=False,
                      **kw)


def error_bars(df: pd.DataFrame, value: str = "accuracy", low: str = "ci_low", high: str = "ci_high"):
    """matplotlib's `yerr` for the 95% intervals of `df`: the distances (value − low, high − value), 2 × rows."""
    import numpy as np

    v = df[value].to_numpy(dtype=float)
    return np.vstack([v - df[low].to_numpy(dtype=float), df[high].to_numpy(dtype=float) - v]).clip(min=0)


# Column headers a reader understands, for tables built from the metric frames
READABLE = {"erank_in": "eRank of X_in", "erank_out": "eRank of X_out", "dS": "ΔS", "dD": "ΔD", "rid": "RID",
            "mixig": "MixIG", "n_tokens": "tokens", "ci_low": "95% low", "ci_high": "95% high",
            "p_value": "McNemar p", "delta": "Δ (points)", "seed_mean": "mean over seeds", "seed_sd": "sd over seeds"}


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with its metric columns renamed for the page (`READABLE`; `<col>_ci_low` as "<name> 95% low")."""
    names = {}
    for c in df.columns:
        for suffix, word in (("_ci_low", " 95% low"), ("_ci_high", " 95% high")):
            if isinstance(c, str) and c.endswith(suffix) and c != suffix[1:]:
                base = c[: -len(suffix)]
                names[c] = READABLE.get(base, base) + word
        if c not in names and c in READABLE:
            names[c] = READABLE[c]
    return df.rename(columns=names)


def with_intervals(df: pd.DataFrame, cols: Mapping[str, tuple[str, str]], signed: bool = False) -> pd.DataFrame:
    """`df` for the page with each column of `cols` (name -> (low column, high column)) shown as
    "estimate [low, high]" at the precision its interval needs (`lostattn.stats.format_interval`), the bound columns
    dropped and the column named "<name> [95%]"."""
    from lostattn.stats import format_interval

    out = df.copy()
    for col, (lo, hi) in cols.items():
        out[col] = [format_interval(v, a, b, signed) for v, a, b in zip(df[col], df[lo], df[hi])]
        out = out.drop(columns=[lo, hi]).rename(columns={col: f"{col} [95%]"})
    return out
