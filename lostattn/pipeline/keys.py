"""Cache keys of the plan's cells: a cell is skipped when its key equals the one stored after its last successful run.

A cell's key covers every input that changes its outputs:
- the notebook's bytes and the cell's parameters;
- the code it runs: the source of every lostattn module the notebook imports, followed through the package's
  import graph (grimp; imports inside functions included), with the packages above them (their `__init__`), the
  modules that execute a notebook (`lostattn.pipeline.execute`) and every non-Python file of the package. An edit
  of a module no notebook reaches leaves the key as it was; a notebook that imports in a way that cannot be read
  (`__import__` or importlib with a computed name, exec, eval, runpy, %run) takes the whole package;
- the data inputs (embedded model, synthetic definition, paper tables, references);
- the model folder's fingerprint and the benchmark's content: its file or folder, and every image its samples name
  (`lostattn.tasks.loaders.benchmark_fingerprint`: image bytes, not names);
- for the notebooks that run once (the aggregated tables), the other cells' keys and table files.
"""
from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

from lostattn.pipeline.plan import MatrixCell, _local
from lostattn.pipeline import profiles
from lostattn.provenance import REPO_ROOT, file_fingerprint

DATA_INPUTS = ("data/embedded_model", "data/synthetic", "data/paper", "tests/reference")
PACKAGE = "lostattn"
PACKAGE_DIR = REPO_ROOT / PACKAGE
# Run every notebook, whatever it imports: how parameters are injected and the kernel started.
ALWAYS = ("lostattn.pipeline.execute",)


def _hash_paths(h, paths) -> None:
    for p in paths:
        p = REPO_ROOT / p if not Path(p).is_absolute() else Path(p)
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else ([p] if p.is_file() else [])
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(REPO_ROOT)).encode())
            h.update(f.read_bytes())


def _code_cells(notebook: str) -> str:
    nb = json.loads((profiles.NOTEBOOK_DIR / f"{notebook}.ipynb").read_text(encoding="utf-8"))
    return "\n".join("".join(c.get("source", [])) for c in nb.get("cells", []) if c.get("cell_type") == "code")


def notebook_imports(notebook: str) -> set[str] | None:
    """The lostattn modules a notebook's code cells import by name (for `from a import b`, also `a.b`; a literal
    `__import__("a.b")` or `importlib.import_module("a.b")` too); None when it may import them in a way that
    cannot be read (such a call with a computed name, exec, eval, runpy, %run, or a cell that does not parse)."""
    src = _code_cells(notebook)
    if any(ln.lstrip().startswith("%run") for ln in src.split("\n")):
        return None
    lines = [ln for ln in src.split("\n") if not ln.lstrip().startswith(("%", "!"))]  # IPython magics, shell
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return None
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
            if any(a.name == "runpy" for a in node.names):
                return None
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "runpy":
                return None
            if node.module.split(".")[0] == PACKAGE:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in ("exec", "eval"):
                return None
            if name in ("__import__", "import_module"):
                arg = node.args[0] if node.args else None
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    return None
                found.add(arg.value)
    return found


def _graph():
    import grimp

    return grimp.build_graph(PACKAGE, cache_dir=None)  # built afresh: an import added since is followed


def imported_modules(roots: set[str]) -> set[str]:
    """`roots` (those that are modules of the package) with every lostattn module they import, directly or
    through others, and every package above each of them (importing a.b.c runs a/__init__ and a/b/__init__)."""
    graph = _graph()
    known = graph.modules
    todo = [m for m in roots if m in known]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += [u for u in graph.find_modules_directly_imported_by(m) if u in known]
    return seen


def _module_file(module: str) -> Path:
    rel = Path(*module.split("."))
    pkg = REPO_ROOT / rel / "__init__.py"
    return pkg if pkg.is_file() else REPO_ROOT / rel.with_suffix(".py")


def code_files(notebook: str) -> list[Path]:
    """The package files a notebook's outputs depend on (see the module's docstring), sorted."""
    roots = notebook_imports(notebook)
    every_py = sorted(f for f in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in f.parts)
    data = sorted(f for f in PACKAGE_DIR.rglob("*") if f.is_file() and f.suffix not in (".py", ".pyc")
                  and "__pycache__" not in f.parts)
    if roots is None:
        return every_py + data
    files = {_module_file(m) for m in imported_modules(roots | set(ALWAYS))}
    return sorted(f for f in files if f.is_file()) + data


class CacheKeys:
    """Cache keys of a plan's cells; the data inputs, each notebook's code and each model's and benchmark's
    fingerprint are computed once."""

    def __init__(self, cells: list[MatrixCell]):
        self.cells = cells
        h = hashlib.sha256()
        _hash_paths(h, DATA_INPUTS)
        self.base = h.hexdigest()
        self._ids: dict[str, str | None] = {}
        self._code: dict[str, str] = {}
        self._benchmarks: dict[tuple, str] = {}

    def code(self, notebook: str) -> str:
        """The digest of the package files `notebook` runs (their paths and bytes)."""
        if notebook not in self._code:
            h = hashlib.sha256()
            _hash_paths(h, code_files(notebook))
            self._code[notebook] = h.hexdigest()
        return self._code[notebook]

    def _identity(self, value) -> str | None:
        """A model folder's or benchmark file's fingerprint (None for what is not a local path: 'embedded', whose
        folder is a data input, or a hub id)."""
        if not isinstance(value, str) or not value:
            return None
        if value not in self._ids:
            p = _local(value)
            self._ids[value] = f"{p.name}:{file_fingerprint(p)}" if p.exists() else None
        return self._ids[value]

    def benchmark(self, params: dict) -> str | None:
        """The content of the benchmark a cell reads (its samples and their images); None without a data file."""
        data = params.get("data")
        if not params.get("benchmark") or not data or not _local(str(data)).exists():
            return None
        ident = (params["benchmark"], str(_local(str(data))), params.get("split") or "test")
        if ident not in self._benchmarks:
            from lostattn.tasks.loaders import benchmark_fingerprint

            self._benchmarks[ident] = benchmark_fingerprint(ident[0], ident[1], split=ident[2])
        return self._benchmarks[ident]

    def key(self, cell: MatrixCell) -> str:
        h = hashlib.sha256()
        h.update((profiles.NOTEBOOK_DIR / f"{cell.notebook}.ipynb").read_bytes())
        h.update(json.dumps(cell.params, sort_keys=True, default=str).encode())
        h.update(self.base.encode())
        h.update(self.code(cell.notebook).encode())
        for k in ("model", "data"):
            h.update(f"{k}={self._identity(cell.params.get(k))}".encode())
        h.update(f"samples={self.benchmark(cell.params)}".encode())
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


def cache_key(cell: MatrixCell, cells: list[MatrixCell] | None = None) -> str:
    """The cache key of one cell (see the module's docstring)."""
    return CacheKeys(cells or [cell]).key(cell)


def up_to_date(cell: MatrixCell, key: str) -> bool:
    return cell.out_nb.is_file() and cell.key_file.is_file() and cell.key_file.read_text() == key
