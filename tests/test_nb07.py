"""nbs/07_natural_images.ipynb through papermill: the smoke preset end to end, and bad parameters stopping it early."""
import json
from pathlib import Path

import pandas as pd
import pytest

pm = pytest.importorskip("papermill")

NB = Path(__file__).resolve().parents[1] / "nbs" / "07_natural_images.ipynb"




def test_smoke_run_writes_results(run_nb, tmp_path):
    out = tmp_path / "run"
    run_nb(NB, preset="smoke", out_dir=str(out))
    res = json.loads((out / "results.json").read_text())
    cfg, rows, meta = res["config"], res["rows"], res["metadata"]
    assert cfg["preset"] == "smoke" and cfg["dataset"] == "digits" and cfg["target_modes"] == ["random", "deterministic"]
    # one Original row per seed, one row per (method, target mode) per seed
    methods = ["pgd_l2", "pgd_linf", "cfe_l2", "pcfe_l0"]
    got = sorted((r["method"], r["target_mode"]) for r in rows)
    want = sorted([("original", "—")] + [(m, t) for m in methods for t in ("random", "deterministic")])
    assert got == want
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["train_acc"] <= 1.0
        h = r["history"]  # the curves of Figs 13-21: one entry per epoch
        assert len(h["acc"]) == len(h["val_acc"]) == cfg["epochs" if r["method"] != "original" else "source_epochs"]
        if r["method"] != "original":
            assert 0.0 <= r["flip_rate"] <= 1.0 and r["n"] == 200 and r["mean_l2"] >= 0
    # the deterministic targets are (y + 1) mod C: every perturbation-trained row says which mode it used
    assert {r["target_mode"] for r in rows if r["method"] != "original"} == {"random", "deterministic"}
    assert meta["wall_time_s"] > 0 and meta["versions"]["torch"]
    csv = pd.read_csv(out / "results.csv")
    assert {"seed", "method", "target_mode", "test_acc", "train_acc", "flip_rate", "perturbed_train_acc"} <= set(csv.columns)
    assert len(csv) == len(rows)
    for f in ("curves_R.png", "curves_D.png", "samples.png", "summary.csv", "test_accuracy.csv", "claims.csv"):
        assert (out / f).stat().st_size > 0, f
    claims = pd.read_csv(out / "claims.csv")
    assert set(claims["verdict"]) <= {"holds", "does not hold"} and len(claims) == 9


@pytest.mark.parametrize("params, message", [
    (dict(preset="nope"), "preset='nope' is not one of 'smoke', 'default', 'paper'"),
    (dict(preset="smoke", epochs=-1), "epochs=-1 must be an integer >= 1"),
    (dict(preset="smoke", dataset="svhn"), "dataset='svhn' is not one of 'digits', 'mnist', 'fmnist', 'cifar10'"),
    (dict(preset="smoke", dataset="mnist", data_root="EMPTY"), "load_mnist: MNIST files not found"),
])
def test_bad_parameters_stop_early(run_bad_params, tmp_path, params, message):
    err = run_bad_params(NB, **params)
    out = tmp_path / "run"
    assert message in str(err)
    assert err.exec_count <= 5  # stopped in the first cells (parameters, imports, checks, data), before any training
    assert not (out / "results.json").exists()


def test_paper_preset_runs_on_real_format_data(run_nb, tmp_path):
    """The `paper` preset's code path (App. B on MNIST: the IDX reader, the Kumano ConvNet at width 1, SGD, the
    paper's budgets, the authors' PGD step rule, R and D targets) end to end on a 40-image MNIST fixture in the
    real IDX format, shrunk to one epoch and two steps: it checks the plumbing, not the figures."""
    from cfx_nb.data import _write_mnist_fixture
    root = _write_mnist_fixture(tmp_path / "data", n_train=40, n_test=20)
    out = tmp_path / "run"
    run_nb(NB, preset="paper", data_root=str(root), out_dir=str(out), epochs=1, source_epochs=1, steps=2, seeds=[0],
           device="cpu", num_threads=1)
    res = json.loads((out / "results.json").read_text())
    cfg = res["config"]
    assert (cfg["preset"], cfg["dataset"], cfg["model"], cfg["width"], cfg["optimizer"]) == ("paper", "mnist", "small_cnn", 1.0, "sgd")
    assert (cfg["pgd_l2_eps"], cfg["pgd_linf_eps"], cfg["pgd_step_rule"]) == (2.0, 0.3, "authors")
    got = sorted((r["method"], r["target_mode"]) for r in res["rows"])
    assert got == sorted([("original", "—")] + [(m, t) for m in ("pgd_l2", "pgd_linf", "cfe_l2", "pcfe_l0")
                                                 for t in ("random", "deterministic")])
    assert all(r["n"] == 40 for r in res["rows"] if r["method"] != "original")
