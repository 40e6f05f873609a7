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
runs as an array (`--cell N`). The book's cell of each notebook lands where `lostattn.pipeline.book` reads it
(results/<profile>/notebooks/<notebook>.ipynb, outputs in results/<profile>/<notebook>/); every other cell under
results/<profile>/cells/<model>/<benchmark>/. A cell is skipped when its cache key -- the notebook, its
parameters, the code it runs (the modules it imports, through the import graph), the data it reads (embedded model,
benchmark definition, paper tables, references, the model folder's fingerprint, the benchmark's samples and the bytes
of every image they name) -- equals the one stored after its last successful run (`lostattn.pipeline.keys`).
A cell whose key changed starts from an empty output folder; one interrupted with the same key resumes (the harness
skips finished samples). A failing cell does not stop the others: every failure is listed at the end.

Output folders carry a marker (`.lostattn.json`) listing the files the project wrote there. Only those files are
ever removed; a folder holding anything else is refused, never emptied.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

from lostattn.pipeline.execute import NotebookProgress, _failure_text, _hms, run_notebook
from lostattn.pipeline.folders import _update_marker, check_out_dir, prepare_out_dir, read_marker
from lostattn.pipeline.keys import CacheKeys, up_to_date
from lostattn.pipeline.plan import MatrixCell, _local, plan, select
from lostattn.pipeline.profiles import NOTEBOOKS, Profile, check_inputs, load_profile
from lostattn.provenance import writing

def _command(prof: Profile, number: int) -> str:
    cmd = ["lostattn", "reproduce", "--profile", prof.name]
    if prof.explicit_config:
        cmd += ["--config", str(prof.path)]
    return " ".join(shlex.quote(c) for c in cmd + ["--cell", str(number)])


def print_plan(prof: Profile, cells: list[MatrixCell], shown: list[MatrixCell], keys: CacheKeys, out=None) -> None:
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


# ---- measured durations, kept across runs: what the ETA is made of ---------------------------------------------
DURATIONS_FILE = "durations.json"  # results/<profile>/durations.json


def _durations_path(prof: Profile) -> Path:
    from lostattn.pipeline import profiles  # read at call time: the tests point RESULTS_DIR elsewhere

    return profiles.RESULTS_DIR / prof.name / DURATIONS_FILE


def load_durations(path: Path) -> dict[str, dict]:
    """The durations measured by earlier runs: {cell label: {"notebook", "seconds", "cells": [seconds per code
    cell]}}; empty when none were recorded or the file is unreadable (it only informs the ETA)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_duration(path: Path, cell: MatrixCell, seconds: float, per_cell: list[float]) -> None:
    """Add one finished run of `cell` to the durations file (its last run replaces the one before)."""
    data = load_durations(path)
    data[cell.label] = {"notebook": cell.notebook, "seconds": round(seconds, 1), "cells": per_cell}
    # Whole or not at all, each process through its own temporary file: cluster tasks finish cells at once (the
    # last writer wins; a duration lost so only makes one ETA less informed).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as err:  # the cell itself succeeded: a read-only results folder must not fail it
        print(f"note: durations not recorded in {path}: {err}", file=sys.stderr)


def _estimate(cell: MatrixCell, history: dict[str, dict], done: dict[str, list[float]]) -> float | None:
    """Seconds `cell` should take: its own last measured run, else the mean of this notebook's measured runs
    (earlier runs, then this one's), else None (never timed)."""
    if cell.label in history and history[cell.label].get("seconds"):
        return float(history[cell.label]["seconds"])
    m = read_marker(cell.out_dir) if cell.out_dir.is_dir() else None
    if m and m.get("seconds"):
        return float(m["seconds"])
    same = [float(h["seconds"]) for h in history.values() if h.get("notebook") == cell.notebook and h.get("seconds")]
    same += done.get(cell.notebook, [])
    return sum(same) / len(same) if same else None


def _eta_text(estimates: list[float | None]) -> str:
    """'ETA 12m30s', with how many cells it leaves out when some were never timed."""
    known = [e for e in estimates if e is not None]
    unknown = len(estimates) - len(known)
    if not known:
        return "ETA unknown (no earlier run timed these cells)"
    return f"ETA {_hms(sum(known))}" + (f" + {unknown} cell(s) never timed" if unknown else "")


def _bar(done: int, total: int, width: int = 20) -> str:
    fill = int(round(width * done / total)) if total else width
    return "[" + "#" * fill + "." * (width - fill) + "]"


def reproduce(profile: str = "tiny", only=None, force: bool = False, config: str | None = None,
              build_book: bool = True, plan_only: bool = False, cell: int | None = None, model: str | None = None,
              benchmark: str | None = None) -> int:
    """Run the profile's cells (all, or those the options select), skipping finished ones and going on past
    failures; then build the book when the whole profile ran. Returns the exit status (1 when a cell failed)."""
    prof = load_profile(profile, config)
    check_inputs(prof, devices=not plan_only)  # every path (and device) named before any cell runs
    cells = plan(prof)
    chosen = select(cells, only, model, benchmark, cell)
    keys = CacheKeys(cells)
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
    durations: dict[str, list[float]] = {}  # this run's, per notebook
    durations_file = _durations_path(prof)
    history = load_durations(durations_file)  # earlier runs', per cell
    failures: list[tuple[MatrixCell, str, Path | None]] = []
    ran = 0
    t_all = time.perf_counter()
    for i, c in enumerate(pending):
        key = keys.key(c)
        if c.once and not force and up_to_date(c, key):
            print(f"{tag} {c.notebook}: up to date, skipped")
            continue
        ests = [_estimate(x, history, durations) for x in pending[i:]]
        print(f"{tag} cell {c.number}/{len(cells)} {c.label}  {_bar(i, len(pending))} {i}/{len(pending)} run, "
              f"{_hms(time.perf_counter() - t_all)} elapsed, {_eta_text(ests)}", flush=True)
        failure = _run_cell(c, key, history.get(c.label, {}).get("cells"), durations_file)
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
        from lostattn.pipeline.book import build_book_html

        return build_book_html(prof.name, rebuild=ran > 0)
    return 0


def _run_cell(cell: MatrixCell, key: str, expected: list[float] | None = None,
              durations_file: Path | None = None) -> tuple[str, Path | None] | None:
    """Run one cell under its lock, its progress lines telling how long each code cell took last time
    (`expected`); None when it succeeded (its durations then recorded in `durations_file`), else (what failed, the
    partly executed notebook)."""
    from lostattn.harness.records import Busy, exclusive

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
            progress = NotebookProgress(on_cell_done=lambda: _update_marker(cell, marker), expected=expected)
            t = time.perf_counter()
            try:
                run_notebook(cell, progress)
            except KeyboardInterrupt:
                _update_marker(cell, marker, state="interrupted")
                raise
            except Exception as err:  # noqa: BLE001 - papermill's error carries the failing cell's traceback
                _update_marker(cell, marker, state="failed", error=_failure_text(err))
                return (_failure_text(err), cell.out_nb if cell.out_nb.is_file() else None)
            seconds = time.perf_counter() - t
            _update_marker(cell, marker, state="done", seconds=round(seconds, 1))
            if durations_file is not None:
                record_duration(durations_file, cell, seconds, progress.seconds)
            with writing(cell.key_file):
                cell.key_file.write_text(key)
            return None
    except Busy as err:
        return (str(err), None)
