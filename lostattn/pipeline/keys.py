"""Cache keys of the plan's cells: a cell is skipped when its key equals the one stored after its last successful run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lostattn.pipeline.plan import MatrixCell, _local
from lostattn.pipeline import profiles
from lostattn.provenance import REPO_ROOT, file_fingerprint

DATA_INPUTS = ("data/embedded_model", "data/synthetic", "data/paper", "tests/reference")

def _hash_paths(h, paths) -> None:
    for p in paths:
        p = REPO_ROOT / p if not Path(p).is_absolute() else Path(p)
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else ([p] if p.is_file() else [])
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(REPO_ROOT)).encode())
            h.update(f.read_bytes())


class CacheKeys:
    """Cache keys of a plan's cells; the shared part (package source, data inputs) and each model's and benchmark
    file's fingerprint are computed once."""

    def __init__(self, cells: list[MatrixCell]):
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

    def key(self, cell: MatrixCell) -> str:
        h = hashlib.sha256()
        h.update((profiles.NOTEBOOK_DIR / f"{cell.notebook}.ipynb").read_bytes())
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


def cache_key(cell: MatrixCell, cells: list[MatrixCell] | None = None) -> str:
    """The cache key of one cell (see the module's docstring)."""
    return CacheKeys(cells or [cell]).key(cell)


def up_to_date(cell: MatrixCell, key: str) -> bool:
    return cell.out_nb.is_file() and cell.key_file.is_file() and cell.key_file.read_text() == key
