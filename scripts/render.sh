#!/usr/bin/env bash
# Render the experiment notebooks at their default presets into outputs/ (the committed reports).
# usage: bash scripts/render.sh [NOTEBOOK_STEM ...]   (default: all experiments)
# Each run prints its wall time and peak memory (GNU time, where available).
# Reports carry no ipywidget state: scripts/strip_widgets.py removes the tqdm bars' widget models and widget
# outputs from each rendered report (05: 3.3 MB -> 0.36 MB); tables, figures and text stay. (TQDM_DISABLE
# does not help here: tqdm.notebook passes disable=False explicitly, which wins over the environment.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
stems=("$@")
[ ${#stems[@]} -gt 0 ] || stems=(05_waterbirds 06_spuco_animals 07_natural_images 08_synthetic 10_counterfactual_robustness)
for s in "${stems[@]}"; do
  echo "== $s"
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "$s: wall %e s, peak RSS %M KiB" .venv/bin/papermill "nbs/$s.ipynb" "outputs/$s.ipynb"
  else
    start=$(date +%s); .venv/bin/papermill "nbs/$s.ipynb" "outputs/$s.ipynb"; echo "$s: wall $(( $(date +%s) - start )) s"
  fi
  .venv/bin/python scripts/strip_widgets.py "outputs/$s.ipynb"
done
