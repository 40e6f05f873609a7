"""Executing one cell's notebook with papermill, with a progress line per code cell."""
from __future__ import annotations

import ast
import os
import re
import sys
import time
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


def _code_cell_label(source: str, width: int = 60) -> str:
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


class NotebookProgress:
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
        self.out.write(f"    [{self.k}/{self.total}] {_code_cell_label(cell.source)} ")
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
