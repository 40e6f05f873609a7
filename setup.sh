#!/usr/bin/env bash
# Set up lostattn on a fresh machine (pip path).
#   bash setup.sh          CPU: the pinned CPU torch wheel first (so that pip does not pull the CUDA build), then the
#                          package with its book and test extras, then MathJax for the offline book.
#   bash setup.sh --gpu    a CUDA machine: torch and its matching torchvision, both CUDA builds from PyPI, then the
#                          same. torchvision is optional for lostattn (it reads images only, with the PIL image
#                          processors); it is installed here because a GPU user's environment usually has it, and the
#                          two must match (torchvision 0.28.0 requires torch 2.13.0 exactly).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ "${1:-}" = "--gpu" ]; then
  "$PY" -m pip install --quiet "torch==2.13.0" "torchvision==0.28.0"
else
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[book,dev]"
# MathJax is needed only to build the book; a failure here is reported, not fatal (the tests do not need it).
"$PY" -c "from lostattn.pipeline.book_assets import ensure_mathjax; from pathlib import Path; print('mathjax:', ensure_mathjax(Path('book')))" \
  || echo "setup.sh: warning: MathJax could not be fetched from the npm registry; the book will need it (rerun setup.sh)" >&2
