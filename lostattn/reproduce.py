"""The reproduction pipeline: a profile's matrix of models × benchmarks × notebooks, run cell by cell with papermill,
finished cells skipped, interrupted ones resumed, then the book built from the executed notebooks.

A profile (profiles/<name>.yaml, or any file given with --config) declares

- `common`: notebook parameters shared by every cell (device, dtype, seed, batch_size, ...);
- `models`: a list of {name, path, <parameters>}; `name` is how the paper writes the model (the join key with
  data/paper/table2.csv), `path` the local checkpoint folder (or 'embedded'); other keys are notebook parameters
  for that model's cells (e.g. `reasoning: true`);
- `benchmarks`: a list of {name, data, split, samples_per_family, <parameters>}; `name` is a benchmark of
  `lostattn.tasks.registry`;
- `conditions`: the SAP modes of Table 2 (the `modes` parameter of the notebooks that take it);
- `notebooks`: per notebook, parameters that override the shared ones, `over` (the axes it runs over: model,
  benchmark, both, or none; by default those it has parameters for), and `book` (which cell the book shows);
- `run`: the notebooks to run (default: all, in reading order); `book`: {model, benchmark} of the cell each page of
  the book shows (default: the first).

Parameters go to a notebook only if its parameters cell declares them; a key no notebook declares is refused. The
more specific source wins: common, then the benchmark's entry, then the notebook's section, then the model's entry.

Every (model × benchmark × notebook) combination is a cell, numbered in a fixed order (model, then benchmark, then
notebook; notebooks that run once, such as the aggregated tables, last), so `--plan` prints the commands a cluster
runs as an array (`--cell N`). The book's cell of each notebook lands where `lostattn.book` reads it
(results/<profile>/notebooks/<notebook>.ipynb, outputs in results/<profile>/<notebook>/); every other cell under
results/<profile>/cells/<model>/<benchmark>/. A cell is skipped when its cache key -- the notebook, its
parameters, the package's source, the data it reads (embedded model, benchmark definition, paper tables, references,
and the model folder's and benchmark file's fingerprints) -- equals the one stored after its last successful run.
A cell whose key changed starts from an empty output folder; one interrupted with the same key resumes (the harness
skips finished samples). A failing cell does not stop the others: every failure is listed at the end.

Output folders carry a marker (`.lostattn.json`) listing the files the project wrote there. Only those files are
ever removed; a folder holding anything else is refused, never emptied.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


from .profiles import (NOTEBOOK_DIR, NOTEBOOKS, SECTION_KEYS, Profile, _closest, _over, _slug, load_profile,
                       notebook_parameters)
from .provenance import REPO_ROOT, file_fingerprint

RESULTS_DIR = REPO_ROOT / "results"
DATA_INPUTS = ("data/embedded_model", "data/synthetic", "data/paper", "tests/reference")
MARKER = ".lostattn.json"
_LEGACY_MARKER = ".runkey"  # what earlier versions left in the folders they created
MTIME_SLACK_S = 2.0  # file systems with coarse timestamps, clocks of other nodes


# ---- the plan ------------------------------------------------------------------------------------------------------
def _local(path: str) -> Path:
    """A path from a profile as the notebooks read it: relative ones from the repository root (the kernels' cwd)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


@dataclass
class Cell:
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
        from .tasks.registry import display_name

        parts = [p for p in (self.model, display_name(self.benchmark) if self.benchmark else None) if p]
        return (" × ".join(parts) + " · " if parts else "") + self.notebook


def plan(prof: Profile, results: str | Path | None = None) -> list[Cell]:
    """Every cell of the profile, numbered from 1 in the fixed order (model, benchmark, notebook; once-only
    notebooks last)."""
    results = Path(results) if results else RESULTS_DIR / prof.name
    common = dict(prof.common)
    if prof.conditions is not None:
        common["modes"] = list(prof.conditions)
    specs: list[tuple[str, dict | None, dict | None]] = []
    seen = set()

    def pick(nb, axis, loop_value, sec):
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

    for m in prof.models:
        for b in prof.benchmarks:
            for nb in prof.run:
                sec = prof.sections.get(nb, {})
                if not _over(nb, sec):
                    continue
                me, be = pick(nb, "model", m, sec), pick(nb, "benchmark", b, sec)
                ident = (nb, me["name"] if me else None, be["name"] if be else None)
                if ident not in seen:
                    seen.add(ident)
                    specs.append((nb, me, be))
    for nb in prof.run:
        sec = prof.sections.get(nb, {})
        if not _over(nb, sec):
            specs.append((nb, pick(nb, "model", prof.models[0], sec), pick(nb, "benchmark", prof.benchmarks[0], sec)))

    per_nb: dict[str, int] = {}
    for nb, _, _ in specs:
        per_nb[nb] = per_nb.get(nb, 0) + 1
    book_at: dict[str, int] = {}  # notebook -> index in specs of its book cell: the first best match
    for j, (nb, me, be) in enumerate(specs):
        want = {**prof.book, **(prof.sections.get(nb, {}).get("book") or {})}
        score = _book_score(me, be, want)
        if nb not in book_at or score > _book_score(specs[book_at[nb]][1], specs[book_at[nb]][2], want):
            book_at[nb] = j
    cells = []
    for i, (nb, me, be) in enumerate(specs, start=1):
        sec = prof.sections.get(nb, {})
        declared = notebook_parameters(nb)
        once = not _over(nb, sec)
        book = book_at[nb] == i - 1
        root = results if (book or once) else results / "cells" / _slug(me["name"] if me else "any") / \
            _slug(be["name"] if be else "any")
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
            out = user if per_nb[nb] == 1 else user / _slug(me["name"] if me else "any") / \
                _slug(be["name"] if be else "any")
        else:
            out = root / nb
        context = {"profile": prof.name, "out_dir": str(out), "results": str(results),
                   "model_name": me["name"] if me else None,
                   "config": str(prof.path) if prof.explicit_config else None}
        params.update({k: v for k, v in context.items() if k in declared})
        params.setdefault("out_dir", str(out))
        cells.append(Cell(i, nb, me["name"] if me else None, be["name"] if be else None, params, root, book, once))
    _refuse_overlaps(cells, prof)
    return cells


def _book_score(model: dict | None, bench: dict | None, want: dict) -> int:
    """How well a cell fits the profile's `book` choice: the model counts more than the benchmark."""
    return sum(w for axis, e, w in (("model", model, 2), ("benchmark", bench, 1))
               if axis in want and e is not None and e["name"] == want[axis])


def _refuse_overlaps(cells: list[Cell], prof: Profile) -> None:
    dirs = sorted(((c.out_dir.resolve(), c) for c in cells), key=lambda x: str(x[0]))
    for (a, ca), (b, cb) in zip(dirs, dirs[1:]):
        if a == b or b.is_relative_to(a):
            raise ValueError(f"profile file {prof.path}: cells {ca.number} ({ca.label}) and {cb.number} ({cb.label}) "
                             f"would write into the same folder {a}: give the notebooks different out_dir values")


def select(cells: list[Cell], only=None, model: str | None = None, benchmark: str | None = None,
           cell: int | None = None) -> list[Cell]:
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
        from .tasks.registry import get_benchmark

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


# ---- cache keys --------------------------------------------------------------------------------------------------
def _hash_paths(h, paths) -> None:
    for p in paths:
        p = REPO_ROOT / p if not Path(p).is_absolute() else Path(p)
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else ([p] if p.is_file() else [])
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(REPO_ROOT)).encode())
            h.update(f.read_bytes())


class _Keys:
    """Cache keys of a plan's cells; the shared part (package source, data inputs) and each model's and benchmark
    file's fingerprint are computed once."""

    def __init__(self, cells: list[Cell]):
        self.cells = cells
        h = hashlib.sha256()
        _hash_paths(h, ["lostattn"])
        _hash_paths(h, DATA_INPUTS)
        self.base = h.hexdigest()
        self._ids: dict[str, str | None] = {}

    def _identity(self, value) -> str | None:
        """A model folder's or benchmark file's fingerprint (None for what is not a local path: 'embedded', whose
        folder is a data input, or a hub id)."""
        if not isinstance(value, str) or not value:
            return None
        if value not in self._ids:
            p = _local(value)
            self._ids[value] = f"{p.name}:{file_fingerprint(p)}" if p.exists() else None
        return self._ids[value]

    def key(self, cell: Cell) -> str:
        h = hashlib.sha256()
        h.update((NOTEBOOK_DIR / f"{cell.notebook}.ipynb").read_bytes())
        h.update(json.dumps(cell.params, sort_keys=True, default=str).encode())
        h.update(self.base.encode())
        for k in ("model", "data"):
            h.update(f"{k}={self._identity(cell.params.get(k))}".encode())
        if cell.once:  # the aggregated tables follow every other cell's finished outputs
            for other in self.cells:
                if other.once:
                    continue
                h.update(str(other.number).encode())
                if other.key_file.is_file():
                    h.update(other.key_file.read_bytes())
                if other.out_dir.is_dir():
                    for f in sorted(other.out_dir.glob("*.csv")) + sorted(other.out_dir.glob("*.meta.json")):
                        h.update(f.name.encode())
                        h.update(f.read_bytes())
        return h.hexdigest()


def cache_key(cell: Cell, cells: list[Cell] | None = None) -> str:
    """The cache key of one cell (see the module's docstring)."""
    return _Keys(cells or [cell]).key(cell)


def up_to_date(cell: Cell, key: str) -> bool:
    return cell.out_nb.is_file() and cell.key_file.is_file() and cell.key_file.read_text() == key


# ---- output folders: only what the project wrote is ever removed ------------------------------------------------
def _files(folder: Path) -> list[str]:
    skip = {MARKER, MARKER + ".tmp", _LEGACY_MARKER}
    return sorted(str(f.relative_to(folder)) for f in folder.rglob("*")
                  if (f.is_file() or f.is_symlink()) and f.name not in skip)


def read_marker(folder: Path) -> dict | None:
    """The project's marker of an output folder (None when the folder has none or it is unreadable)."""
    try:
        m = json.loads((Path(folder) / MARKER).read_text())
        return m if isinstance(m, dict) and m.get("written_by") == "lostattn" else None
    except (OSError, ValueError):
        return None


def _write_marker(folder: Path, marker: dict) -> None:
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, folder / MARKER)


def _ownership(folder: Path) -> tuple[dict | None, list[str], list[str]]:
    """(marker, files the project wrote, files it did not) of an existing folder. The marker lists what each run
    wrote (after every notebook cell and at its end); a run killed before it could list its last files leaves its
    state 'running', and then a file newer than that run's start counts as the project's too."""
    marker = read_marker(folder)
    files = _files(folder)
    if marker is None:
        if (folder / _LEGACY_MARKER).is_file():
            return None, files, []
        return None, [], files
    listed = set(marker.get("files", []))
    killed = marker.get("state") == "running"
    since = float(marker.get("run_started", float("inf"))) - MTIME_SLACK_S if killed else float("inf")
    ours, foreign = [], []
    for f in files:
        p = folder / f
        (ours if f in listed or p.lstat().st_mtime >= since else foreign).append(f)
    return marker, ours, foreign


def check_out_dir(cell: Cell, key: str) -> None:
    """Refuse to run a cell whose output folder would have to be emptied (its key changed) while it holds files the
    project did not write."""
    out = cell.out_dir
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} of {cell.notebook} (cell {cell.number}) is a file, not a folder: set out_dir "
                         f"to a folder in the profile")
    if not out.is_dir():
        return
    marker, _, foreign = _ownership(out)
    if marker is not None and marker.get("key") == key:
        return  # resumed, nothing removed
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"out_dir {out} of {cell.notebook} (cell {cell.number}, {cell.label}) holds files lostattn "
                         f"did not write ({shown}); reproduce would have to empty it to start this cell afresh and "
                         f"never deletes files it did not create. Point out_dir at a new or empty folder in the "
                         f"profile, or move those files out of it")


def prepare_out_dir(cell: Cell, key: str) -> dict:
    """Create, resume or empty a cell's output folder (removing only the project's files); returns its marker."""
    out = cell.out_dir
    check_out_dir(cell, key)
    now = time.time()
    if out.is_dir():
        marker, ours, _ = _ownership(out)
        if marker is not None and marker.get("key") == key:
            marker["files"] = sorted(set(marker.get("files", [])) | set(ours))
        else:  # results of other inputs or code: never resumed from
            for f in sorted(ours, key=lambda s: -s.count("/")):
                (out / f).unlink(missing_ok=True)
            for d in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                if not any(d.iterdir()):
                    d.rmdir()
            (out / _LEGACY_MARKER).unlink(missing_ok=True)
            marker = {"files": [], "seconds": (marker or {}).get("seconds")}
    else:
        out.mkdir(parents=True)
        marker = {"files": []}
    marker.update({"written_by": "lostattn", "key": key, "state": "running", "run_started": now,
                   "cell": {"number": cell.number, "notebook": cell.notebook, "model": cell.model,
                            "benchmark": cell.benchmark}})
    _write_marker(out, marker)
    return marker


def _update_marker(cell: Cell, marker: dict, **changes) -> None:
    out = cell.out_dir
    if not out.is_dir():
        return
    since = float(marker["run_started"]) - MTIME_SLACK_S
    new = {f for f in _files(out) if (out / f).lstat().st_mtime >= since}
    marker["files"] = sorted(set(marker.get("files", [])) | new)
    marker.update(changes)
    _write_marker(out, marker)


# ---- running a notebook ------------------------------------------------------------------------------------------
def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _cell_label(source: str, width: int = 60) -> str:
    """What a progress line names a code cell by: its papermill description, else its first assignment (the
    work it does, after the imports), else its first statement."""
    if "papermill_description=" in source:
        return source.split("papermill_description=")[1].split()[0]
    lines = source.splitlines()
    try:
        body = [n for n in ast.parse(source).body if not isinstance(n, (ast.Import, ast.ImportFrom))]
        node = next((n for n in body if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))),
                    body[0] if body else None)
        text = lines[node.lineno - 1].strip() if node is not None else "(imports)"
    except SyntaxError:  # IPython syntax (magics): the first line of code
        text = next((ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith(("#", "%"))), "")
    return text if len(text) <= width else text[: width - 1] + "…"


class CellProgress:
    """One line per code cell of a running notebook: its number, what it runs, its time."""

    def __init__(self, out=None, on_cell_done=None):
        self.out = out or sys.stdout
        self.on_cell_done = on_cell_done
        self.total = 0
        self.k = 0
        self._t = None

    @staticmethod
    def _counted(cell) -> bool:
        tags = set(cell.get("metadata", {}).get("tags", []))
        return cell.get("cell_type") == "code" and not tags & {"parameters", "injected-parameters"}

    def begin(self, nb) -> None:
        self.total = sum(self._counted(c) for c in nb.cells)
        self.k = 0

    def start(self, cell) -> None:
        if not self._counted(cell):
            return
        self.k += 1
        self._t = time.perf_counter()
        self.out.write(f"    [{self.k}/{self.total}] {_cell_label(cell.source)} ")
        self.out.flush()

    def end(self, cell, failed: bool = False) -> None:
        if not self._counted(cell) or self._t is None:
            return
        self.out.write(f"... {'FAILED after ' if failed else ''}{time.perf_counter() - self._t:.1f}s\n")
        self.out.flush()
        self._t = None
        if self.on_cell_done:
            self.on_cell_done()


def _engine():
    """A papermill engine that reports each code cell to the `progress` it is given."""
    from papermill.engines import NBClientEngine, papermill_engines

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, progress=None, **kwargs):
            if progress is not None:
                start, complete, exception = nb_man.cell_start, nb_man.cell_complete, nb_man.cell_exception
                failed = set()

                def cell_start(cell, cell_index=None, **kw):
                    start(cell, cell_index, **kw)
                    progress.start(cell)

                def cell_exception(cell, cell_index=None, **kw):
                    failed.add(cell_index)
                    exception(cell, cell_index, **kw)

                def cell_complete(cell, cell_index=None, **kw):
                    complete(cell, cell_index, **kw)
                    progress.end(cell, failed=cell_index in failed)

                nb_man.cell_start, nb_man.cell_complete, nb_man.cell_exception = (cell_start, cell_complete,
                                                                                  cell_exception)
                progress.begin(nb_man.nb)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register("lostattn", ProgressEngine)
    return "lostattn"


def _kernel_config():
    """Our kernels talk to us over CurveZMQ-encrypted sockets (jupyter_client provisions the keys): ipykernel then
    has no reason to warn that it runs over TCP without encryption."""
    import zmq
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    c = Config()
    if zmq.has("curve") and "transport_encryption" in KernelManager.class_trait_names():
        c.KernelManager.transport_encryption = "auto"
    return c


@contextmanager
def _kernel_environment():
    """The environment our kernels start with: reproduce decides every output folder, so the test suite's
    redirection of notebook outputs (LOSTATTN_OUT_ROOT) must not reach them."""
    saved = os.environ.pop("LOSTATTN_OUT_ROOT", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["LOSTATTN_OUT_ROOT"] = saved


def run_notebook(cell: Cell, progress: CellProgress | None = None) -> None:
    """Execute one cell's notebook with papermill into `cell.out_nb` (kept, partly executed, when a cell fails)."""
    import papermill as pm

    cell.out_nb.parent.mkdir(parents=True, exist_ok=True)
    cell.out_dir.mkdir(parents=True, exist_ok=True)
    with _kernel_environment():
        pm.execute_notebook(str(NOTEBOOK_DIR / f"{cell.notebook}.ipynb"), str(cell.out_nb), parameters=cell.params,
                            kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=False, log_output=False,
                            engine_name=_engine(), config=_kernel_config(), progress=progress)


def _failure_text(err: BaseException) -> str:
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:  # papermill's error for a failing notebook cell
        count = getattr(err, "exec_count", None)
        text = f"{ename}: {evalue}" + (f" (in notebook cell [{count}])" if count else "")
    else:
        text = f"{type(err).__name__}: {err}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(text.split()))
    return text if len(text) <= 400 else text[:399] + "…"


# ---- the command -------------------------------------------------------------------------------------------------
def _command(prof: Profile, number: int) -> str:
    cmd = ["lostattn", "reproduce", "--profile", prof.name]
    if prof.explicit_config:
        cmd += ["--config", str(prof.path)]
    return " ".join(shlex.quote(c) for c in cmd + ["--cell", str(number)])


def print_plan(prof: Profile, cells: list[Cell], shown: list[Cell], keys: _Keys, out=None) -> None:
    """The numbered cells, whether each is up to date, and the command that runs each one."""
    out = out or sys.stdout
    models = list(dict.fromkeys(c.model for c in cells if c.model))
    benches = list(dict.fromkeys(c.benchmark for c in cells if c.benchmark))
    print(f"profile {prof.name} ({prof.path}): {len(models)} model(s) × {len(benches)} benchmark(s), "
          f"{len(cells)} cells", file=out)
    width = max(len(c.label) for c in shown) if shown else 0
    for c in shown:
        state = "up to date" if up_to_date(c, keys.key(c)) else "to run"
        print(f"{c.number:>4}  {c.label:<{width}}  {state:<10}  {_command(prof, c.number)}", file=out)
    last = [c.number for c in cells if c.once]
    array = [c.number for c in cells if not c.once]
    if array:
        span = f"{array[0]}-{array[-1]}" if array == list(range(array[0], array[-1] + 1)) else ",".join(map(str, array))
        run_all = _command(prof, 0).rsplit(" ", 1)[0]
        print(f"\nOn a cluster, one task per cell, then the aggregated tables once all have ended (SLURM):\n"
              f"  jid=$(sbatch --parsable --array={span} --wrap '{run_all} $SLURM_ARRAY_TASK_ID')", file=out)
        for n in last:
            print(f"  sbatch --dependency=afterany:$jid --wrap '{_command(prof, n)}'", file=out)
    for w in prof.warnings:
        print(f"note: {w}", file=out)


def _estimate(cell: Cell, done: dict[str, list[float]]) -> float | None:
    m = read_marker(cell.out_dir) if cell.out_dir.is_dir() else None
    if m and m.get("seconds"):
        return float(m["seconds"])
    if done.get(cell.notebook):
        return sum(done[cell.notebook]) / len(done[cell.notebook])
    allv = [v for vs in done.values() for v in vs]
    return sum(allv) / len(allv) if allv else None


def _bar(done: int, total: int, width: int = 20) -> str:
    fill = int(round(width * done / total)) if total else width
    return "[" + "#" * fill + "." * (width - fill) + "]"


def reproduce(profile: str = "tiny", only=None, force: bool = False, config: str | None = None,
              build_book: bool = True, plan_only: bool = False, cell: int | None = None, model: str | None = None,
              benchmark: str | None = None) -> int:
    """Run the profile's cells (all, or those the options select), skipping finished ones and going on past
    failures; then build the book when the whole profile ran. Returns the exit status (1 when a cell failed)."""
    prof = load_profile(profile, config)
    cells = plan(prof)
    chosen = select(cells, only, model, benchmark, cell)
    keys = _Keys(cells)
    if plan_only:
        print_plan(prof, cells, chosen, keys)
        return 0
    tag = f"[{prof.name}]"
    # Decide up front what runs, and refuse before anything runs when an output folder holds files not ours.
    pending = []
    for c in chosen:
        if c.once:
            pending.append(c)  # its key follows the other cells: decided when its turn comes
            continue
        k = keys.key(c)
        if force or not up_to_date(c, k):
            check_out_dir(c, k)
            pending.append(c)
    skipped = len(chosen) - len(pending)
    if skipped:
        print(f"{tag} {skipped} of {len(chosen)} cells up to date, skipped" if len(chosen) > 1 else
              f"{tag} {chosen[0].notebook}: up to date, skipped")
    for w in prof.warnings:
        print(f"{tag} note: {w}")
    durations: dict[str, list[float]] = {}
    failures: list[tuple[Cell, str, Path | None]] = []
    ran = 0
    t_all = time.perf_counter()
    for i, c in enumerate(pending):
        key = keys.key(c)
        if c.once and not force and up_to_date(c, key):
            print(f"{tag} {c.notebook}: up to date, skipped")
            continue
        ests = [_estimate(x, durations) for x in pending[i:]]
        known = [e for e in ests if e is not None]
        eta = (sum(known) + (len(ests) - len(known)) * (sum(known) / len(known))) if known else None
        print(f"{tag} cell {c.number}/{len(cells)} {c.label}  {_bar(i, len(pending))} {i}/{len(pending)} run, "
              f"{_hms(time.perf_counter() - t_all)} elapsed, ETA {_hms(eta)}", flush=True)
        failure = _run_cell(c, key)
        if failure is None:
            ran += 1
            secs = read_marker(c.out_dir).get("seconds") if read_marker(c.out_dir) else None
            durations.setdefault(c.notebook, []).append(secs or 0.0)
            print(f"{tag} cell {c.number} {c.notebook}: done in {_hms(secs)}", flush=True)
        else:
            failures.append((c, *failure))
            print(f"{tag} cell {c.number} {c.label}: FAILED: {failure[0]}", file=sys.stderr, flush=True)
    if ran == 0 and not failures:
        print(f"{tag} nothing changed: no notebook was run")
    if failures:
        print(f"{tag} {len(failures)} of {len(pending)} cells FAILED (the others ran):", file=sys.stderr)
        for c, text, nb in failures:
            print(f"  {c.number:>4}  {c.label}: FAILED: {text}", file=sys.stderr)
            if nb is not None:
                print(f"        partly executed notebook: {nb}", file=sys.stderr)
            print(f"        rerun it alone: {_command(prof, c.number)}", file=sys.stderr)
        return 1
    whole = not (only or model or benchmark or cell is not None)
    if build_book and (whole or only):
        if set(prof.run) != set(NOTEBOOKS):
            print(f"{tag} book not built: the profile runs {', '.join(prof.run)}, not every page of the book")
            return 0
        from .book import build_book_html

        return build_book_html(prof.name, rebuild=ran > 0)
    return 0


def _run_cell(cell: Cell, key: str) -> tuple[str, Path | None] | None:
    """Run one cell under its lock; None when it succeeded, else (what failed, the partly executed notebook)."""
    from .records import Busy, exclusive

    cell.key_file.parent.mkdir(parents=True, exist_ok=True)
    lock_file = cell.key_file.with_suffix(".lock")
    try:
        with exclusive(lock_file, f"another process is running this cell (it holds {lock_file}); let it finish"):
            data = cell.params.get("data")
            if data and not _local(str(data)).exists():
                return (f"benchmark file {data} does not exist (benchmark {cell.benchmark}); fix its data: path in "
                        f"the profile", None)
            cell.key_file.unlink(missing_ok=True)  # not finished until it succeeds
            try:
                marker = prepare_out_dir(cell, key)
            except ValueError as err:  # a folder holding files not ours: named, nothing removed
                return (str(err), None)
            progress = CellProgress(on_cell_done=lambda: _update_marker(cell, marker))
            t = time.perf_counter()
            try:
                run_notebook(cell, progress)
            except KeyboardInterrupt:
                _update_marker(cell, marker, state="interrupted")
                raise
            except Exception as err:  # noqa: BLE001 - papermill's error carries the failing cell's traceback
                _update_marker(cell, marker, state="failed", error=_failure_text(err))
                return (_failure_text(err), cell.out_nb if cell.out_nb.is_file() else None)
            _update_marker(cell, marker, state="done", seconds=round(time.perf_counter() - t, 1))
            cell.key_file.write_text(key)
            return None
    except Busy as err:
        return (str(err), None)
