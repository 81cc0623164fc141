"""README.md (hand-written) and nbs/index.ipynb (nbdev's readme notebook) say the same thing."""
import json
import runpy
from pathlib import Path

root = Path(__file__).resolve().parent.parent


def _md(nb):
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "markdown"]


def test_index_mirrors_readme():
    mod = runpy.run_path(str(root / "scripts" / "sync_index.py"), run_name="not_main")
    want = mod["index_notebook"]((root / "README.md").read_text(encoding="utf-8"))
    have = json.loads((root / "nbs" / "index.ipynb").read_text(encoding="utf-8"))
    assert _md(have) == _md(want), "nbs/index.ipynb is out of date: run .venv/bin/python scripts/sync_index.py"


def test_readme_commands_match_ci():
    readme = (root / "README.md").read_text(encoding="utf-8")
    ci = (root / ".ci" / "run").read_text(encoding="utf-8")
    test_cmd = next(l.strip() for l in readme.splitlines() if "nbdev_test" in l and "install.sh" in l)
    assert test_cmd in ci, "the README's test command must appear verbatim in .ci/run"
    assert "papermill nbs/05_waterbirds.ipynb outputs/05_waterbirds.ipynb" in readme
