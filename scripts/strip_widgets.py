"""Strip ipywidget state from rendered notebooks, so that a report opens anywhere (GitHub, nbviewer, a
plain JSON viewer) and weighs what its results weigh.

A notebook run under papermill saves every tqdm bar it drew as an ipywidget: the widget models in
`metadata.widgets` (megabytes, and useless without a live kernel) and, in each cell, a display output
whose `text/plain` fallback is the bar's first frame (`epoch 3:   0%|          | 0/5`). Both go; every
other output (tables, figures, text, errors) stays as it is.

usage: python scripts/strip_widgets.py NOTEBOOK.ipynb [...]     (rewrites each file in place, in nbformat's layout)
"""
import json
import os
import sys
import tempfile
from pathlib import Path

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def strip_widgets(nb: dict) -> dict:
    "Return a copy of the notebook `nb` (nbformat 4 as a dict) without widget state or widget-view outputs."
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError(f"strip_widgets: nb must be an nbformat-4 notebook dict with a 'cells' list, got {type(nb).__name__}")
    out = {**nb, "metadata": {k: v for k, v in nb.get("metadata", {}).items() if k != "widgets"}}
    cells = []
    for c in nb["cells"]:
        if c.get("cell_type") == "code" and c.get("outputs"):
            c = {**c, "outputs": [o for o in c["outputs"] if WIDGET_MIME not in o.get("data", {})]}
        cells.append(c)
    out["cells"] = cells
    return out


def strip_file(path) -> tuple[int, int]:
    "Strip the notebook file at `path` in place (atomically); return its size in bytes (before, after)."
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"strip_file: notebook {str(path)!r} does not exist")
    raw = path.read_text(encoding="utf-8")
    text = json.dumps(strip_widgets(json.loads(raw)), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f: f.write(text)
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    return len(raw.encode("utf-8")), len(text.encode("utf-8"))


if __name__ == "__main__":
    if len(sys.argv) < 2: sys.exit(__doc__.strip().splitlines()[-1])
    for p in sys.argv[1:]:
        b, a = strip_file(p)
        print(f"{p}: {b / 1e6:.2f} MB -> {a / 1e6:.2f} MB")
