"""nbs/05_waterbirds.ipynb (the main job) through papermill: the smoke preset end to end, and bad
parameters stopping it in its first cells, before anything is written."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pm = pytest.importorskip("papermill")

NB = Path(__file__).resolve().parents[1] / "nbs" / "05_waterbirds.ipynb"
METHODS = ["pgd_l2", "pgd_linf", "cfe_l2", "pcfe_l0", "scfe_l0"]  # paper 2's four + the τ = 0 ablation




def test_smoke_run_writes_results(run_nb, tmp_path):
    out = tmp_path / "run"
    run_nb(NB, preset="smoke", out_dir=str(out), seeds=[0, 1])
    res = json.loads((out / "results.json").read_text())
    cfg, rows, meta = res["config"], res["rows"], res["metadata"]
    assert cfg["preset"] == "smoke" and cfg["seeds"] == [0, 1] and list(cfg["methods"]) == METHODS
    assert cfg["methods"]["pcfe_l0"]["tau"] > 0 and res["metadata"]["parameter_sources"]["seeds"] == "explicit"
    assert sorted((r["seed"], r["method"]) for r in rows) == sorted((s, m) for s in (0, 1) for m in ["original"] + METHODS)
    for r in rows:
        for split in ("train", "test"):
            assert 0.0 <= r[f"{split}_wga"] <= r[f"{split}_acc"] + 1e-9 <= 1.0 + 1e-9
            assert set(r[f"{split}_group_acc"]) == {"0", "1", "2", "3"}
            assert min(r[f"{split}_group_acc"].values()) == pytest.approx(r[f"{split}_wga"])
        if r["method"] != "original":
            assert 0.0 <= r["flip_rate"] <= 1.0 and r["mean_l2"] >= 0 and r["n"] == 145
    assert meta["wall_time_s"] > 0 and meta["versions"]["torch"].startswith("2.14")
    # the tables: ours beside the paper's, one row per (table, split, method)
    cmp = pd.read_csv(out / "comparison.csv")
    assert len(cmp) == 2 * 2 * 6 and cmp.query("method != 'S-CFE ℓ0 (τ=0)'")["paper"].notna().all()
    assert (cmp["diff"] - (cmp["ours"] - cmp["paper"])).abs().max() < 0.02
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["n_seeds"]) == {2}
    claims = pd.read_csv(out / "claims.csv")
    assert len(claims) == 5 + 1 + 3 + 1 + 1  # above chance ×5, train-acc non-inferiority, WGA vs 3, vs Original, τ ablation
    assert set(claims.verdict) <= {"holds", "contradicted", "inconclusive"} and (claims.ci_low <= claims.ci_high).all()
    assert len(np.load(out / "outcomes.npz").files) == 2 * 6 * 2 + 3
    assert len(pd.read_csv(out / "results.csv")) == len(rows)
    for f in ("fig1_training_variants.png", "fig2_gradcam_worst_group.png", "fig3_saliency.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG", f
    # no temporary file was left behind anywhere
    assert not [p for p in out.rglob(".*.tmp")]


def test_rerun_reuses_the_cache(run_nb, tmp_path):
    out = tmp_path / "run"
    run_nb(NB, preset="smoke", out_dir=str(out), methods=["pgd_linf"])
    first = json.loads((out / "results.json").read_text())["rows"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.pt")}
    run_nb(NB, preset="smoke", out_dir=str(out), methods=["pgd_linf"])
    again = json.loads((out / "results.json").read_text())["rows"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in first] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in again]
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.pt")} == stamps  # nothing recomputed


@pytest.mark.parametrize("params, message", [
    (dict(preset="huge"), "05_waterbirds: preset='huge' is not one of 'smoke', 'default', 'paper', 'authors_code'"),
    (dict(preset="smoke", methods=["pgd_l3"]), "05_waterbirds: methods='pgd_l3' is not one of"),
    (dict(preset="smoke", epochs=-2), "05_waterbirds: epochs=-2 must be an integer >= 1"),
    (dict(preset="smoke", target_mode="rnd"), "05_waterbirds: target_mode='rnd' is not one of"),
    (dict(preset="paper"), "05_waterbirds: preset='paper' runs on the real WaterBirds data: set data_root"),
    (dict(preset="smoke", data_root="EMPTY"), "load_waterbirds: no metadata.csv"),
    (dict(preset="smoke", epoch=5), "05_waterbirds: unknown parameter 'epoch' (did you mean 'epochs'?)"),
    (dict(preset="smoke", methods={"pgd_l2": {"eps": -3}}), "05_waterbirds: methods.pgd_l2.eps=-3 must be a finite number > 0"),
    (dict(preset="smoke", pcfe_tau=-1.0), "05_waterbirds: methods.pcfe_l0.tau=-1.0 must be a finite number >= 0"),
    (dict(preset="smoke", seeds=[0, 0]), "05_waterbirds: seeds=[0, 0] has duplicates"),
])
def test_bad_parameters_stop_early(run_bad_params, tmp_path, params, message):
    err = run_bad_params(NB, **params)
    out = tmp_path / "run"
    assert message in str(err)
    cells = json.loads((tmp_path / "out.ipynb").read_text())["cells"]
    first_work = next(i for i, c in enumerate(cells) if "run_spurious(run" in "".join(c["source"]) and c["cell_type"] == "code")
    assert err.cell_index < first_work  # stopped in the parameter/data cells, before any training
    assert not (out / "cache").exists() and not (out / "results.json").exists()


def test_paper_preset_runs_on_real_format_data(run_paper_preset, tmp_path):
    """The `paper` preset's code path end to end — the real WaterBirds reader (metadata.csv + JPEGs), ResNet-50
    with weights from a local file, SGD, the authors' PGD step rule, uniform targets — on a 64-image fixture in
    the real format, shrunk to CPU size (64 px, 1 epoch, 2 steps, 1 seed). It checks the plumbing, not the figures."""
    from cfx_nb.data import _write_waterbirds_fixture
    root = _write_waterbirds_fixture(tmp_path / "waterbird_complete95_forest2water2", n_per_group=4, size=80)
    res, out = run_paper_preset(NB, root)
    cfg = res["config"]
    assert (cfg["preset"], cfg["model"], cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["batch_size"]) == \
           ("paper", "resnet50", "sgd", 1e-5, 5e-2, 8)
    assert cfg["methods"]["pgd_l2"]["step_rule"] == "authors" and cfg["target_mode"] == "uniform"
    assert {r["method"] for r in res["rows"]} == {"original", *METHODS}
    assert len(pd.read_csv(out / "paper_style.csv")) == 4
    for f in ("fig1_training_variants.png", "fig2_gradcam_worst_group.png", "fig3_saliency.png"):
        assert (out / f).stat().st_size > 0


def test_diffusion_counterfactuals_as_a_fifth_method(run_nb, tmp_path):
    """Learning from paper 1's diffusion CEs in paper 2's experiment (neither paper ran it): the method's fit hook
    trains and caches the class-conditional DDPM, and the method appears, labelled, in the tables and claims."""
    out = tmp_path / "run"
    ce = {"steps": 3, "sweeps": 1, "ddpm_epochs": 1, "ddpm_batch_size": 64, "ddpm_channels": [8, 16]}
    run_nb(NB, preset="smoke", out_dir=str(out), methods={"pgd_linf": {}, "diffusion_ce": ce})
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["original", "pgd_linf", "diffusion_ce"]
    assert "Diffusion CE" in pd.read_csv(out / "paper_style.csv").columns
    assert pd.read_csv(out / "claims.csv").statement.str.contains("Diffusion CE").any()
    assert list((out / "cache").glob("perturb-diffusion_ce-*/fit/ddpm/epoch_*.pt"))  # the DDPM checkpoint, cached


def test_model_selection_on_validation_data(run_nb, tmp_path):
    """select="val_wga" (Yang et al., 2023): every epoch's checkpoint is kept and the best on the validation split is loaded."""
    out = tmp_path / "run"
    run_nb(NB, preset="smoke", out_dir=str(out), methods=["pgd_linf"], epochs=2, select="val_wga")
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert all(r["selected_epoch"] in (1, 2) and 0 <= r["selected_val_wga"] <= 1 for r in rows)
    assert len(list((out / "cache").glob("source-*/ckpt/epoch_*.pt"))) == 2
