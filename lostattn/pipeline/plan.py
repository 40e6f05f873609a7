"""The plan of a profile: every model × benchmark × notebook combination a `MatrixCell`, numbered in a fixed
order (model, then benchmark, then notebook; notebooks that run once last), and the selection a command runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lostattn.pipeline import profiles
from lostattn.pipeline.profiles import (NOTEBOOKS, SECTION_KEYS, Profile, _closest, _over, _slug,
                                       notebook_parameters)
from lostattn.provenance import REPO_ROOT

def _local(path: str) -> Path:
    """A path from a profile as the notebooks read it: relative ones from the repository root (the kernels' cwd)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


@dataclass
class MatrixCell:
    """One notebook run: the notebook, its model and benchmark (None when it has no such axis), its parameters."""

    number: int
    notebook: str
    model: str | None  # the model's name in the profile (the paper's)
    benchmark: str | None  # registry name
    params: dict
    root: Path  # holds notebooks/<notebook>.ipynb and .cachekey
    book: bool = False  # the cell the book shows
    once: bool = False  # runs once, after the others (no model or benchmark axis)

    @property
    def out_dir(self) -> Path:
        return Path(self.params["out_dir"])

    @property
    def out_nb(self) -> Path:
        return self.root / "notebooks" / f"{self.notebook}.ipynb"

    @property
    def key_file(self) -> Path:
        return self.root / "notebooks" / f"{self.notebook}.cachekey"

    @property
    def label(self) -> str:
        from lostattn.tasks.registry import display_name

        parts = [p for p in (self.model, display_name(self.benchmark) if self.benchmark else None) if p]
        return (" × ".join(parts) + " · " if parts else "") + self.notebook


Combo = tuple[str, "dict | None", "dict | None"]  # (notebook, model entry, benchmark entry)


def plan(prof: Profile, results: str | Path | None = None) -> list[MatrixCell]:
    """Every cell of the profile, numbered from 1 in the fixed order (model, benchmark, notebook; once-only
    notebooks last)."""
    results = Path(results) if results else profiles.RESULTS_DIR / prof.name
    combos = _combinations(prof)
    per_nb: dict[str, int] = {}
    for nb, _, _ in combos:
        per_nb[nb] = per_nb.get(nb, 0) + 1
    book_at = _book_cells(prof, combos)
    cells = [_cell(prof, i, combo, results, book=book_at[combo[0]] == i - 1, alone=per_nb[combo[0]] == 1)
             for i, combo in enumerate(combos, start=1)]
    _refuse_overlaps(cells, prof)
    return cells


def _entry(prof: Profile, nb: str, axis: str, loop_value: dict, sec: dict) -> dict | None:
    """The model or benchmark entry a notebook runs with: none when it has no such parameter, the one its section
    pins, the loop's when it runs over that axis, else the profile's first."""
    entries = prof.models if axis == "model" else prof.benchmarks
    if axis not in notebook_parameters(nb):
        return None
    if axis in sec:  # pinned by the notebook's section
        v = str(sec[axis])
        for e in entries:
            if v in (e["name"], e.get("path")):
                return e
        return {"name": Path(v).name if axis == "model" else v, **({"path": v} if axis == "model" else {})}
    return loop_value if axis in _over(nb, sec) else entries[0]


def _combinations(prof: Profile) -> list[Combo]:
    """The distinct (notebook, model, benchmark) combinations in the fixed order; once-only notebooks last."""
    combos: list[Combo] = []
    seen = set()
    for m in prof.models:
        for b in prof.benchmarks:
            for nb in prof.run:
                sec = prof.sections.get(nb, {})
                if not _over(nb, sec):
                    continue
                me, be = _entry(prof, nb, "model", m, sec), _entry(prof, nb, "benchmark", b, sec)
                ident = (nb, me["name"] if me else None, be["name"] if be else None)
                if ident not in seen:
                    seen.add(ident)
                    combos.append((nb, me, be))
    for nb in prof.run:
        sec = prof.sections.get(nb, {})
        if not _over(nb, sec):
            combos.append((nb, _entry(prof, nb, "model", prof.models[0], sec),
                           _entry(prof, nb, "benchmark", prof.benchmarks[0], sec)))
    return combos


def _book_cells(prof: Profile, combos: list[Combo]) -> dict[str, int]:
    """notebook -> index in `combos` of the cell the book shows: the first best match of the `book` choice."""
    book_at: dict[str, int] = {}
    for j, (nb, me, be) in enumerate(combos):
        want = {**prof.book, **(prof.sections.get(nb, {}).get("book") or {})}
        score = _book_score(me, be, want)
        if nb not in book_at or score > _book_score(combos[book_at[nb]][1], combos[book_at[nb]][2], want):
            book_at[nb] = j
    return book_at


def _cell(prof: Profile, number: int, combo: Combo, results: Path, book: bool, alone: bool) -> MatrixCell:
    """One numbered cell: its parameters (the more specific source wins: common, benchmark entry, notebook section,
    model entry; only those the notebook declares), its root and its output folder."""
    nb, me, be = combo
    sec = prof.sections.get(nb, {})
    declared = notebook_parameters(nb)
    once = not _over(nb, sec)
    where = (_slug(me["name"] if me else "any"), _slug(be["name"] if be else "any"))
    root = results if (book or once) else results / "cells" / where[0] / where[1]
    common = dict(prof.common)
    if prof.conditions is not None:
        common["modes"] = list(prof.conditions)
    params = {}
    for src in (common, {k: v for k, v in (be or {}).items() if k != "name"},
                {k: v for k, v in sec.items() if k not in SECTION_KEYS and k not in ("out_dir",)},
                {k: v for k, v in (me or {}).items() if k not in ("name", "path")}):
        params.update(src)
    if me is not None:
        params["model"] = me["path"]
    if be is not None:
        params["benchmark"] = be["name"]
    params = {k: v for k, v in params.items() if k in declared}
    if "out_dir" in sec:
        user = _local(str(sec["out_dir"]))
        out = user if alone else user / where[0] / where[1]
    else:
        out = root / nb
    context = {"profile": prof.name, "out_dir": str(out), "results": str(results),
               "model_name": me["name"] if me else None,
               "config": str(prof.path) if prof.explicit_config else None}
    params.update({k: v for k, v in context.items() if k in declared})
    params.setdefault("out_dir", str(out))
    return MatrixCell(number, nb, me["name"] if me else None, be["name"] if be else None, params, root, book, once)


def _book_score(model: dict | None, bench: dict | None, want: dict) -> int:
    """How well a cell fits the profile's `book` choice: the model counts more than the benchmark."""
    return sum(w for axis, e, w in (("model", model, 2), ("benchmark", bench, 1))
               if axis in want and e is not None and e["name"] == want[axis])


def _refuse_overlaps(cells: list[MatrixCell], prof: Profile) -> None:
    dirs = sorted(((c.out_dir.resolve(), c) for c in cells), key=lambda x: str(x[0]))
    for (a, ca), (b, cb) in zip(dirs, dirs[1:]):
        if a == b or b.is_relative_to(a):
            raise ValueError(f"profile file {prof.path}: cells {ca.number} ({ca.label}) and {cb.number} ({cb.label}) "
                             f"would write into the same folder {a}: give the notebooks different out_dir values")


def select(cells: list[MatrixCell], only=None, model: str | None = None, benchmark: str | None = None,
           cell: int | None = None) -> list[MatrixCell]:
    """The cells a command runs: one notebook or a comma-separated list (`only`), one model (its name in the
    profile), one benchmark (registry or paper name), or one cell by number. Cells without the filtered axis
    are left out, except those that run once (the aggregated tables), which a filtered run still refreshes."""
    out = list(cells)
    if only:
        names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
        present = sorted({c.notebook for c in cells}, key=NOTEBOOKS.index)
        for n in names:
            if n not in present:
                raise ValueError(f"unknown notebook {n!r}{_closest(n, present)}; choose one of {tuple(present)}")
        out = [c for c in out if c.notebook in names]
    if model is not None:
        known = list(dict.fromkeys(c.model for c in cells if c.model))
        match = [m for m in known if m == model] or [m for m in known if m.lower() == str(model).lower()]
        if not match:
            raise ValueError(f"--model {model!r} is not a model of the profile{_closest(model, known)}; its models: "
                             f"{known}")
        out = [c for c in out if c.model == match[0] or c.once]
    if benchmark is not None:
        from lostattn.tasks.registry import get_benchmark

        known = list(dict.fromkeys(c.benchmark for c in cells if c.benchmark))
        try:
            name = get_benchmark(benchmark).name
        except ValueError:
            name = benchmark
        if name not in known:
            raise ValueError(f"--benchmark {benchmark!r} is not a benchmark of the profile{_closest(benchmark, known)}"
                             f"; its benchmarks: {known}")
        out = [c for c in out if c.benchmark == name or c.once]
    if cell is not None:
        if not any(c.number == cell for c in cells):
            raise ValueError(f"--cell {cell} is not in the plan, whose cells are numbered 1 to {len(cells)}; see "
                             f"`lostattn reproduce --plan`")
        out = [c for c in out if c.number == cell]
        if not out:
            raise ValueError(f"--cell {cell} is left out by the other options (--only/--model/--benchmark); give "
                             f"--cell alone")
    return out
