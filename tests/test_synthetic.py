"""cfx_nb.synthetic without training: the schema (unknown names, aliases, method parameters), budgets scaled
with d, the grid, and App. A's claims from per-sample outcomes."""
import math

import numpy as np
import pytest

from cfx_nb.methods import METHODS, MethodSpec, register_method
from cfx_nb.experiment import Param
from cfx_nb.synthetic import (SYNTHETIC_BUDGETS, Budget, _key, _test_presets, appendix_a_claims, grid_jobs, point_params,
                              register_budget, synthetic_experiment, tau_ablation)


@pytest.fixture
def exp():
    return synthetic_experiment("08_test", _test_presets())


def test_schema_checks_names_and_method_parameters(exp):
    with pytest.raises(ValueError, match=r"08_test: unknown parameter 'epoch' \(did you mean 'epochs'\?\)"):
        exp.resolve({"preset": "tiny", "epoch": 5})
    with pytest.raises(ValueError, match=r"methods\.scfe_l0 has unknown parameter\(s\) \['tau'\]"):
        exp.resolve({"preset": "tiny", "methods": {"scfe_l0": {"tau": 1.0}}})
    cfg, src = exp.resolve({"preset": "tiny", "pcfe_tau": 0.5, "cfe_lam": 0.1, "methods": ["cfe_l2", "pcfe_l0"]})
    assert list(cfg["methods"]) == ["cfe_l2", "pcfe_l0"]
    assert cfg["methods"]["pcfe_l0"]["tau"] == 0.5 and cfg["methods"]["cfe_l2"]["lam"] == 0.1
    assert cfg["methods"]["pcfe_l0"]["gamma"] == 1.0  # the preset's settings of a listed method are kept
    assert src["methods"].startswith("explicit")


def test_point_params_scale_budgets_with_d_and_set_the_box(exp):
    cfg, _ = exp.resolve({"preset": "tiny"})
    for d in (4, 100, 10_000):
        assert point_params(cfg, "pgd_l2", "gaussian", d)["eps"] == pytest.approx(cfg["pgd_l2_scale"] * math.sqrt(d))
        assert point_params(cfg, "cfe_l2", "uniform", d)["steps"] == max(1, round(cfg["ratio"] * d))
    p = point_params(cfg, "pcfe_l0", "uniform", 3, density_cap=10)
    assert p["density_dim"] == 3 and (p["lo"], p["hi"]) == (-1.0, 1.0)
    assert (point_params(cfg, "scfe_l0", "gaussian", 8)["lo"], point_params(cfg, "scfe_l0", "gaussian", 8)["hi"]) == (None, None)
    assert point_params(cfg, "pgd_linf", "uniform", 8, x=0.2)["eps"] == 0.2


def test_a_new_method_joins_the_grid_with_one_registration(exp):
    register_method(MethodSpec("toy_shift", "Toy shift", lambda step: (lambda model, x, target: x + step),
                               {"step": Param("float", "shift", gt=0)}, {"step": 0.1}))
    try:
        cfg, _ = exp.resolve({"preset": "tiny", "methods": ["toy_shift"], "kinds": ["uniform"]})
        jobs = grid_jobs(cfg)
        assert {j[2] for j in jobs} == {"centre", "d", "n", "m"}  # no budget panel without a registered Budget
        register_budget("toy_shift", Budget("ratios", "shift", lambda p, x, d: {**p, "step": x}, None, ("step",)))
        assert {j[2] for j in grid_jobs(cfg)} == {"centre", "d", "n", "m", "budget"}
        assert point_params(cfg, "toy_shift", "uniform", 8, x=0.7)["step"] == 0.7
    finally:
        METHODS.pop("toy_shift", None); SYNTHETIC_BUDGETS.pop("toy_shift", None)


def test_claims_are_paired_effects_with_interval_verdicts(exp):
    cfg, _ = exp.resolve({"preset": "tiny", "kinds": ["gaussian"], "methods": ["pcfe_l0", "scfe_l0"], "seeds": [0, 1, 2, 3]})
    rng, out = np.random.default_rng(1), {}
    for s in cfg["seeds"]:
        out[_key(s, "gaussian", "noise", "centre", None)] = (rng.random(300) < 0.5).astype(np.uint8)
        for m, p in (("pcfe_l0", 0.95), ("scfe_l0", 0.75)):
            out[_key(s, "gaussian", m, "centre", None)] = (rng.random(300) < p).astype(np.uint8)
            for sweep, lo, hi in (("d", 4, 8), ("m", 8, 16)):
                out[_key(s, "gaussian", m, sweep, lo)] = (rng.random(300) < 0.9).astype(np.uint8)
                out[_key(s, "gaussian", m, sweep, hi)] = (rng.random(300) < 0.6).astype(np.uint8)
    claims = appendix_a_claims(cfg, out)
    assert [c.verdict for c in claims] == ["holds", "contradicted", "contradicted"] * 2
    assert claims[0].effect == pytest.approx(100 * np.mean([out[_key(s, "gaussian", "pcfe_l0", "centre", None)].mean()
                                                            - out[_key(s, "gaussian", "noise", "centre", None)].mean()
                                                            for s in cfg["seeds"]]))
    ab = tau_ablation(cfg, out)
    assert len(ab) == 1 and ab.ci_low[0] > 0  # τ > 0 is 20 points better here, and the interval says so
