"""nbs/10_counterfactual_robustness.ipynb through papermill: the smoke preset end to end, bad parameters stopping
it in its first cells (before any training), the dry run's cost card, and the paper preset's code path on
CIFAR-10/SVHN-format fixtures shrunk to CPU size."""
import json
from pathlib import Path

import pandas as pd
import pytest

pm = pytest.importorskip("papermill")

NB = Path(__file__).resolve().parents[1] / "nbs" / "10_counterfactual_robustness.ipynb"
VERDICTS = {"holds", "contradicted", "inconclusive"}


def _first_work_cell(out_nb: Path) -> int:
    cells = json.loads(out_nb.read_text())["cells"]
    return next(i for i, c in enumerate(cells) if c["cell_type"] == "code" and "run_robustness(run" in "".join(c["source"]))


def test_smoke_run_writes_results(run_nb, tmp_path):
    out = tmp_path / "run"
    run_nb(NB, preset="smoke", out_dir=str(out), device="cpu", threads=1)
    res = json.loads((out / "results.json").read_text())
    cfg, rows, meta = res["config"], res["rows"], res["metadata"]
    assert cfg["preset"] == "smoke" and cfg["num_threads"] == 1 and meta["parameter_sources"]["num_threads"] == "explicit (alias threads)"
    assert {r["kind"] for r in rows} >= {"classifier", "counterfactuals", "ce_classifier", "sanity", "distance_bin", "claim"}
    ce = pd.read_csv(out / "counterfactuals.csv")
    assert set(ce["method"]) == {"posterior", "guided"} and set(ce["guidance"]) == {0.0, 1.0}  # paper-style and CFG ablations
    assert set(ce["neighbourhood"]) == {"gaussian", "boltzmann"}
    for r in (r for r in rows if r["kind"] == "counterfactuals"):
        for k in ("acc_standard", "acc_robust", "ce_dist_acc"):
            assert 0.0 <= r[k] <= 1.0
    curve = [r for r in rows if r["kind"] == "ce_classifier"]
    assert {r["n_ce"] for r in curve} == {1, 2} and {r["steps"] for r in curve} == {2, 4}  # against CEs averaged and steps
    claims = pd.read_csv(out / "claims.csv")
    assert len(claims) == 7 + 1 + 3  # claim 1 on 7 CE sets, claim 3, claim 2 (confidence, accuracy, robust − standard)
    assert set(claims.verdict) <= VERDICTS
    assert (claims[claims.verdict == "holds"].ci_low > claims[claims.verdict == "holds"].threshold).all()
    sanity = pd.read_csv(out / "sanity.csv")
    assert list(sanity.sigma_ce.round(2)) == [0.15, 0.3] and (sanity.noised_ratio > 0).all()
    for f in ("samples_digits.png", "counterfactuals_digits.png", "analysis.png", "results.csv"):
        assert (out / f).stat().st_size > 0, f
    assert list((out / "cache").glob("ddpm-digits-*/epoch_*.pt"))  # the DDPM is cached (and would be resumed)
    keys = [json.loads(p.read_text()) for p in (out / "cache").glob("ce-digits-test-*/config.json")]
    assert keys and all("sampler_version" in k and k["method"] in ("posterior", "guided") for k in keys)


@pytest.mark.parametrize("params, message", [
    (dict(preset="fast"), "10_counterfactual_robustness: preset='fast' is not one of 'smoke', 'default', 'paper'"),
    (dict(preset="smoke", model="wrn-bogus"), "10_counterfactual_robustness: model='wrn-bogus' is not one of"),
    (dict(preset="smoke", model="wrn-41-2"), "10_counterfactual_robustness: model='wrn-41-2' cannot be built for digits"),
    (dict(preset="smoke", epoch=5), "10_counterfactual_robustness: unknown parameter 'epoch'"),
    (dict(preset="smoke", ce_samples=0), "10_counterfactual_robustness: ce_samples=0 must be an integer >= 1"),
    (dict(preset="smoke", datasets=["cifar10"]), "datasets=['cifar10'] need the real data: set data_root"),
    (dict(preset="paper", data_root="EMPTY"), "lacks ['cifar-10-batches-py'] for dataset 'cifar10'"),
    (dict(preset="smoke", guidance_scale=1.0, p_uncond=0.0), "need p_uncond > 0"),
    (dict(preset="smoke", threads=0), "num_threads=0 must be an integer >= 1"),
])
def test_bad_parameters_stop_early(run_bad_params, tmp_path, params, message):
    err = run_bad_params(NB, **params)
    assert message in str(err), str(err)[-600:]
    assert err.cell_index < _first_work_cell(tmp_path / "out.ipynb")  # stopped before any training
    assert not (tmp_path / "run" / "cache").exists() and not (tmp_path / "run" / "results.json").exists()


def test_dry_run_shows_the_paper_cost_card_and_trains_nothing(run_nb, tmp_path):
    out = tmp_path / "run"
    run_nb(NB, preset="paper", dry_run=True, out_dir=str(out), device="cpu", num_threads=1)
    card = pd.read_csv(out / "cost_card.csv")
    stages = " ".join(card.stage)
    for s in ("cifar10: DDPM training", "svhn: CE sampling", "cifar10: classifiers", "TOTAL"):
        assert s in stages, s
    assert (card.hours.dropna() >= 0).all() and card.hours.iloc[-1] == pytest.approx(card.hours.iloc[:-1].sum())
    assert card.loc[card.stage == "cifar10: DDPM training", "count"].item() == 400 * 50000
    assert not (out / "cache").exists()


def _notebook_experiment():
    "The notebook's own Experiment (its presets cell, executed here)."
    cells = json.loads(NB.read_text())["cells"]
    src = next("".join(c["source"]) for c in cells if c["cell_type"] == "code" and "EXPERIMENT = robustness_experiment" in "".join(c["source"]))
    ns = {}
    exec(src, ns)
    return ns["EXPERIMENT"]


@pytest.mark.slow
def test_paper_preset_runs_on_real_format_data(tmp_path, monkeypatch):
    """The `paper` preset's code path — CIFAR-10 and SVHN readers, WideResNet, SGD with warm-up + cosine, crop/flip
    augmentation, SVHN's own learning rate, both neighbourhoods, the guided and CFG ablations, the figures — on fixtures
    in the real formats, shrunk to CPU size (tiny UNet, WRN-10-1, 1 epoch, 2 steps, 1 seed). It runs the notebook's
    presets and the same library calls as the notebook in this process, because torchvision's md5 check of the real
    release (which a fixture cannot match) is bypassed by monkeypatching, as tests/test_data.py does. Plumbing, not figures."""
    import torch
    import torchvision
    from cfx_nb.robustness import load_data, report_figures, run_robustness
    from cfx_nb.testing import write_cifar10_fixture, write_svhn_fixture
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets.SVHN, "_check_integrity", lambda self: True)
    root = write_cifar10_fixture(tmp_path / "data", n_per_batch=4, n_test=6)
    write_svhn_fixture(root, n_train=12, n_test=5)
    out, threads = tmp_path / "run", torch.get_num_threads()
    try:
        run = _notebook_experiment().setup(dict(
            preset="paper", data_root=str(root), out_dir=str(out), seeds=[0], device="cpu", num_threads=1, ddpm_channels=[16, 32],
            ddpm_layers=1, ddpm_epochs=1, ddpm_batch_size=16, model="wrn-10-1", clf_epochs=1, clf_batch_size=16, adv_steps=1,
            n_eval=5, eval_steps=1, ce_steps=2, sample_steps=2, n_ce=3, ce_samples=2, n_train_ce=4, n_bins=2, ablation_steps=[2],
            sweeps=1))
        report = run_robustness(run, load_data(run))
        report.save()
        report_figures(report)
    finally:
        torch.set_num_threads(threads)
    res = json.loads((out / "results.json").read_text())
    cfg = res["config"]
    assert (cfg["datasets"], cfg["clf_optimizer"], cfg["clf_lr"], cfg["clf_lr_svhn"], cfg["clf_schedule"], cfg["augment"]) == \
           (["cifar10", "svhn"], "sgd", 0.1, 0.01, "warmup_cosine", "auto")
    clf = {(k["dataset"], k["adv"] is not None): k for k in
           (json.loads(p.read_text()) for p in (out / "cache").glob("clf-*/config.json"))}
    assert clf["cifar10", False]["lr"] == 0.1 and clf["svhn", True]["lr"] == 0.01
    assert clf["cifar10", True]["augment"] == "RandomCropFlip(pad=4, flip=True)"
    assert clf["svhn", False]["augment"] == "RandomCropFlip(pad=4, flip=False)"  # digits are not flip-invariant
    assert clf["svhn", False]["schedule"] == "WarmupCosine(warmup=1)"
    assert {r["dataset"] for r in res["rows"] if r["kind"] == "classifier"} == {"cifar10", "svhn"}
    claims = pd.read_csv(out / "claims.csv")
    assert claims.comparison.str.contains(r"\[cifar10\] CE-distance classifier accuracy \(2 CEs per class\) − 80 %", regex=True).any()
    assert set(claims.verdict) <= VERDICTS
    for f in ("counterfactuals_cifar10.png", "counterfactuals_svhn.png", "analysis.png"):
        assert (out / f).stat().st_size > 0, f
