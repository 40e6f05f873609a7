#!/usr/bin/env bash
# Set up lostattn on a fresh machine (pip path): the pinned CPU torch wheel first (so that pip does not pull the
# CUDA build), then the package with its book and test extras, then MathJax for the offline book.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet "torch==2.13.0"
"$PY" -m pip install --quiet -e ".[book,dev]"
"$PY" -c "from lostattn.book_assets import ensure_mathjax; from pathlib import Path; print('mathjax:', ensure_mathjax(Path('book')))"
