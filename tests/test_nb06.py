"""nbs/06_spuco_animals.ipynb through papermill: the smoke preset end to end, and a bad parameter stopping it early."""
import json
from pathlib import Path

import pandas as pd
import pytest

pm = pytest.importorskip("papermill")

NB = Path(__file__).resolve().parents[1] / "nbs" / "06_spuco_animals.ipynb"




def test_smoke_run_writes_results(run_nb, tmp_path):
    out = tmp_path / "run"
    run_nb(NB, preset="smoke", out_dir=str(out), methods=["pgd_l2", "pcfe_l0"])
    res = json.loads((out / "results.json").read_text())
    cfg, rows = res["config"], res["rows"]
    assert cfg["subset"] == "dogs" and cfg["preset"] == "smoke" and list(cfg["methods"]) == ["pgd_l2", "pcfe_l0"]
    assert [r["method"] for r in rows] == ["original", "pgd_l2", "pcfe_l0"]
    for r in rows:
        assert set(r["test_group_acc"]) == {"0", "1", "2", "3"}  # (small, big) × (majority, minority background)
        assert r["test_wga"] == pytest.approx(min(r["test_group_acc"].values()))
    cmp = pd.read_csv(out / "comparison.csv")
    assert set(cmp["method"]) == {"PGD ℓ2", "p-CFE ℓ0", "Original"} and cmp["paper"].notna().all()
    claims = pd.read_csv(out / "claims.csv")  # no claim against Original on SpuCo: the paper makes none
    assert not claims.statement.str.contains("standard training").any() and len(claims) == 2 + 1 + 1  # above chance ×2, non-inferiority, WGA vs PGD ℓ2
    assert (cmp.query("method == 'Original' and table == 'Table 2' and split == 'test'")["paper"] == 65.60).all()
    for f in ("fig1_training_variants.png", "fig2_gradcam_worst_group.png", "fig3_saliency.png", "results.csv"):
        assert (out / f).stat().st_size > 0


@pytest.mark.parametrize("params, message", [
    (dict(preset="smoke", subset="cats"), "06_spuco_animals: subset='cats' is not one of 'dogs', 'animals'"),
    (dict(preset="smoke", data_root="EMPTY"), "load_spuco_animals:"),
])
def test_bad_parameters_stop_early(run_bad_params, tmp_path, params, message):
    assert message in str(run_bad_params(NB, **params))
    assert not (tmp_path / "run" / "cache").exists()


def test_paper_preset_runs_on_real_format_data(run_paper_preset, tmp_path):
    """The `paper` preset's code path end to end on a SpuCo tree in spuco's on-disk layout (the SpuCo-Dogs
    subset, ResNet-50 with weights from a local file, SGD), shrunk to CPU size: it checks the plumbing, not the figures."""
    from cfx_nb.data import _write_spuco_fixture
    res, out = run_paper_preset(NB, _write_spuco_fixture(tmp_path / "spuco", n=3, size=64))
    cfg = res["config"]
    assert (cfg["preset"], cfg["subset"], cfg["model"], cfg["optimizer"]) == ("paper", "dogs", "resnet50", "sgd")
    assert {r["method"] for r in res["rows"]} == {"original", "pgd_l2", "pgd_linf", "cfe_l2", "pcfe_l0", "scfe_l0"}
    assert len(pd.read_csv(out / "paper_style.csv")) == 4
