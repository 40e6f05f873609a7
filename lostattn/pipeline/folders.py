"""A cell's output folder: created, resumed or emptied, and only what the project wrote there is ever removed. A
marker (`.lostattn.json`) lists the files the project wrote."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from lostattn.pipeline.plan import MatrixCell
from lostattn.provenance import writing

MARKER = ".lostattn.json"
_LEGACY_MARKER = ".runkey"  # what earlier versions left in the folders they created
MTIME_SLACK_S = 2.0  # file systems with coarse timestamps, clocks of other nodes
# The kinds of file a cell writes (tables and their .meta.json sidecars, figures, results records, the records'
# lock files). A file is the project's when the marker lists it; one the marker could not list yet (written after
# the last notebook cell of a run that was then killed) counts as the project's only if it is of these kinds and
# newer than that run's start: a user's notes, notebooks or anything else put in the folder are never removed.
PROJECT_KINDS = (".csv", ".json", ".jsonl", ".png", ".lock")


def _project_kind(name: str) -> bool:
    return Path(name).suffix in PROJECT_KINDS

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
    with writing(tmp):  # the old marker stays until the new one is whole
        tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, folder / MARKER)


def _ownership(folder: Path) -> tuple[dict | None, list[str], list[str]]:
    """(marker, files the project wrote, files it did not) of an existing folder. The marker lists what each run
    wrote (after every notebook cell and at its end); a run killed before it could list its last files leaves its
    state 'running', and then a file newer than that run's start counts as the project's too."""
    marker = read_marker(folder)
    files = _files(folder)
    if marker is None:
        if (folder / _LEGACY_MARKER).is_file():  # earlier versions listed nothing: only the kinds they wrote
            return None, [f for f in files if _project_kind(f)], [f for f in files if not _project_kind(f)]
        return None, [], files
    listed = set(marker.get("files", []))
    killed = marker.get("state") == "running"
    since = float(marker.get("run_started", float("inf"))) - MTIME_SLACK_S if killed else float("inf")
    ours, foreign = [], []
    for f in files:
        p = folder / f
        (ours if f in listed or (_project_kind(f) and p.lstat().st_mtime >= since) else foreign).append(f)
    return marker, ours, foreign


def check_out_dir(cell: MatrixCell, key: str) -> None:
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


def prepare_out_dir(cell: MatrixCell, key: str) -> dict:
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


def _update_marker(cell: MatrixCell, marker: dict, **changes) -> None:
    out = cell.out_dir
    if not out.is_dir():
        return
    since = float(marker["run_started"]) - MTIME_SLACK_S
    new = {f for f in _files(out) if _project_kind(f) and (out / f).lstat().st_mtime >= since}
    marker["files"] = sorted(set(marker.get("files", [])) | new)
    marker.update(changes)
    if changes.get("state") == "done":  # what the finished run's tables were: a later cut or edit is noticed
        marker["digests"] = {f: file_digest(out / f) for f in marker["files"] if f.endswith(".csv")
                             and (out / f).is_file()}
    _write_marker(out, marker)


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes (the tables a finished cell wrote, checked again by `lostattn aggregate`)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
