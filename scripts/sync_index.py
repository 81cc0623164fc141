"""Write nbs/index.ipynb from README.md (README.md is written by hand: quarto, which nbdev 2 uses to
render README from index.ipynb, cannot be installed offline). Run after editing README.md; a test checks
the two agree."""
import json
import re
from pathlib import Path

root = Path(__file__).resolve().parent.parent


def index_notebook(readme: str) -> dict:
    parts = re.split(r"\n(?=## )", readme)
    cells = [{"cell_type": "markdown", "metadata": {}, "source": p.strip("\n")} for p in parts]
    cells.insert(1, {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                     "source": "#| hide\nimport cfx_nb\nassert cfx_nb.__version__"})
    for i, c in enumerate(cells):
        c["id"] = f"idx{i:03d}"
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


if __name__ == "__main__":
    nb = index_notebook((root / "README.md").read_text(encoding="utf-8"))
    (root / "nbs" / "index.ipynb").write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
