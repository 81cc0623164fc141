"""cfx_nb.robustness: the claims of paper 1 judged on synthetic outcomes (a clear effect holds, none is inconclusive,
an opposite one is contradicted), the clustered bootstrap, augmentation, and the cost card's counts."""
import math

import numpy as np
import pytest
import torch

from cfx_nb.robustness import (RandomCropFlip, ce_spec, claim_ce_accuracy, claims_close_far, clustered_effect, contrast,
                               robustness_cost_card, robustness_experiment, _ce_evals)

TINY = dict(seeds=[0, 1, 2], datasets=["digits"], image_size=8, n_train=None, ddpm_channels=[8, 16], ddpm_layers=1, ddpm_epochs=3,
            ddpm_batch_size=64, ddpm_lr=2e-3, p_uncond=0.1, guidance_scale=0.0, sample_steps=2, model="small_cnn", width=0.25,
            clf_epochs=2, clf_batch_size=64, clf_optimizer="adam", clf_lr=2e-3, clf_lr_svhn=None, clf_weight_decay=0.0,
            clf_schedule="none", augment="none", adv_eps=1.0, adv_steps=3, n_eval=20, eval_steps=1, sigma_ce=0.5,
            temperature=None, ce_steps=5, sweeps=2, n_ce=4, ce_samples=2, n_train_ce=6, ablation_sigmas=[0.5],
            ablation_temperatures=None, ablation_steps=[5], ablation_guidance=[0.0], guided_start_t=1.0, n_bins=2,
            rerun_check=False, dry_run=False)


def _sc(p_std, p_rob, N=60, K=4, S=2, seeds=(0, 1, 2), seed=0):
    "CE predictions where the standard / robust classifier hits the target with probability p_std / p_rob."
    g = torch.Generator().manual_seed(seed)
    tg = torch.arange(K)[None, :, None].expand(N, K, S)
    pred = {}
    for s in seeds:
        for kind, p in (("standard", p_std), ("robust", p_rob)):
            hit = torch.rand(N, K, S, generator=g) < p
            pred[s, kind] = torch.where(hit, tg, (tg + 1) % K).to(torch.int16)
    return {"dist": torch.rand(N, K, S, generator=g), "pred": pred}


@pytest.mark.parametrize("p_std, p_rob, verdict", [(0.8, 0.4, "holds"), (0.6, 0.6, "inconclusive"), (0.3, 0.7, "contradicted")])
def test_claim1_verdicts(p_std, p_rob, verdict):
    sc = _sc(p_std, p_rob)
    y = torch.arange(60) % 4
    c = claim_ce_accuracy("digits", {"neighbourhood": "gaussian", "width": 0.5, "method": "posterior", "guidance": 0.0}, sc, y,
                          torch.ones(60, dtype=torch.bool), [0, 1, 2])
    assert c.verdict == verdict and c.n_seeds == 3 and c.ci[0] <= c.effect <= c.ci[1]
    assert abs(c.effect - 100 * (p_std - p_rob)) < 10


def test_claim1_without_controlled_originals_is_inconclusive():
    c = claim_ce_accuracy("digits", {"neighbourhood": "boltzmann", "width": 0.06, "method": "guided", "guidance": 0.0}, _sc(0.9, 0.1),
                          torch.arange(60) % 4, torch.zeros(60, dtype=torch.bool), [0, 1, 2])
    assert c.verdict == "inconclusive" and math.isnan(c.effect) and "no original" in c.note and "guided" in c.comparison


def test_claim2_close_far_contrasts():
    rng = np.random.default_rng(0)
    N = 200
    far, near = np.r_[np.ones(50), np.zeros(150)] > 0, np.r_[np.zeros(150), np.ones(50)] > 0
    conf = {(s, "robust"): np.clip(0.5 + 0.3 * far - 0.3 * near + 0.05 * rng.standard_normal(N), 0, 1) for s in range(3)}
    conf.update({(s, "standard"): np.clip(0.9 + 0.02 * rng.standard_normal(N), 0, 1) for s in range(3)})
    correct = {k: (v > 0.5).astype(float) for k, v in conf.items()}
    claims = claims_close_far("digits", conf, correct, far, near, [0, 1, 2])
    assert [c.verdict for c in claims] == ["holds", "holds", "holds"]
    assert abs(claims[0].effect - 60) < 3  # 0.8 − 0.2 in points of confidence


def test_clustered_effect_is_clustered_by_image():
    "Duplicating every image's rows (perfectly correlated units) must not narrow the interval of an image-level bootstrap."
    rng = np.random.default_rng(1)
    far = np.r_[np.ones(30), np.zeros(30)]
    v = 0.1 * far + 0.2 * rng.standard_normal(60)
    f1 = np.stack([far * v, far, (1 - far) * v, 1 - far], 1)
    a = clustered_effect([f1], contrast, seed=3)
    b = clustered_effect([2 * f1], contrast, seed=3)  # each image counts twice: same images, same clusters
    assert a["ci"] == pytest.approx(b["ci"]) and a["effect"] == pytest.approx(b["effect"])


def test_crop_flip_is_seeded_by_the_global_generator():
    x = torch.rand(5, 3, 8, 8)
    torch.manual_seed(4); a = RandomCropFlip(2)(x)
    torch.manual_seed(4); b = RandomCropFlip(2)(x)
    assert torch.equal(a, b) and a.shape == x.shape


def test_cost_card_counts_and_projects():
    E = robustness_experiment("t10", {"tiny": TINY})
    card = robustness_cost_card(E, "tiny", "cpu", probe=2)
    rows = card.set_index("stage")
    assert rows.loc["digits: DDPM training", "count"] == 3 * 1078
    assert rows.loc["digits: classifiers (standard + robust) × seeds", "count"] == 3 * 2 * 1078 * (2 + 3)
    assert rows.loc["digits: CE sampling (UNet evaluations)", "count"] == _ce_evals(E.resolve({"preset": "tiny"})[0], "digits")
    assert (card.hours.iloc[:4] > 0).all() and card.hours.iloc[-1] == pytest.approx(card.hours.iloc[:-1].sum())
    assert rows.loc["digits: rerun check (seed 0's two classifiers)", "count"] == 0  # rerun_check=False
    cfg = E.resolve({"preset": "tiny"})[0]
    # main Gaussian set: 4 images × 10 classes × 2 CEs × 5 steps × 2 (Jacobian probe)
    assert ce_spec(cfg, "gaussian", 0.5, samples=2)["steps"] == 5 and _ce_evals(cfg, "digits") > 4 * 10 * 2 * 5 * 2
