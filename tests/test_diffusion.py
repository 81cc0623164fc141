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


# tolerance stated in nbs/09_diffusion.ipynb: mean error <= 0.06, covariance error <= 0.18 (4000 samples, 100 steps)
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
