"""cfx_nb.diffusion: the CE sampler against closed-form targets (2-D toy), DDPM training resume, bad input."""
import math

import pytest
import torch
import torch.nn as nn
from diffusers import UNet2DModel

from cfx_nb import diffusion as D
from cfx_nb.core import make_perturbation

F64 = torch.float64


# ---------------------------------------------------------------- fixtures: a tiny trained model (module-scoped)
def _tiny_unet(n_classes=3, null=True):
    torch.manual_seed(1)
    return D.make_unet(8, 1, n_classes, null_class=null, block_out_channels=(8, 16))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)


@pytest.fixture(scope="module")
def bundle():
    x, y = _data()
    return D.train_ddpm(x, y, 3, unet=_tiny_unet(), scheduler=D.make_scheduler(100), epochs=2, batch_size=16,
                        progress=False, device="cpu")


# ---------------------------------------------------------------- the sampler on the 2-D toy (exact ε*)
def test_gaussian_mixture_eps_is_the_noisy_score():
    gm, sch = D.toy_mixture(), D.make_scheduler(1000, "linear", clip_sample=False)
    t = torch.tensor([0, 10, 300, 300, 999])
    x = torch.randn(5, 2, dtype=F64, requires_grad=True)
    ac = sch.alphas_cumprod.double()[t]
    logp = torch.stack([D.GaussianMixture(ac[i].sqrt() * gm.means, ac[i] * gm.covs + (1 - ac[i]) * torch.eye(2, dtype=F64),
                                          gm.weights).log_prob(x[i:i + 1])[0] for i in range(5)])
    score = torch.autograd.grad(logp.sum(), x)[0]
    torch.testing.assert_close(gm.eps(x.detach(), t, sch.alphas_cumprod), -(1 - ac).sqrt()[:, None] * score)


def test_product_with_gaussian_matches_quadrature():
    gm, x0 = D.toy_mixture(), torch.tensor([0.4, 0.2], dtype=F64)
    m, C = gm.times_gaussian(x0, 0.4).moments()
    mq, Cq = D.grid_moments(lambda p: gm.log_prob(p) - ((p - x0) ** 2).sum(1) / (2 * 0.4 ** 2))
    torch.testing.assert_close(m, mq, atol=1e-4, rtol=0)
    torch.testing.assert_close(C, Cq, atol=1e-4, rtol=0)


# tolerance stated in nbs/03b_diffusion.ipynb: mean error <= 0.06, covariance error <= 0.18 (4000 samples, 100 steps)
@pytest.mark.parametrize("neighbourhood, width, x0", [("gaussian", 0.5, (0.1, -0.6)), ("gaussian", 0.3, (1.5, 1.5)),
                                                       ("boltzmann", 0.3, (0.1, -0.6))])
def test_posterior_sampler_matches_exact_product(neighbourhood, width, x0):
    r = D.toy_check(neighbourhood, width, x0, n=4000, steps=100, sweeps=6, seed=1)
    assert r["mean_err"] <= 0.06 and r["cov_err"] <= 0.18, (r["mean_err"], r["cov_err"])


def test_guided_approximation_is_visibly_biased():
    r = D.toy_check("gaussian", 0.5, method="guided", n=2000, steps=50)
    assert r["mean_err"] > 0.15


def test_per_sample_start_levels_share_one_chain():
    "Two neighbourhood widths in one batch: each half matches its own closed-form product (one Gaussian component)."
    mu, tau2 = torch.tensor([[1.0, -0.5]], dtype=F64), 0.2
    gm = D.GaussianMixture(mu, tau2 * torch.eye(2, dtype=F64)[None], torch.ones(1, dtype=F64))
    sch = D.make_scheduler(1000, "linear", clip_sample=False)
    n, x0 = 3000, torch.zeros(2, dtype=F64)
    tau, sig = D.sigma_to_timestep(sch, torch.tensor([0.3] * n + [1.0] * n, dtype=F64))
    g = torch.Generator().manual_seed(0)
    x = D._posterior_chain(lambda x, t, y: gm.eps(x, t, sch.alphas_cumprod), x0.repeat(2 * n, 1),
                           torch.zeros(2 * n, dtype=torch.long), tau, sch, 200, g)
    for half, s in [(x[:n], sig[0]), (x[n:], sig[-1])]:
        prec = 1 / tau2 + 1 / s ** 2
        torch.testing.assert_close(half.mean(0), (mu[0] / tau2) / prec, atol=0.04, rtol=0)
        torch.testing.assert_close(half.var(0), torch.full((2,), 1 / prec, dtype=F64), atol=0.02, rtol=0.1)


def test_sigma_to_timestep_round_trip():
    sch = D.make_scheduler(1000)
    t, s = D.sigma_to_timestep(sch, torch.tensor([0.05, 0.5, 2.0]))
    ac = sch.alphas_cumprod[t]
    torch.testing.assert_close(s, ((1 - ac) / ac).sqrt())
    torch.testing.assert_close(s, torch.tensor([0.05, 0.5, 2.0]), rtol=0.03, atol=0)


# ---------------------------------------------------------------- DDPM training: resume after a kill
def test_train_ddpm_killed_midway_resumes_exactly(tmp_path, monkeypatch):
    x, y = _data()
    kw = dict(scheduler=D.make_scheduler(100), epochs=4, batch_size=16, ckpt_every=1, progress=False, device="cpu")
    full = D.train_ddpm(x, y, 3, unet=_tiny_unet(), **kw)
    real = D.save_checkpoint

    def dying(*args, **kwargs):
        p = real(*args, **kwargs)
        if args[1] == 2:
            (tmp_path / ".epoch_00003.pt.half.tmp").write_bytes(b"garbage")  # a write cut short
            raise KeyboardInterrupt
        return p
    monkeypatch.setattr(D, "save_checkpoint", dying)
    with pytest.raises(KeyboardInterrupt):
        D.train_ddpm(x, y, 3, unet=_tiny_unet(), ckpt_dir=tmp_path, **kw)
    monkeypatch.setattr(D, "save_checkpoint", real)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_00001.pt", "epoch_00002.pt"]
    resumed = D.train_ddpm(x, y, 3, unet=_tiny_unet(), ckpt_dir=tmp_path, **kw)
    assert resumed.history == full.history and len(full.history) == 4
    for a, b in zip(full.unet.state_dict().values(), resumed.unet.state_dict().values()):
        assert torch.equal(a, b)
    loaded = D.load_ddpm(tmp_path, "cpu")  # the finished run loads without training
    for a, b in zip(full.unet.state_dict().values(), loaded.unet.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.n_classes == 3 and loaded.null_class == 3


def test_ema_weights_differ_from_raw_and_loss_falls():
    x, y = _data()
    b = D.train_ddpm(x, y, 3, unet=_tiny_unet(), scheduler=D.make_scheduler(100), epochs=6, batch_size=16,
                     progress=False, device="cpu", lr=5e-3)
    assert b.history[-1] < b.history[0]
    assert not b.unet.training and not any(p.requires_grad for p in b.unet.parameters())


# ---------------------------------------------------------------- image CEs, perturbation, sampling
def test_counterfactuals_shapes_range_and_distance_grows_with_sigma(bundle):
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    tg = torch.tensor([0, 1, 2, 0, 1, 2])
    near = D.counterfactuals(bundle, x, tg, sigma_ce=0.01, steps=10)
    far = D.counterfactuals(bundle, x, tg, sigma_ce=0.5, steps=10)
    assert near.shape == x.shape and 0 <= near.min() and near.max() <= 1
    dn, df = (near - x).flatten(1).norm(dim=1).mean(), (far - x).flatten(1).norm(dim=1).mean()
    assert dn < 0.1 * math.sqrt(64) and df > 2 * dn
    b = D.counterfactuals(bundle, x, tg, neighbourhood="boltzmann", temperature=0.02, steps=6, sweeps=2)
    assert b.shape == x.shape
    assert torch.equal(D.counterfactuals(bundle, x, tg, sigma_ce=0.3, steps=5, seed=4),
                       D.counterfactuals(bundle, x, tg, sigma_ce=0.3, steps=5, seed=4))


def test_all_targets_and_perturbation(bundle):
    x = torch.rand(2, 1, 8, 8)
    ces = D.counterfactuals_all_targets(bundle, x, n_samples=2, sigma_ce=0.3, steps=4, guidance_scale=1.0)
    assert ces.shape == (2, 3, 2, 1, 8, 8)
    perturb = make_perturbation("diffusion_ce", bundle=bundle, sigma_ce=0.3, steps=4)
    out = perturb(nn.Linear(1, 1), x, torch.tensor([2, 0]))  # the classifier is ignored
    assert torch.equal(out, D.counterfactuals(bundle, x, torch.tensor([2, 0]), sigma_ce=0.3, steps=4))


def test_sample_is_seeded(bundle):
    lab = torch.tensor([0, 1, 2])
    assert torch.equal(D.sample(bundle, lab, steps=4, seed=2), D.sample(bundle, lab, steps=4, seed=2))
    assert D.sample(bundle, lab, steps=4, sampler="ddim").shape == (3, 1, 8, 8)


# ---------------------------------------------------------------- evaluation
def test_ce_distance_classifier_and_confidence_bins():
    x = torch.zeros(3, 1, 2, 2)
    ces = torch.ones(3, 4, 1, 2, 2)
    for i, c in enumerate([2, 0, 3]): ces[i, c] = 0.1
    dist = D.ce_distances(x, ces)
    assert torch.equal(D.ce_distance_classify(dist), torch.tensor([2, 0, 3]))
    torch.testing.assert_close(D.distance_to_other_ces(dist, torch.tensor([2, 0, 3])), torch.full((3,), 2.0))
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    assert D.accuracy_on_targets(model, ces[:, 0], torch.zeros(3, dtype=torch.long)) in (0.0, 1 / 3, 2 / 3, 1.0)
    r = D.confidence_by_distance(model, x, torch.tensor([0, 1, 2]), torch.tensor([0.1, 0.2, 0.3]), n_bins=3)
    assert r["count"] == [1, 1, 1] and len(r["confidence"]) == 3


# ---------------------------------------------------------------- bad input names the parameter
@pytest.mark.parametrize("call, msg", [
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 1]), sigma_ce=0.0), "counterfactuals: sigma_ce=0.0 must be a finite number > 0"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 1]), sigma_ce=-0.2), "counterfactuals: sigma_ce=-0.2"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 1]), sigma_ce=float("nan")), "counterfactuals: sigma_ce=nan"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 1]), neighbourhood="laplace", sigma_ce=0.3),
     "counterfactuals: neighbourhood='laplace' is not one of 'gaussian', 'boltzmann'"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 1]), neighbourhood="boltzmann", temperature=0.0), "counterfactuals: temperature=0.0"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 3]), sigma_ce=0.3), "counterfactuals: target has labels in [0, 3]; allowed: 0 … 2"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, -1]), sigma_ce=0.3), "counterfactuals: target has labels in [-1, 0]"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0]), sigma_ce=0.3), "counterfactuals: target has 1 labels but the batch has 2"),
    (lambda b, x: D.counterfactuals(b, torch.rand(2, 1, 16, 16), torch.tensor([0, 1]), sigma_ce=0.3),
     "counterfactuals: x has shape (2, 1, 16, 16); the UNet takes images of shape (*, 1, 8, 8)"),
    (lambda b, x: D.counterfactuals(b, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), sigma_ce=0.3), "x has shape (2, 3, 8, 8)"),
    (lambda b, x: D.counterfactuals(b, x * 3, torch.tensor([0, 1]), sigma_ce=0.3), "counterfactuals: x has values in"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 1]), sigma_ce=0.3, steps=0), "counterfactuals: steps=0"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 1]), sigma_ce=0.3, steps=101), "counterfactuals: steps=101"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 1]), sigma_ce=0.3, method="sdedit"), "counterfactuals: method='sdedit'"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 1]), sigma_ce=0.3, method="guided", start_t=0.0), "counterfactuals: start_t=0.0"),
    (lambda b, x: D.counterfactuals(b, x, torch.tensor([0, 1]), sigma_ce=0.3, guidance_scale=-1.0), "guidance_scale=-1.0"),
    (lambda b, x: D.counterfactuals(b.unet, x, torch.tensor([0, 1]), sigma_ce=0.3), "counterfactuals: bundle must be a DiffusionBundle"),
    (lambda b, x: make_perturbation("diffusion_ce", bundle=b, sigma_ce=0), "make_perturbation('diffusion_ce'): sigma_ce=0"),
    (lambda b, x: make_perturbation("diffusion_ce", bundle=b, neighbourhood="uniform", sigma_ce=0.1), "neighbourhood='uniform'"),
    (lambda b, x: D.sample(b, torch.tensor([5]), steps=3), "sample: labels has labels in [5, 5]"),
    (lambda b, x: D.sample(b, torch.tensor([0]), steps=3, sampler="euler"), "sample: sampler='euler'"),
    (lambda b, x: D.ce_distances(x, torch.zeros(3, 3, 1, 8, 8)), "ce_distances: ces has shape (3, 3, 1, 8, 8)"),
    (lambda b, x: D.distance_to_other_ces(torch.rand(2, 3), torch.tensor([0, 1]), reduce="max"), "distance_to_other_ces: reduce='max'"),
])
def test_bad_input_names_parameter(bundle, call, msg):
    with pytest.raises(ValueError) as e:
        call(bundle, torch.rand(2, 1, 8, 8))
    assert msg in str(e.value)


def test_unet_without_class_conditioning_is_refused():
    plain = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    with pytest.raises(ValueError, match="DiffusionBundle: unet has no class conditioning"):
        D.DiffusionBundle(plain, D.make_scheduler(100), 3)
    x, y = _data()
    with pytest.raises(ValueError, match="train_ddpm: DiffusionBundle: unet has no class conditioning"):
        D.train_ddpm(x, y, 3, unet=plain, epochs=1, progress=False)
    with pytest.raises(ValueError, match="num_class_embeds=2 but n_classes=3"):
        D.DiffusionBundle(D.make_unet(8, 1, 2, null_class=False), D.make_scheduler(100), 3)


def test_guidance_needs_a_null_class():
    b = D.DiffusionBundle(_tiny_unet(null=False), D.make_scheduler(100), 3)
    with pytest.raises(ValueError, match=r"counterfactuals: guidance_scale=2.0 needs a model trained with label dropout"):
        D.counterfactuals(b, torch.rand(1, 1, 8, 8), torch.tensor([0]), sigma_ce=0.3, guidance_scale=2.0)


@pytest.mark.parametrize("kw, msg", [
    (dict(epochs=0), "train_ddpm: epochs=0"), (dict(lr=-1.0), "train_ddpm: lr=-1.0"),
    (dict(p_uncond=1.0), "train_ddpm: p_uncond=1.0"), (dict(ema_decay=1.0), "train_ddpm: ema_decay=1.0"),
    (dict(device="tpu"), "get_device: device='tpu'"),
])
def test_train_ddpm_bad_input(kw, msg):
    x, y = _data()
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        D.train_ddpm(x, y, 3, progress=False, **kw)


def test_sample_product_bad_input():
    gm, sch = D.toy_mixture(), D.make_scheduler(100, "linear", clip_sample=False)
    eps = lambda x, t, y: gm.eps(x, t, sch.alphas_cumprod)
    with pytest.raises(ValueError, match="sample_product: sigma=None"):
        D.sample_product(eps, torch.zeros(2, 2, dtype=F64), torch.zeros(2, dtype=torch.long), sch)
    with pytest.raises(ValueError, match="sample_product: labels has 1 labels but the batch has 2"):
        D.sample_product(eps, torch.zeros(2, 2, dtype=F64), torch.zeros(1, dtype=torch.long), sch, sigma=0.3)


# ---------------------------------------------------------------- the sampler at the presets' settings (issue 14)
# notebook 10's presets, in model units (twice pixel units): default σ_CE 0.5 → σ 1.0, 25 steps, 2 sweeps;
# paper σ_CE 0.1 → σ 0.2, 100 steps, 3 sweeps; Boltzmann T = σ/√d (the same typical radius).
PRESETS = {"default": (1.0, 25, 2), "paper": (0.2, 100, 3)}


@pytest.mark.parametrize("preset", ["default", "paper"])
@pytest.mark.parametrize("neighbourhood, tol", [("gaussian", 0.015), ("boltzmann", 0.02)])
def test_ce_distance_matches_exact_at_image_dimension(preset, neighbourhood, tol):
    sigma, steps, sweeps = PRESETS[preset]
    r = D.mixture_check(neighbourhood, sigma, steps, sweeps, d=3072, n=24, seed=1)
    assert abs(r["rel_err"]) < tol, (preset, neighbourhood, r["mean_rho"], r["exact_rho"])
    assert r["se_rho"] < 0.2 * tol * r["exact_rho"]  # the Monte-Carlo error is well inside the tolerance


@pytest.mark.parametrize("sigma, steps", [(1.0, 25), (0.2, 100), (0.2, 25)])
def test_one_dimensional_variance_ratio(sigma, steps):
    gm = D.GaussianMixture(torch.tensor([[-0.5], [0.6]], dtype=F64), torch.tensor([[[0.05]], [[0.1]]], dtype=F64),
                           torch.tensor([0.4, 0.6], dtype=F64))
    sch, x0, n = D.make_scheduler(1000, clip_sample=False), torch.tensor([1.5], dtype=F64), 6000
    exact = gm.times_gaussian(x0, sigma).moments()[1][0, 0]
    x = D.sample_product(lambda x, t, y: gm.eps(x, t, sch.alphas_cumprod), x0.repeat(n, 1), torch.zeros(n, dtype=torch.long),
                         sch, sigma=sigma, steps=steps, generator=torch.Generator().manual_seed(0))
    assert float(x.var() / exact) >= 0.95
    old = D.sample_product(lambda x, t, y: gm.eps(x, t, sch.alphas_cumprod), x0.repeat(n, 1), torch.zeros(n, dtype=torch.long),
                           sch, sigma=sigma, steps=steps, variance="ddpm", generator=torch.Generator().manual_seed(0))
    assert float(old.var()) < float(x.var())  # DDPM's fixed_small step under-disperses


def test_gibbs_diagnostic_flags_a_slow_start_and_stops_when_converged():
    # paper preset, old start σ₀ = √d·T: the mean distance still climbs after 3 sweeps, and the diagnostic says so
    slow = D.mixture_check("boltzmann", 0.2, 100, 3, d=3072, n=16, start="prior")
    st = slow["info"]["sweeps"]
    assert len(st) == 3 and not slow["info"]["converged"] and st[0]["mean_rho"] < st[1]["mean_rho"] < st[2]["mean_rho"]
    assert slow["rel_err"] < -0.02                                   # and it is short of the exact distance
    fast = D.mixture_check("boltzmann", 0.2, 100, 5, d=3072, n=16)
    assert fast["info"]["converged"] and fast["info"]["n_sweeps"] == 2
    assert {"sweep", "mean_sigma", "mean_rho", "se_rho"} <= set(fast["info"]["sweeps"][0])


def test_isotropic_mixture_score_and_distance_law():
    gm, x0 = D.image_scale_mixture(16, seed=2)
    sch = D.make_scheduler(1000)
    t = torch.tensor([0, 200, 700])
    x = torch.randn(3, 16, dtype=F64, requires_grad=True)
    ac = sch.alphas_cumprod.double()[t]
    full = [D.GaussianMixture(ac[i].sqrt() * gm.means, (ac[i] * gm.variances + 1 - ac[i])[:, None, None] * torch.eye(16, dtype=F64),
                              gm.weights) for i in range(3)]
    score = torch.autograd.grad(sum(f.log_prob(x[i:i + 1])[0] for i, f in enumerate(full)), x)[0]
    torch.testing.assert_close(gm.eps(x.detach(), t, sch.alphas_cumprod), -(1 - ac).sqrt()[:, None] * score)
    s = gm.times_gaussian(x0, 0.7).sample(40000, torch.Generator().manual_seed(0))
    m, sd = gm.distance_moments(x0, "gaussian", 0.7)
    rho = (s - x0).norm(dim=1)
    assert abs(float(rho.mean()) - m) < 0.01 * m and abs(float(rho.std()) - sd) < 0.05 * sd


# ---------------------------------------------------------------- CE-distance classifier, cache key, sanity check
def test_ce_distance_classifier_averages_four_ces_by_default(bundle):
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    r = D.ce_distance_classifier(bundle, x, sigma_ce=0.3, steps=3)
    assert r["dist"].shape == (2, 3, 4) and torch.equal(r["pred"], r["dist"].mean(-1).argmin(1))
    rows = D.ce_classifier_accuracy(bundle, x, torch.tensor([0, 2]), sigmas=[0.2, 0.4], steps=[2], n_ce=3)
    assert [(r_["sigma_ce"], r_["n_ce"]) for r_ in rows] == [(0.2, 1), (0.2, 2), (0.2, 3), (0.4, 1), (0.4, 2), (0.4, 3)]
    assert all(0.0 <= r_["accuracy"] <= 1.0 for r_ in rows)


def test_ce_cache_key_names_method_and_version():
    k = D.ce_cache_key(neighbourhood="gaussian", sigma_ce=0.1)
    assert k["sampler_version"] == D.SAMPLER_VERSION and k["method"] == "posterior" and k["variance"] == "posterior"
    assert D.ce_cache_key(method="guided", sigma_ce=0.1) != k


def test_ce_sanity_check_reports_both_starts(bundle):
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    r = D.ce_sanity_check(bundle, x, torch.tensor([0, 1, 2, 0, 1, 2]), 0.2, steps=4)
    assert r["sigma_sqrt_d"] == pytest.approx(r["sigma_ce"] * 8)
    assert r["noised_ratio"] == pytest.approx(r["noised_rms"] / r["sigma_sqrt_d"]) and r["clean_rms"] > 0


def test_counterfactuals_return_gibbs_info(bundle):
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    ce, info = D.counterfactuals(bundle, x, torch.tensor([0, 1, 2]), neighbourhood="boltzmann", temperature=0.05, steps=3,
                                 sweeps=3, return_info=True)
    assert ce.shape == x.shape and len(info) == 1 and 1 <= info[0]["n_sweeps"] <= 3
    assert info[0]["version"] == D.SAMPLER_VERSION


# ---------------------------------------------------------------- train_ddpm: precision, metrics, load errors, torchrun
def test_train_ddpm_bf16_metrics_csv_and_fp16_needs_cuda(tmp_path):
    x, y = _data()
    b = D.train_ddpm(x, y, 3, unet=_tiny_unet(), scheduler=D.make_scheduler(100), epochs=2, batch_size=16, progress=False,
                     device="cpu", mixed_precision="bf16", ckpt_dir=tmp_path, ckpt_every=1)
    assert len(b.history) == 2 and all(math.isfinite(h) for h in b.history)
    lines = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert lines[0].startswith("epoch,loss,lr,seconds,steps_per_s") and len(lines) == 3 and ",bf16," in lines[1]
    with pytest.raises(ValueError, match="train_ddpm: mixed_precision='fp16' needs a CUDA device"):
        D.train_ddpm(x, y, 3, epochs=1, progress=False, device="cpu", mixed_precision="fp16")
    with pytest.raises(ValueError, match="train_ddpm: mixed_precision='fp32' is not one of"):
        D.train_ddpm(x, y, 3, epochs=1, progress=False, device="cpu", mixed_precision="fp32")


def test_load_ddpm_refuses_bad_files(tmp_path):
    bad = tmp_path / "epoch_00001.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"load_ddpm: '.*epoch_00001\.pt' is not a readable train_ddpm checkpoint"):
        D.load_ddpm(bad, "cpu")  # named explicitly: an error naming it
    with pytest.raises(FileNotFoundError, match="load_ddpm: no readable train_ddpm checkpoint"):
        D.load_ddpm(tmp_path, "cpu")  # in a folder: the damaged newest checkpoint is moved aside, none is left
    assert (tmp_path / "epoch_00001.pt.corrupt-1").exists() and not bad.exists()
    other = tmp_path / "weights.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(ValueError, match=r"load_ddpm: '.*weights\.pt' is not a train_ddpm checkpoint"):
        D.load_ddpm(other, "cpu")
    with pytest.raises(FileNotFoundError, match="load_ddpm: no readable train_ddpm checkpoint"):
        D.load_ddpm(tmp_path / "missing", "cpu")


_TORCHRUN_SCRIPT = '''
import os, sys, torch
from cfx_nb import diffusion as D
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
torch.manual_seed(1)
unet = D.make_unet(8, 1, 3, block_out_channels=(8, 16), norm_num_groups=2)
b = D.train_ddpm(x, y, 3, unet=unet, scheduler=D.make_scheduler(100), epochs=2, batch_size=16, progress=False,
                 device="cpu", ckpt_dir=sys.argv[1], ckpt_every=1)
torch.save({k: v.clone() for k, v in b.unet.state_dict().items()}, os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
'''


@pytest.mark.slow
def test_train_ddpm_under_torchrun_matches_one_process(tmp_path):
    import os, subprocess, sys
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun): pytest.skip("torchrun is not installed next to this python")
    script, ck = tmp_path / "run.py", tmp_path / "ck"
    script.write_text(_TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CFX_DIST_BACKEND": "gloo",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(D.__file__)), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(script), str(ck), str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)                 # the ranks end with identical weights
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    torch.manual_seed(1)
    one = D.train_ddpm(x, y, 3, unet=D.make_unet(8, 1, 3, block_out_channels=(8, 16), norm_num_groups=2), scheduler=D.make_scheduler(100),
                       epochs=2, batch_size=16, progress=False, device="cpu")
    # (2 groups per GroupNorm: with one channel per group a conv bias before the norm has a gradient that is pure
    # rounding noise, which Adam scales up to full steps, so no two summation orders would agree on it)
    for k, v in one.unet.state_dict().items():
        torch.testing.assert_close(r0[k], v, rtol=1e-4, atol=1e-5)
    loaded = D.load_ddpm(ck, "cpu")                                   # rank 0's checkpoint
    assert all(torch.equal(loaded.unet.state_dict()[k], r0[k]) for k in r0)
    assert len((ck / "metrics.csv").read_text().strip().splitlines()) == 3
