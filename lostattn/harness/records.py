"""The results file of a run: JSON lines, a header line naming the run, then one record per finished sample.

Guarantees, whatever happened to an earlier run on the same file:
- one writer at a time: a file is locked (`<file>.lock`) while a run reads or appends it; a second run is refused;
- never mixed: a header whose run key differs from this run's (or written before keys named every input) is refused;
- never unreadable: a last line cut short by a killed writer is removed before anything is appended (its sample is
  redone), so the file always reads with `pandas.read_json(path, lines=True)`.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from lostattn.provenance import writing

# Version 2: the run key names the benchmark file, split, dtype, device and weights, and every record carries the
# digest of its inputs. Files of version 1 (no "format" field) cannot be checked and are refused.
FORMAT = 2


def lock_path(path: Path) -> Path:
    """The lock file beside `path` (hidden; left in place after a run, as fcntl locks need)."""
    return path.with_name(f".{path.name}.lock")


class Busy(ValueError):
    """Another process holds the lock; the message names it and what to do."""


@contextmanager
def exclusive(lock_file: str | Path, busy: str):
    """Hold `lock_file` for the block, without waiting: when another process holds it, raise Busy(`busy`)."""
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise Busy(busy) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def locked(path: str | Path):
    """Hold the results file's lock for the block; refuse (ValueError naming the file) when another run holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(lock_path(path), f"{path} is being written by another run (its lock {lock_path(path).name} is "
                                    f"held): wait for that run to finish, or give this one another output file "
                                    f"(--out)"):
        yield


def _diff(there: dict, here: dict) -> str:
    keys = sorted(set(there) | set(here))
    parts = [f"{k} {there.get(k)!r} there, {here.get(k)!r} now" for k in keys if there.get(k) != here.get(k)]
    return "; ".join(parts)


def check_header(path: Path, head, key: dict) -> None:
    """Raise ValueError unless `head` is a header of this file format written for the run `key`."""
    if not isinstance(head, dict) or "run" not in head:
        raise ValueError(f"{path} is not a lostattn results file (its first line is not a run header); choose "
                         f"another output file")
    if head.get("format") != FORMAT:
        raise ValueError(f"{path} was written by an earlier lostattn whose resume key did not name the benchmark "
                         f"file, split, dtype or device, so its records cannot be checked against this run; delete "
                         f"it or choose another output file (--out)")
    there = head["run"]
    if there.get("weights") != key.get("weights") and there.get("model") == key.get("model"):
        raise ValueError(f"{path} holds records of {key.get('model')!r} with other weights (fingerprint "
                         f"{there.get('weights')}; the model loaded now is {key.get('weights')}): it was retrained or "
                         f"replaced. Delete the file or use another one; finished records are only resumed with the "
                         f"weights that wrote them.")
    if there != key:
        raise ValueError(f"{path} holds a different run ({_diff(there, key)}). Use another output file or delete "
                         f"it.")


def read(path: str | Path, key: dict, repair: bool = True) -> dict[str, dict]:
    """Finished records of the run `key` in `path`, by sample id ({} for a missing or empty file).

    With `repair` (the caller holds the lock), a last line cut short is truncated away, and a header cut short with
    no record after it (a run killed while starting) is removed; without it they are only skipped."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if not data:
        return {}
    nl = data.find(b"\n")
    if nl < 0:
        if data.lstrip().startswith(b'{"format"'):  # a header cut short: the file holds no record yet
            if repair:
                _truncate(path, 0)
            return {}
        try:
            json.loads(data)
        except ValueError:
            raise ValueError(f"{path}: its header line is cut short or is not JSON; it is not a results file this "
                             f"run can resume. Delete it or choose another output file (--out)") from None
        check_header(path, json.loads(data), key)
        return {}
    try:
        head = json.loads(data[:nl])
    except ValueError:
        raise ValueError(f"{path}: line 1 is not a run header (cut short or edited); delete the file or choose "
                         f"another output file (--out)") from None
    check_header(path, head, key)
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:  # a record cut short by a killed writer: removed, its sample is redone
        _truncate(path, end)
    done: dict[str, dict] = {}
    for n, line in enumerate(data[nl + 1:end].split(b"\n")[:-1], start=2):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            done[rec["id"]] = rec
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: line {n} is not a record of this run (edited, or written by two runs at once "
                             f"before files were locked); delete the file or choose another output file") from None
    return done


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def header(key: dict, provenance: dict) -> str:
    return json.dumps({"format": FORMAT, "run": key, "provenance": provenance}) + "\n"


class Writer:
    """Appends records to `path` (the caller holds the lock). The header is written with the first records, so a
    run that fails before finishing any sample leaves no file behind, and a resumed one appends after the last
    whole line. Each `append` writes whole lines and flushes: an interruption cuts at most the last line."""

    def __init__(self, path: str | Path, key: dict, provenance: dict):
        self.path, self.key, self.provenance = Path(path), key, provenance
        self._f = None

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        with writing(self.path):  # a full disk names this file; a line it cut short is repaired on resume
            if self._f is None:
                self._f = self.path.open("a")
                if self._f.tell() == 0:
                    self._f.write(header(self.key, self.provenance))
            self._f.write("".join(json.dumps(r) + "\n" for r in records))
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
