"""Executing one cell's notebook with papermill, with a progress line per code cell."""
from __future__ import annotations

import ast
import os
import re
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

from lostattn.pipeline.plan import MatrixCell
from lostattn.pipeline import profiles
from lostattn.provenance import REPO_ROOT

def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# Comment lines that say how a cell is run, not what it does.
_NOT_A_LABEL = re.compile(r"^#\s*(papermill|parameters\b|noqa|type:|pragma|-\*-|NBVAL_\w+$)", re.I)
# Calls that show or set up rather than compute: not what names a cell.
_PLUMBING_CALLS = frozenset({"display", "print", "filterwarnings", "use", "Markdown", "Image", "table", "close",
                             "show", "glue", "str", "int", "float", "len", "list", "dict", "set", "sorted", "range",
                             "zip", "enumerate", "format", "join", "get", "items", "append"})


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _first_statement(source: str) -> str:
    """The cell's first assignment after its imports, else its first statement: what names a cell that neither
    a comment nor a heading does."""
    lines = source.splitlines()
    try:
        body = [n for n in ast.parse(source).body if not isinstance(n, (ast.Import, ast.ImportFrom))]
        node = next((n for n in body if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))),
                    body[0] if body else None)
        return lines[node.lineno - 1].strip() if node is not None else "(imports)"
    except SyntaxError:  # IPython syntax (magics): the first line of code
        return next((ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith(("#", "%"))), "")


def _code_cell_label(source: str, heading: str | None = None, width: int = 60) -> str:
    """What a progress line names a code cell by, saying what it does: its papermill description, else its first
    comment line, else the heading of the notebook section it sits in (`heading`), else its first statement."""
    if "papermill_description=" in source:
        return _shorten(source.split("papermill_description=")[1].split()[0], width)
    for line in source.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#") and not _NOT_A_LABEL.match(line) and line.lstrip("# ").strip():
            return _shorten(line.lstrip("# ").strip(), width)
        break
    return _shorten(heading or _first_statement(source), width)


def _main_call(source: str) -> str | None:
    """The first function the cell calls that computes something (not a display or set-up call), by name."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if name and name not in _PLUMBING_CALLS and not name.startswith("_"):
                    return name
    return None


def _heading(markdown: str) -> str | None:
    """The last heading of a markdown cell (a section's title), without its #'s and emphasis marks."""
    found = [ln.lstrip("#").strip() for ln in markdown.splitlines() if re.match(r"^#{1,6}\s", ln)]
    return found[-1].replace("*", "").replace("`", "") if found else None


class NotebookProgress:
    """One line per code cell of a running notebook: its number, what it does (`_code_cell_label`) and its time;
    while a cell runs longer than `heartbeat` seconds, a line every `heartbeat` seconds with the time so far and,
    when an earlier run timed this cell (`expected`, seconds per code cell), how long it took then."""

    def __init__(self, out=None, on_cell_done=None, expected: list[float] | None = None, heartbeat: float = 60.0):
        self.out = out or sys.stdout
        self.on_cell_done = on_cell_done
        self.expected = list(expected or [])
        self.heartbeat = heartbeat
        self.total = 0
        self.k = 0
        self.seconds: list[float] = []  # each finished code cell's duration, in order
        self._labels: dict[str, str] = {}
        self._t = None
        self._stop = None
        self._beat_thread = None
        self._beats = 0
        self._lock = threading.Lock()

    @staticmethod
    def _counted(cell) -> bool:
        tags = set(cell.get("metadata", {}).get("tags", []))
        return cell.get("cell_type") == "code" and not tags & {"parameters", "injected-parameters"}

    def begin(self, nb) -> None:
        self.total = sum(self._counted(c) for c in nb.cells)
        self.k = 0
        self.seconds = []
        heading = None
        under: dict[str | None, list[str]] = defaultdict(list)
        for c in nb.cells:
            if c.get("cell_type") == "markdown":
                heading = _heading(c.source) or heading
            elif self._counted(c):
                self._labels.setdefault(c.source, _code_cell_label(c.source, heading))
                under[heading].append(c.source)
        # Cells that share a heading, and have no comment line of their own, are told apart by what they call.
        for head, sources in under.items():
            if head is None or len(sources) < 2:
                continue
            for src in sources:
                call = _main_call(src)
                if self._labels[src] == _shorten(head, 60) and call:
                    self._labels[src] = f"{_shorten(head, 44)} ({call})"

    def _write(self, text: str) -> None:
        with self._lock:
            self.out.write(text)
            self.out.flush()

    def _beat(self, stop: threading.Event, t0: float, k: int) -> None:
        while not stop.wait(self.heartbeat):
            self._beats += 1
            before = self.expected[k - 1] if k - 1 < len(self.expected) else None
            then = f" (took {_hms(before)} last run)" if before else ""
            self._write(("\n" if self._beats == 1 else "") + f"        still running: {_hms(time.perf_counter() - t0)}"
                        f"{then}\n")

    def start(self, cell) -> None:
        if not self._counted(cell):
            return
        self.k += 1
        self._t = time.perf_counter()
        label = self._labels.get(cell.source) or _code_cell_label(cell.source)
        self._write(f"    [{self.k}/{self.total}] {label} ")
        self._beats = 0
        if self.heartbeat and self.heartbeat > 0:
            self._stop = threading.Event()
            self._beat_thread = threading.Thread(target=self._beat, args=(self._stop, self._t, self.k), daemon=True)
            self._beat_thread.start()

    def end(self, cell, failed: bool = False) -> None:
        if not self._counted(cell) or self._t is None:
            return
        if self._stop is not None:
            self._stop.set()
            self._beat_thread.join()
            self._stop = self._beat_thread = None
        took = time.perf_counter() - self._t
        self.seconds.append(round(took, 1))
        lead = f"    [{self.k}/{self.total}] " if self._beats else ""
        self._write(f"{lead}... {'FAILED after ' if failed else ''}{took:.1f}s\n")
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


def run_notebook(cell: MatrixCell, progress: NotebookProgress | None = None) -> None:
    """Execute one cell's notebook with papermill into `cell.out_nb` (kept, partly executed, when a cell fails)."""
    import papermill as pm

    cell.out_nb.parent.mkdir(parents=True, exist_ok=True)
    cell.out_dir.mkdir(parents=True, exist_ok=True)
    with _kernel_environment():
        pm.execute_notebook(str(profiles.NOTEBOOK_DIR / f"{cell.notebook}.ipynb"), str(cell.out_nb), parameters=cell.params,
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
