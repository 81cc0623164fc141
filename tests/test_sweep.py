"""A sweep of 05's smoke preset: two jobs (one seed each) at once into one out_dir through submitit's local
executor, then the aggregate run with both seeds, which must reuse every artifact (no checkpoint or chunk
rewritten) and give the jobs' rows (issue 16)."""
import json
from pathlib import Path

import pytest

pytest.importorskip("submitit")
pytest.importorskip("papermill")

NB = Path(__file__).resolve().parents[1] / "nbs" / "05_waterbirds.ipynb"


def _stamps(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.pt")}


def test_two_concurrent_jobs_then_an_aggregate_that_reuses_everything(tmp_path):
    from cfx_nb.sweep import launch, run_notebook
    out = tmp_path / "run"
    params = {"preset": "smoke", "seeds": [0, 1], "out_dir": str(out), "methods": ["pgd_linf", "pcfe_l0"], "num_threads": 1}
    res = launch(NB, params, executor="local", aggregate=False, cwd=tmp_path)
    assert len(res["jobs"]) == 2 and all(Path(p).exists() for p in res["jobs"])
    ckpts = _stamps(out / "cache")
    assert sum("source-" in k for k in ckpts) >= 2  # each job trained its own seed's source model
    rows_by_job = {}
    for p in res["jobs"]:  # each job rendered its own report; results.json holds the last writer's rows
        nb = json.loads(Path(p).read_text())
        assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
    run_notebook(NB, params, tmp_path / "aggregate.ipynb", cwd=tmp_path)
    assert _stamps(out / "cache") == ckpts  # nothing recomputed, nothing rewritten
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted({r["seed"] for r in rows}) == [0, 1]
    assert {r["method"] for r in rows} == {"original", "pgd_linf", "pcfe_l0"}
    # the aggregate's rows for a seed are the rows a single-seed run computes (here: re-run seed 0 alone)
    run_notebook(NB, {**params, "seeds": [0]}, tmp_path / "seed0.ipynb", cwd=tmp_path)
    rows0 = json.loads((out / "results.json").read_text())["rows"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    assert strip([r for r in rows if r["seed"] == 0]) == strip(rows0)
