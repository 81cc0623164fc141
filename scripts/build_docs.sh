#!/usr/bin/env bash
# Build the documentation site into site/ (offline; a warning or a broken link fails it).
# usage: bash scripts/build_docs.sh [--no-exec]   (see scripts/build_docs.py)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python scripts/build_docs.py "$@"
