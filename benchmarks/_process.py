"""A measurement in a fresh process: the child's resident memory from /proc and its one-line JSON answer."""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def vm(field: str) -> float:
    """VmRSS, VmHWM, ... of this process in MiB."""
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def reset_peak() -> float:
    """Reset the peak resident set (VmHWM) to the current one and return that (MiB): what ran before does not count."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return vm("VmRSS")


def add_child_arguments(p: argparse.ArgumentParser, *names: str) -> None:
    """The hidden arguments a parent passes to its child: --child and `names`."""
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in names:
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)


def answer(a, child) -> bool:
    """In a child: print its measurement as one JSON line and say so."""
    if a.child:
        print(json.dumps(child(a)))
    return a.child


def run_child(script: str, args: list[str], what: str) -> dict:
    """Run `script --child args` in a fresh interpreter and return its answer; a failure names `what`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
