"""nbs/08_synthetic.ipynb through papermill: the smoke grid end to end, and bad parameters stopping it early."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

pm = pytest.importorskip("papermill")

NB = Path(__file__).resolve().parents[1] / "nbs" / "08_synthetic.ipynb"
METHODS = ["pgd_l2", "pgd_linf", "cfe_l2", "pcfe_l0"]




def test_smoke_grid_writes_results(run_nb, tmp_path):
    out = tmp_path / "run"
    run_nb(NB, preset="smoke", out_dir=str(out))
    res = json.loads((out / "results.json").read_text())
    cfg, rows, meta = res["config"], res["rows"], res["metadata"]
    assert cfg["preset"] == "smoke" and cfg["kinds"] == ["uniform", "gaussian"] and meta["wall_time_s"] > 0
    df = pd.DataFrame(rows)
    # every (kind, method) has the centre and the four sweeps of Figs 5-12
    sizes = {"centre": 1, "d": len(cfg["dims"]), "n": len(cfg["n_naturals"]), "m": len(cfg["n_noises"])}
    for (kind, method), g in df.groupby(["kind", "method"]):
        budget = {"pgd_l2": "pgd_l2_scales", "pgd_linf": "pgd_linf_epss"}.get(method, "ratios")
        assert g.sweep.value_counts().to_dict() == {**sizes, "budget": len(cfg[budget])}
    assert set(df.method) == set(METHODS) and len(df) == 2 * 4 * (sum(sizes.values()) + 2)  # smoke budgets: 2 values each
    for c in ("acc", "noise_acc", "fit_acc", "f_train_acc", "flip_rate", "l0_frac"):
        assert df[c].between(0, 1).all(), c
    # the budgets hold: ε∞ for PGD ℓ∞, ε₂ = scale·√d for PGD ℓ2 (mean over samples <= the radius)
    linf = df[df.method == "pgd_linf"]
    assert (linf.mean_linf <= linf.params.map(lambda p: p["eps"]) + 1e-5).all()
    l2 = df[df.method == "pgd_l2"]
    assert (l2.mean_l2 <= l2.params.map(lambda p: p["eps"]) + 1e-5).all()
    assert all(math.isclose(p["eps"], cfg["pgd_l2_scale"] * math.sqrt(d)) for p, d in zip(l2[l2.sweep == "d"].params, l2[l2.sweep == "d"].d))
    # CFE iterations follow ratio·d; the box is the data's ([-1, 1] for uniform, none for Gaussian)
    cfe = df[(df.method == "cfe_l2") & (df.sweep == "d")]
    assert [p["steps"] for p in cfe.params] == [max(1, round(cfg["ratio"] * d)) for d in cfe.d]
    assert {(p["lo"], p["hi"]) for p in df[df.kind == "uniform"].params} == {(-1.0, 1.0)}
    assert {(p["lo"], p["hi"]) for p in df[(df.kind == "gaussian") & (df.method == "pcfe_l0")].params} == {("-inf", "inf")}
    assert {(p["lo"], p["hi"]) for p in df[(df.kind == "gaussian") & (df.method != "pcfe_l0")].params} == {(None, None)}
    # the centre is computed once and reused by the sweeps that pass through it (same cached row)
    c = df[(df.sweep == "centre")].set_index(["kind", "method"]).acc
    dd = df[(df.sweep == "d") & (df.d == cfg["dim"])].set_index(["kind", "method"]).acc
    assert c.sort_index().equals(dd.sort_index())
    distinct = df.assign(p=df.params.map(lambda p: json.dumps(p, sort_keys=True)))[["kind", "method", "d", "n", "m", "p"]].drop_duplicates()
    assert len(list((out / "cache").glob("lfp-*/row.json"))) == len(distinct)  # one cached row per distinct run
    csv = pd.read_csv(out / "results.csv")
    assert {"seed", "kind", "method", "sweep", "x", "d", "n", "m", "acc", "noise_acc", "flip_rate", "l0_frac"} <= set(csv.columns)
    for f in [f"fig{k:02d}_{m}_{kd}.png" for k, m, kd in [(5, "cfe_l2", "uniform"), (6, "cfe_l2", "gaussian"),
              (7, "pcfe_l0", "uniform"), (8, "pcfe_l0", "gaussian"), (9, "pgd_l2", "uniform"), (10, "pgd_l2", "gaussian"),
              (11, "pgd_linf", "uniform"), (12, "pgd_linf", "gaussian")]] + ["centre.csv", "claims.csv"]:
        assert (out / f).stat().st_size > 0, f
    claims = pd.read_csv(out / "claims.csv")
    assert set(claims.verdict) <= {"holds", "does not hold"} and len(claims) == 2 * 4 * 3


@pytest.mark.parametrize("params, message", [
    (dict(preset="nope"), "preset='nope' is not one of 'smoke', 'default', 'paper'"),
    (dict(preset="smoke", epochs=-1), "epochs=-1 must be an integer >= 1"),
    (dict(preset="smoke", kinds=["laplace"]), "kinds='laplace' is not one of 'uniform', 'gaussian'"),
    (dict(preset="smoke", data_root="/data/synthetic"), "data_root must be None"),
])
def test_bad_parameters_stop_early(run_nb, tmp_path, params, message):
    out = tmp_path / "run"
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_nb(NB, out_dir=str(out), **params)
    assert message in str(e.value)
    assert e.value.exec_count <= 4  # the checks cell, before any data or training
    assert not (out / "results.json").exists()
