"""nbs/10_counterfactual_robustness.ipynb runs end to end through papermill at preset="smoke" and writes its results."""
import json
from pathlib import Path

import pytest

root = Path(__file__).resolve().parent.parent
NB = root / "nbs" / "10_counterfactual_robustness.ipynb"


def test_notebook_10_smoke(tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "out"
    papermill.execute_notebook(str(NB), str(tmp_path / "nb10.ipynb"), cwd=str(root), kernel_name="python3", progress_bar=False,
                               parameters={"preset": "smoke", "out_dir": str(out), "device": "cpu", "threads": 1})
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["preset"] == "smoke"
    kinds = {r["kind"] for r in res["rows"]}
    assert {"classifier", "counterfactuals", "ablation", "distance_bin", "sample_quality"} <= kinds
    ce = [r for r in res["rows"] if r["kind"] == "counterfactuals"]
    for r in ce:
        for k in ("gauss_acc_standard", "gauss_acc_robust", "gauss_ce_dist_acc", "boltz_acc_standard", "boltz_acc_robust"):
            assert 0.0 <= r[k] <= 1.0
    assert set(res["tables"]) >= {"main", "claims", "ablation"}
    assert "wall_time_s" in res["metadata"]
    for f in ("results.csv", "samples_digits.png", "counterfactuals_digits.png", "confidence_vs_distance.png", "ablation.png"):
        assert (out / f).stat().st_size > 0, f
    assert list((out / "cache").glob("ddpm-digits-*/epoch_*.pt"))  # the DDPM is cached (and would be resumed)


def test_notebook_10_rejects_bad_parameters(tmp_path):
    papermill = pytest.importorskip("papermill")
    from papermill.exceptions import PapermillExecutionError
    for params, msg in [({"preset": "fast"}, "preset='fast' is not one of"),
                        ({"preset": "paper", "data_root": str(tmp_path)}, "lacks ['cifar-10-batches-py']")]:
        with pytest.raises(PapermillExecutionError) as e:
            papermill.execute_notebook(str(NB), str(tmp_path / "bad.ipynb"), cwd=str(root), kernel_name="python3",
                                       progress_bar=False, parameters={"out_dir": str(tmp_path / "o"), **params})
        assert msg in str(e.value), (params, str(e.value)[-500:])
