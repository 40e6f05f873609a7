"""The reproduction pipeline: run every notebook of a profile with papermill, skip what did not change, build the
book from the executed notebooks.

A profile (profiles/<name>.yaml) gives parameters shared by all notebooks and per-notebook overrides. Each
executed notebook lands in results/<profile>/notebooks/, its CSVs and figures in results/<profile>/<notebook>/.
A notebook is skipped when its cache key -- the notebook file, its parameters, the package's source, and the
data it reads (embedded model, benchmark definition, paper tables, reference values) -- equals the one stored
after its last successful run. A notebook whose key changed starts from an empty output folder; one interrupted
with the same key resumes (the harness skips finished samples). A failing notebook stops the run with its cell's
error; what finished before it is kept.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from .provenance import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PROFILE_DIR = REPO_ROOT / "profiles"
RESULTS_DIR = REPO_ROOT / "results"
# In reading order; each one's outputs go to results/<profile>/<name>/.
NOTEBOOKS = (
    "01_embedded_model",
    "10_table1_rid_mixig",
    "11_layer_curves",
    "12_token_scope",
    "20_table2_sap",
    "21_sap_sweeps",
)
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


def load_profile(profile: str, config: str | Path | None = None) -> dict:
    path = Path(config) if config else PROFILE_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no profile file {path}; known profiles: {known}")
    data = yaml.safe_load(path.read_text()) or {}
    return {"common": data.get("common", {}), "notebooks": data.get("notebooks", {}) or {}}


def notebook_parameters(profile: str, name: str, prof: dict) -> dict:
    params = {"profile": profile, "out_dir": str(RESULTS_DIR / profile / name)}
    params.update(prof["common"])
    params.update(prof["notebooks"].get(name, {}) or {})
    return params


def cache_key(name: str, params: dict) -> str:
    h = hashlib.sha256()
    h.update((NOTEBOOK_DIR / f"{name}.ipynb").read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    _hash_paths(h, ["lostattn"])
    _hash_paths(h, DATA_INPUTS)
    return h.hexdigest()


def run_notebook(name: str, profile: str, params: dict, out_nb: Path) -> None:
    import papermill as pm

    out_nb.parent.mkdir(parents=True, exist_ok=True)
    Path(params["out_dir"]).mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out_nb), parameters=params,
                        kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=False, log_output=False)


def reproduce(profile: str = "tiny", only: str | None = None, force: bool = False, config: str | None = None,
              build_book: bool = True) -> int:
    prof = load_profile(profile, config)
    names = NOTEBOOKS
    if only:
        if only not in NOTEBOOKS:
            raise ValueError(f"unknown notebook {only!r}; choose one of {NOTEBOOKS}")
        names = (only,)
    out_root = RESULTS_DIR / profile
    ran = 0
    for name in names:
        params = notebook_parameters(profile, name, prof)
        key = cache_key(name, params)
        out_nb = out_root / "notebooks" / f"{name}.ipynb"
        key_file = out_root / "notebooks" / f"{name}.cachekey"
        if not force and out_nb.is_file() and key_file.is_file() and key_file.read_text() == key:
            print(f"[{profile}] {name}: up to date, skipped")
            continue
        out_dir = Path(params["out_dir"])
        run_key = out_dir / ".runkey"
        if out_dir.is_dir() and not (run_key.is_file() and run_key.read_text() == key):
            shutil.rmtree(out_dir)  # results of other inputs or code: never resumed from
        out_dir.mkdir(parents=True, exist_ok=True)
        run_key.write_text(key)  # an interrupted run with the same key resumes from what it finished
        print(f"[{profile}] {name}: running ...", flush=True)
        t = time.perf_counter()
        try:
            run_notebook(name, profile, params, out_nb)
        except Exception as err:  # papermill's error carries the failing cell's traceback
            key_file.unlink(missing_ok=True)
            print(f"[{profile}] {name}: FAILED after {time.perf_counter() - t:.0f}s; the partly executed notebook "
                  f"is {out_nb}\n{err}", file=sys.stderr)
            return 1
        key_file.write_text(key)
        ran += 1
        print(f"[{profile}] {name}: done in {time.perf_counter() - t:.0f}s")
    if ran == 0:
        print(f"[{profile}] nothing changed: no notebook was run")
    if build_book:
        from .book import build_book_html

        return build_book_html(profile, rebuild=ran > 0)
    return 0
