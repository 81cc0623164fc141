"""nbs/08_synthetic.ipynb through papermill: the smoke grid end to end (every method of the registry, App. A's
claims with intervals, the τ ablation, the rerun noise, the saved files), and bad parameters stopping it in
its first cells, before any data or training."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pm = pytest.importorskip("papermill")

NB = Path(__file__).resolve().parents[1] / "nbs" / "08_synthetic.ipynb"
METHODS = ["pgd_l2", "pgd_linf", "cfe_l2", "pcfe_l0", "scfe_l0"]
FIGS = [(5, "cfe_l2", "uniform"), (6, "cfe_l2", "gaussian"), (7, "pcfe_l0", "uniform"), (8, "pcfe_l0", "gaussian"),
        (9, "pgd_l2", "uniform"), (10, "pgd_l2", "gaussian"), (11, "pgd_linf", "uniform"), (12, "pgd_linf", "gaussian")]


def test_smoke_grid_writes_results(run_nb, tmp_path):
    out = tmp_path / "run"
    run_nb(NB, preset="smoke", out_dir=str(out))
    res = json.loads((out / "results.json").read_text())
    cfg, rows, meta = res["config"], res["rows"], res["metadata"]
    assert cfg["preset"] == "smoke" and cfg["kinds"] == ["uniform", "gaussian"] and meta["wall_time_s"] > 0
    assert list(cfg["methods"]) == METHODS and cfg["methods"]["pcfe_l0"]["tau"] > 0
    assert meta["parameter_sources"]["epochs"] == "preset smoke"
    df = pd.DataFrame(rows)
    # every (kind, method) has the centre and the four sweeps of Figs 5-12
    sizes = {"centre": 1, "d": len(cfg["dims"]), "n": len(cfg["n_naturals"]), "m": len(cfg["n_noises"])}
    for (kind, method), g in df.groupby(["kind", "method"]):
        budget = {"pgd_l2": "pgd_l2_scales", "pgd_linf": "pgd_linf_epss"}.get(method, "ratios")
        assert g.sweep.value_counts().to_dict() == {**sizes, "budget": len(cfg[budget])}
    assert set(df.method) == set(METHODS) and len(df) == 2 * 5 * (sum(sizes.values()) + 2)  # smoke budgets: 2 values each
    for c in ("acc", "noise_acc", "fit_acc", "f_train_acc", "flip_rate", "l0_frac"):
        assert df[c].between(0, 1).all(), c
    assert (df.to_target > 0).all() and df.to_target.notna().all()  # distance ratio to the target class's natural data
    # the budgets hold: ε∞ for PGD ℓ∞, ε₂ = scale·√d for PGD ℓ2 (mean over samples <= the radius)
    linf = df[df.method == "pgd_linf"]
    assert (linf.mean_linf <= linf.params.map(lambda p: p["eps"]) + 1e-5).all()
    l2 = df[df.method == "pgd_l2"]
    assert (l2.mean_l2 <= l2.params.map(lambda p: p["eps"]) + 1e-5).all()
    assert all(math.isclose(p["eps"], cfg["pgd_l2_scale"] * math.sqrt(d)) for p, d in zip(l2[l2.sweep == "d"].params, l2[l2.sweep == "d"].d))
    # CFE iterations follow ratio·d; the box is the data's ([-1, 1] for uniform, unbounded (None) for Gaussian)
    cfe = df[(df.method == "cfe_l2") & (df.sweep == "d")]
    assert [p["steps"] for p in cfe.params] == [max(1, round(cfg["ratio"] * d)) for d in cfe.d]
    assert {(p["lo"], p["hi"]) for p in df[df.kind == "uniform"].params} == {(-1.0, 1.0)}
    assert {(p["lo"], p["hi"]) for p in df[df.kind == "gaussian"].params} == {(None, None)}
    # p-CFE runs with τ > 0 and a density capped by the natural data; S-CFE is the same solver at τ = 0
    pc = df[df.method == "pcfe_l0"].params
    assert all(p["tau"] > 0 and 1 <= p["density_dim"] <= min(16, d) for p, d in zip(pc, df[df.method == "pcfe_l0"].d))
    assert all("tau" not in p for p in df[df.method == "scfe_l0"].params)
    # the centre is computed once and reused by the sweeps that pass through it (same cached row)
    c = df[(df.sweep == "centre")].set_index(["kind", "method"]).acc
    dd = df[(df.sweep == "d") & (df.d == cfg["dim"])].set_index(["kind", "method"]).acc
    assert c.sort_index().equals(dd.sort_index())
    distinct = df.assign(p=df.params.map(lambda p: json.dumps(p, sort_keys=True)))[["kind", "method", "d", "n", "m", "p"]].drop_duplicates()
    assert len(list((out / "cache").glob("lfp-*/row.json"))) == len(distinct)  # one cached row per distinct run
    csv = pd.read_csv(out / "results.csv")
    assert {"seed", "kind", "method", "sweep", "x", "d", "n", "m", "acc", "noise_acc", "flip_rate", "l0_frac"} <= set(csv.columns)
    for f in [f"fig{k:02d}_{m}_{kd}.png" for k, m, kd in FIGS] + ["fig_scfe_l0_uniform.png", "fig_scfe_l0_gaussian.png"]:
        assert (out / f).read_bytes()[:4] == b"\x89PNG", f
    for f in ("centre.csv", "budgets.csv", "claims.csv", "tau_ablation.csv", "rerun_noise.csv"):
        assert (out / f).stat().st_size > 0, f
    # App. A's claims: per kind and method, centre vs noise-trained, growth with d and with M; verdicts from intervals
    claims = pd.read_csv(out / "claims.csv")
    assert len(claims) == 2 * 5 * 3 and set(claims.verdict) <= {"holds", "contradicted", "inconclusive"}
    assert (claims.ci_low <= claims.effect + 1e-9).all() and (claims.effect <= claims.ci_high + 1e-9).all()
    assert ((claims.verdict == "holds") == (claims.ci_low > 0)).all() and ((claims.verdict == "contradicted") == (claims.ci_high < 0)).all()
    # the centre claim's effect is the paired accuracy difference of the rows, in points
    first = claims.iloc[0]
    cen = df[(df.sweep == "centre") & (df.kind == "uniform") & (df.method == "pgd_l2")]
    assert first.effect == pytest.approx(100 * (cen.acc - cen.noise_acc).mean(), abs=1e-3)
    assert len(pd.read_csv(out / "tau_ablation.csv")) == 2 and len(pd.read_csv(out / "rerun_noise.csv")) == 2 * 6
    outcomes = np.load(out / "outcomes.npz")
    assert outcomes["seed0/uniform/pgd_l2/centre/None"].mean() == pytest.approx(cen.acc.iloc[0])


@pytest.mark.parametrize("params, message", [
    (dict(preset="nope"), "08_synthetic: preset='nope' is not one of 'smoke', 'default', 'paper'"),
    (dict(preset="smoke", epoch=5), "08_synthetic: unknown parameter 'epoch' (did you mean 'epochs'?)"),
    (dict(preset="smoke", epochs=-1), "epochs=-1 must be an integer >= 1"),
    (dict(preset="smoke", kinds=["laplace"]), "kinds='laplace' is not one of 'uniform', 'gaussian'"),
    (dict(preset="smoke", data_root="/data/synthetic"), "data_root must be None"),
    (dict(preset="smoke", methods={"pcfe_l0": {"tau": -1.0}}), "methods.pcfe_l0.tau=-1.0"),
    (dict(preset="smoke", methods={"pgd_l2": {"epss": 1.0}}), "methods.pgd_l2 has unknown parameter(s) ['epss']"),
    (dict(preset="smoke", methods=["pgd_l3"]), "methods='pgd_l3' is not one of"),
    (dict(preset="smoke", pcfe_beta=-0.5), "methods.pcfe_l0.beta=-0.5"),
])
def test_bad_parameters_stop_early(run_bad_params, tmp_path, params, message):
    err = run_bad_params(NB, **params)
    assert message in str(err)
    cells = json.loads((tmp_path / "out.ipynb").read_text())["cells"]
    first_work = next(i for i, c in enumerate(cells) if c["cell_type"] == "code" and "run_synthetic(" in "".join(c["source"]))
    assert err.cell_index < first_work  # stopped in the parameter cells, before any data or training
    out = tmp_path / "run"
    assert not (out / "cache").exists() and not (out / "results.json").exists()
