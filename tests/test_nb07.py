"""nbs/07_natural_images.ipynb through papermill: the smoke preset end to end (rows, tables, claims with intervals,
rerun noise, τ ablation, figures), bad parameters stopping it in its first cells, and the paper preset on a fixture."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pm = pytest.importorskip("papermill")

NB = Path(__file__).resolve().parents[1] / "nbs" / "07_natural_images.ipynb"
METHODS = ["pgd_l2", "pgd_linf", "cfe_l2", "pcfe_l0", "scfe_l0"]


def test_smoke_run_writes_results(run_nb, tmp_path):
    out = tmp_path / "run"
    run_nb(NB, preset="smoke", out_dir=str(out))
    res = json.loads((out / "results.json").read_text())
    cfg, rows, meta = res["config"], res["rows"], res["metadata"]
    assert cfg["preset"] == "smoke" and cfg["dataset"] == "digits" and cfg["target_modes"] == ["random", "deterministic"]
    assert list(cfg["methods"]) == METHODS
    # p-CFE is plausible (τ > 0, a density fitted by its hook); S-CFE is the same solver at τ = 0
    assert cfg["methods"]["pcfe_l0"]["tau"] > 0 and cfg["methods"]["pcfe_l0"]["density"] == "kde"
    assert "tau" not in cfg["methods"]["scfe_l0"]
    assert meta["parameter_sources"]["dataset"] == "preset smoke" and meta["parameter_sources"]["out_dir"] == "explicit"
    # one Original row per seed, one row per (method, target mode) per seed
    got = sorted((r["method"], r["target_mode"]) for r in rows)
    assert got == sorted([("original", "—")] + [(m, t) for m in METHODS for t in ("random", "deterministic")])
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["train_acc"] <= 1.0
        h = r["history"]  # the curves of Figs 13-21: one entry per epoch
        assert len(h["acc"]) == len(h["val_acc"]) == cfg["epochs" if r["method"] != "original" else "source_epochs"]
        if r["method"] != "original":
            assert 0.0 <= r["flip_rate"] <= 1.0 and r["n"] == 200 and r["mean_l2"] >= 0
    assert meta["wall_time_s"] > 0 and meta["versions"]["torch"]
    csv = pd.read_csv(out / "results.csv")
    assert {"seed", "method", "target_mode", "test_acc", "train_acc", "flip_rate", "perturbed_train_acc"} <= set(csv.columns)
    assert len(csv) == len(rows)
    for f in ("curves_R.png", "curves_D.png", "samples.png", "summary.csv", "test_accuracy.csv", "claims.csv",
              "methods.csv", "tau_ablation.csv", "rerun_noise.csv", "outcomes.npz"):
        assert (out / f).stat().st_size > 0, f
    # App. B's claims per method × target mode, each with its interval; verdicts only from the intervals
    claims = pd.read_csv(out / "claims.csv")
    assert len(claims) == 2 * len(METHODS) * 2
    assert set(claims["verdict"]) <= {"holds", "contradicted", "inconclusive"}
    assert (claims.ci_low <= claims.effect + 1e-9).all() and (claims.effect <= claims.ci_high + 1e-9).all()
    want = np.where(claims.ci_low > claims.threshold, "holds", np.where(claims.ci_high < claims.threshold, "contradicted", "inconclusive"))
    assert list(claims.verdict) == list(want)
    assert sorted(set(claims.threshold)) == [-10.0, 10.0] and claims.rerun_noise.notna().all()
    # the chance claim's effect is the test accuracy minus chance (10%), in points, from the rows
    r0 = next(r for r in rows if r["method"] == "pgd_l2" and r["target_mode"] == "random")
    assert claims.effect[0] == pytest.approx(100 * r0["test_acc"] - 10, abs=1e-3)
    z = np.load(out / "outcomes.npz")
    assert z["seed0/R/pgd_l2/test"].mean() == pytest.approx(r0["test_acc"])
    assert len(pd.read_csv(out / "tau_ablation.csv")) == 2 and len(pd.read_csv(out / "rerun_noise.csv")) == len(METHODS)


@pytest.mark.parametrize("params, message", [
    (dict(preset="nope"), "preset='nope' is not one of 'smoke', 'default', 'paper'"),
    (dict(preset="smoke", epoch=5), "unknown parameter 'epoch' (did you mean 'epochs'?)"),
    (dict(preset="smoke", epochs=-1), "epochs=-1 must be an integer >= 1"),
    (dict(preset="smoke", methods={"pgd_l2": {"epss": 2.0}}), "methods.pgd_l2 has unknown parameter(s) ['epss']"),
    (dict(preset="smoke", methods={"pcfe_l0": {"tau": -1.0}}), "methods.pcfe_l0.tau=-1.0 must be a finite number >= 0"),
    (dict(preset="smoke", pgd_l2_eps=0), "methods.pgd_l2.eps=0 must be a finite number > 0"),
    (dict(preset="smoke", dataset="svhn"), "dataset='svhn' is not one of 'digits', 'mnist', 'fmnist', 'cifar10'"),
    (dict(preset="paper", dataset="digits"), "preset='paper' is App. B on 'mnist', 'fmnist', 'cifar10'"),
    (dict(preset="smoke", dataset="mnist"), "dataset='mnist' is read from disk: set data_root"),
    (dict(preset="smoke", dataset="mnist", data_root="EMPTY"), "load_mnist: MNIST files not found"),
])
def test_bad_parameters_stop_early(run_bad_params, tmp_path, params, message):
    err = run_bad_params(NB, **params)
    out = tmp_path / "run"
    assert message in str(err)
    assert err.exec_count <= 5  # stopped in the first cells (parameters, presets, set-up, data), before any training
    assert not (out / "results.json").exists() and not (out / "cache").exists()


def test_paper_preset_runs_on_real_format_data(run_nb, tmp_path):
    """The `paper` preset's code path (App. B on MNIST: the IDX reader, the Kumano ConvNet at width 1, SGD, the
    paper's budgets, the authors' PGD step rule, p-CFE with τ > 0, R and D targets) end to end on a 40-image MNIST
    fixture in the real IDX format, shrunk to one epoch and two steps: it checks the plumbing, not the figures."""
    from cfx_nb.data import _write_mnist_fixture
    root = _write_mnist_fixture(tmp_path / "data", n_train=40, n_test=20)
    out = tmp_path / "run"
    run_nb(NB, preset="paper", data_root=str(root), out_dir=str(out), epochs=1, source_epochs=1, steps=2, seeds=[0],
           device="cpu", num_threads=1)
    res = json.loads((out / "results.json").read_text())
    cfg = res["config"]
    assert (cfg["preset"], cfg["dataset"], cfg["model"], cfg["width"], cfg["optimizer"]) == ("paper", "mnist", "small_cnn", 1.0, "sgd")
    ms = cfg["methods"]
    assert (ms["pgd_l2"]["eps"], ms["pgd_linf"]["eps"], ms["pgd_l2"]["step_rule"]) == (2.0, 0.3, "authors")
    assert (ms["cfe_l2"]["lam"], ms["cfe_l2"]["lr"], ms["pcfe_l0"]["L0"], ms["scfe_l0"]["search_steps"]) == (0.1, 0.01, 1e-4, 5)
    assert ms["pcfe_l0"]["tau"] > 0 and all(p["steps"] == 2 for p in ms.values())
    assert res["metadata"]["parameter_sources"]["methods"].startswith("explicit (alias")
    got = sorted((r["method"], r["target_mode"]) for r in res["rows"])
    assert got == sorted([("original", "—")] + [(m, t) for m in METHODS for t in ("random", "deterministic")])
    assert all(r["n"] == 40 for r in res["rows"] if r["method"] != "original")


@pytest.mark.parametrize("preset, n_seeds, n_train, pixels", [("smoke", 1, 200, 12 * 12), ("paper", 3, 60000, 28 * 28)])
def test_dry_run_shows_the_cost_card_and_trains_nothing(run_nb, tmp_path, preset, n_seeds, n_train, pixels):
    """`dry_run=True` (the paper preset without data_root): the chosen preset's cost card at the data's size (smoke: its
    200 digits at 12 px; paper: MNIST's 60,000 training images), no model trained, every other section a one-line note."""
    out = tmp_path / "run"
    nb = run_nb(NB, preset=preset, dry_run=True, out_dir=str(out), device="cpu", num_threads=1)
    assert not (out / "cache").exists() and not list(out.glob("*.png")) and not (out / "outcomes.npz").exists()
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["dry_run"] is True and res["config"]["data_root"] is None and res["rows"] == []
    card = pd.read_csv(out / "cost_card.csv", index_col=0).set_index("stage")
    assert card.loc["source model: training", "count"] == n_seeds
    # perturbed sets on disk: one float32 copy of the training set per seed × target mode (R, D) and method
    assert card.loc["pgd_l2: perturb the training set", "count"] == 2 * n_seeds
    assert card.loc["pgd_l2: perturb the training set", "disk_gb"] == pytest.approx(2 * n_seeds * n_train * pixels * 4 / 1e9)
    assert ("rerun check (seed 0's fresh models, first target mode)" in card.index) == (preset == "smoke")
    assert (card.hours > 0).all() and card.hours["TOTAL"] == pytest.approx(card.hours.drop("TOTAL").sum())
    md = ["".join(o.get("data", {}).get("text/markdown", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert sum("dry run: nothing was trained" in m for m in md) == 4  # data, tables, figures, claims
    assert sum(m.startswith("**Dry run**") and f"preset `{preset}`" in m for m in md) == 1
