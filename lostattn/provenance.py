"""What every result file records: versions, seed, git commit, time."""
from __future__ import annotations

import datetime as _dt
import errno
import hashlib
from contextlib import contextmanager
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: Path = REPO_ROOT) -> str:
    """The checked-out commit, with '+dirty' when tracked files differ from it; 'unknown' outside a git clone."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance(seed: int | None = None, **extra) -> dict:
    """A dict to store beside (or inside) every result: package versions, python, seed, commit, UTC time."""
    from lostattn import __version__

    rec = {
        "lostattn": __version__,
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "seed": seed,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    rec.update(extra)
    return rec


def hash_file(h, path: Path, sample: int = 1 << 20, whole_below: int = 64 << 20) -> None:
    """Feed `h` a file's bytes: all of them under `whole_below`, else the first and last `sample` bytes (cheap for
    a multi-GB weight file, and different after any retraining, whose tensors start right after the header)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size < whole_below:
            h.update(fh.read())
            return
        h.update(fh.read(sample))
        fh.seek(max(0, size - sample))
        h.update(fh.read(sample))


def file_fingerprint(path: str | Path, sample: int = 1 << 20, whole_below: int = 64 << 20) -> str:
    """16 hex digits identifying a file's bytes (all of them under `whole_below`, else its size and first and last
    `sample` bytes), or a folder's (the relative name, size and bytes of each file in it, so sampled)."""
    root = Path(path)
    files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root) if root.is_dir() else f.name}:{f.stat().st_size}\n".encode())
        hash_file(h, f, sample, whole_below)
    return h.hexdigest()[:16]


def data_identity(path: str | Path | None) -> str | None:
    """What a run key records of a benchmark file or folder: its name and `file_fingerprint`; None for none."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"benchmark file {p} does not exist")
    return f"{p.name}:{file_fingerprint(p)}"


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def writing(path: str | Path):
    """Name `path` in an error raised while writing it: a full disk (or quota) says "No space left on device" but
    not which file; it is raised again as an OSError naming the file and what to do."""
    try:
        yield
    except OSError as e:
        if e.errno not in _FULL:
            raise
        raise OSError(e.errno, f"{e.strerror} while writing {path}; what was written before is kept: free space (or "
                               f"write elsewhere) and run the same command again to resume", str(path)) from None
