"""README.md (hand-written) and nbs/index.ipynb (nbdev's readme notebook) say the same thing."""
import json
import runpy
from pathlib import Path

import pytest

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


def _strip_mod():
    return runpy.run_path(str(root / "scripts" / "strip_widgets.py"), run_name="not_main")


def _tiny_report():
    "A rendered notebook as papermill saves it: a tqdm widget bar, a table, a stream, and the widget state."
    bar = {"output_type": "display_data", "metadata": {},
           "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
                    "text/plain": "epoch 1:   0%|          | 0/5 [00:00<?, ?it/s]"}}
    table = {"output_type": "display_data", "metadata": {}, "data": {"text/html": "<table></table>", "text/plain": "table"}}
    stream = {"output_type": "stream", "name": "stdout", "text": "done\n"}
    cells = [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# report"},
             {"cell_type": "code", "id": "c", "metadata": {"tags": ["parameters"]}, "execution_count": 1,
              "source": "fit()", "outputs": [bar, table, stream, bar]}]
    meta = {"kernelspec": {"name": "python3"}, "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {}}}}}
    return {"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}


def test_strip_widgets_drops_widget_state_and_bars_only(tmp_path):
    mod = _strip_mod()
    nb = _tiny_report()
    out = mod["strip_widgets"](nb)
    assert "widgets" not in out["metadata"] and out["metadata"]["kernelspec"] == {"name": "python3"}
    assert [o.get("data", {}).get("text/plain", o.get("text")) for o in out["cells"][1]["outputs"]] == ["table", "done\n"]
    assert out["cells"][0] == nb["cells"][0] and out["cells"][1]["metadata"] == {"tags": ["parameters"]}
    assert len(nb["cells"][1]["outputs"]) == 4 and "widgets" in nb["metadata"]  # the input is not modified
    assert mod["strip_widgets"](out) == out  # idempotent
    p = tmp_path / "r.ipynb"
    p.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    before, after = mod["strip_file"](p)
    assert before == len(json.dumps(nb, indent=1).encode()) and after == p.stat().st_size < before
    assert json.loads(p.read_text(encoding="utf-8")) == out


def test_strip_widgets_rejects_bad_input(tmp_path):
    mod = _strip_mod()
    with pytest.raises(ValueError, match="strip_widgets: nb must be"):
        mod["strip_widgets"]({"metadata": {}})
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        mod["strip_file"](tmp_path / "missing.ipynb")


def test_lock_pins_every_declared_dependency_within_its_range():
    "settings.ini declares ranges (no exact pins); requirements/constraints.txt pins each of them inside its range."
    from configparser import ConfigParser
    from packaging.requirements import Requirement
    cfg = ConfigParser(delimiters=["="]); cfg.read(root / "settings.ini", encoding="utf-8")
    keys = ["requirements", "dev_requirements", "explain_requirements", "docs_requirements"]
    reqs = [Requirement(r) for k in keys for r in cfg["DEFAULT"][k].split()]
    norm = lambda n: n.lower().replace("_", "-").replace(".", "-")
    lock = {}
    for line in (root / "requirements" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, ver = line.split("==")
            lock[norm(name)] = ver.strip()
    assert len(reqs) >= 20 and {"torch", "grad-cam", "nbdev", "mkdocs"} <= {norm(r.name) for r in reqs}
    for r in reqs:
        assert not any(s.operator == "==" for s in r.specifier), f"settings.ini pins {r} exactly: the lock pins, settings.ini declares ranges"
        assert norm(r.name) in lock, f"{r.name} is not in requirements/constraints.txt"
        assert r.specifier.contains(lock[norm(r.name)], prereleases=True), f"the lock's {r.name}=={lock[norm(r.name)]} is outside {r}"
    assert "grad-cam" not in {norm(Requirement(r).name) for r in cfg["DEFAULT"]["requirements"].split()}  # an extra
    install = (root / "scripts" / "install.sh").read_text(encoding="utf-8")
    assert '-c "$lock"' in install and "lock=requirements/constraints.txt" in install


def test_trove_status_is_the_settings_number():
    "setup.py's Development Status classifier is the one whose number settings.ini's `status` gives (3: Alpha)."
    import subprocess, sys
    out = subprocess.run([sys.executable, "setup.py", "--classifiers"], cwd=root, capture_output=True, text=True, check=True).stdout
    assert "Development Status :: 3 - Alpha" in out.splitlines()
