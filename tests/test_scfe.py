"""S-CFE (cfx_nb.scfe): the prox is exact, the box holds, accepted steps never increase Eq. (2), the solver
reaches the exhaustive-search optimum on small linear problems, β buys sparsity, the densities agree with
scikit-learn and scipy (the PPCA densities are normalised densities of the whole input), τ > 0 moves
counterfactuals towards the target class's data, and bad input is refused with a ValueError naming the parameter."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from cfx_nb.core import make_perturbation
from cfx_nb.scfe import (GMM, KDE, SCFE_VERSION, SCFEResult, calibrate_tau, class_loss, prox_l0_box, scfe,
                         scfe_objective)


def _mlp(d=6, k=3, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, k)).to(dtype)


def _data(n=24, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def _blob_model(d=6, k=3, seed=0, binary=False):
    "A small MLP trained on k Gaussian blobs inside [0,1]^d, so that every class is reachable in the box."
    g = torch.Generator().manual_seed(seed)
    centers = 0.2 + 0.6 * torch.rand(k, d, generator=g)
    y = torch.arange(300) % k
    x = (centers[y] + 0.1 * torch.randn(300, d, generator=g)).clamp(0, 1)
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 1 if binary else k))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(200):
        out = m(x)
        loss = (nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.float()) if binary
                else nn.functional.cross_entropy(out, y))
        opt.zero_grad(); loss.backward(); opt.step()
    return m.eval(), x, y


# ---------------------------------------------------------------------------------------------- prox
def test_prox_is_exact_against_brute_force():
    g = torch.Generator().manual_seed(0)
    n, d = 200, 7
    lo = torch.rand(1, d, generator=g, dtype=torch.float64) * 0.3
    hi = lo + 0.2 + torch.rand(1, d, generator=g, dtype=torch.float64) * 0.5
    x = lo + (hi - lo) * torch.rand(n, d, generator=g, dtype=torch.float64)
    v = x + torch.randn(n, d, generator=g, dtype=torch.float64) * 0.6
    lam = torch.rand(n, 1, generator=g, dtype=torch.float64) * 0.1
    p = prox_l0_box(v, x, lo, hi, lam)
    cost = lambda u: 0.5 * (u - v).square() + lam * (u != x)
    # each coordinate's two candidates: stay at x, or move to the box projection of v
    two = torch.minimum(cost(x), cost(torch.maximum(torch.minimum(v, hi), lo)))
    assert torch.allclose(cost(p), two, atol=1e-15, rtol=0)
    # and no point of a fine grid of the interval does better
    t = torch.linspace(0, 1, 4001, dtype=torch.float64)
    grid = lo[..., None] + (hi - lo)[..., None] * t                      # 1×d×G
    gcost = 0.5 * (grid - v[..., None]).square() + lam[..., None] * (grid != x[..., None])
    assert (cost(p) <= gcost.amin(-1) + 1e-12).all()
    assert ((p >= lo) & (p <= hi)).all()
    assert ((p == x) | (p == torch.maximum(torch.minimum(v, hi), lo))).all()


def test_prox_threshold_without_box():
    v, x = torch.tensor([[0.3, -0.5, 0.2]]), torch.zeros(1, 3)
    # hard thresholding at sqrt(2·lam) = sqrt(0.08) ≈ 0.283
    assert torch.equal(prox_l0_box(v, x, -math.inf, math.inf, 0.04), torch.tensor([[0.3, -0.5, 0.0]]))


# ------------------------------------------------------------------------------------- solver basics
def test_box_always_holds_per_feature_and_per_sample():
    m = _mlp()
    x, t = _data()
    lo = torch.tensor([0.0, 0.1, 0.2, 0.0, 0.0, 0.3])
    hi = torch.tensor([1.0, 0.9, 0.8, 0.5, 1.0, 0.7])
    xc = torch.maximum(torch.minimum(x, hi), lo)
    kde = KDE(bandwidth=0.3).fit(torch.rand(60, 6), torch.arange(60) % 3)
    r = scfe(m, xc, t, gamma=5.0, beta=0.01, tau=0.5, density=kde, steps=40, search_steps=2, lo=lo, hi=hi)
    assert ((r.x >= lo) & (r.x <= hi)).all()
    lo_s = (xc - 0.05 * torch.rand_like(xc)).clamp_min(0)                # a different box per sample
    hi_s = (xc + 0.05 * torch.rand_like(xc)).clamp_max(1)
    r = scfe(m, xc, t, gamma=50.0, beta=0.0, steps=40, search_steps=1, lo=lo_s, hi=hi_s)
    assert ((r.x >= lo_s) & (r.x <= hi_s)).all()


@pytest.mark.parametrize("loss, k", [("ce", 3), ("logistic", 1), ("exponential", 2)])
def test_objective_never_increases(loss, k):
    m = _mlp(k=k, seed=1)
    x, _ = _data(seed=1)
    t = torch.randint(0, max(k, 2), (len(x),))
    kde = KDE(bandwidth=0.4).fit(torch.rand(80, 6), torch.arange(80) % max(k, 2))
    r = scfe(m, x, t, gamma=3.0, beta=0.02, tau=0.3, density=kde, steps=60, search_steps=2, loss=loss, trace=True)
    assert len(r.trace) == 2
    for tr in r.trace:
        assert torch.isfinite(tr).all()
        assert (tr[1:] <= tr[:-1]).all(), "F(x_k) increased across an accepted step"
    # the reported objective is Eq. (2) recomputed from scratch at the returned point
    obj = scfe_objective(m, x, r.x, t, gamma=r.gamma, beta=0.02, tau=0.3, density=kde, loss=loss)
    assert torch.allclose(r.objective, obj, rtol=1e-5, atol=1e-5)


def test_search_finds_valid_counterfactuals_and_diagnostics():
    m, xs, _ = _blob_model(seed=2)
    x = xs[:24]
    t = (m(x).argmax(1) + 1) % 3
    r = scfe(m, x, t, gamma=1.0, beta=0.01, steps=60, search_steps=5)
    assert isinstance(r, SCFEResult) and r.x.shape == x.shape
    assert r.valid.all()
    assert torch.equal(r.valid, m(r.x).argmax(1) == t)
    assert torch.equal(r.l0, (r.x != x).sum(1))
    assert torch.allclose(r.l2, (r.x - x).norm(dim=1))
    assert torch.isnan(r.log_density).all() and (r.iterations >= 1).all() and (r.gamma > 0).all()


def test_batched_equals_one_at_a_time():
    m = _mlp(seed=3, dtype=torch.float64)
    x, t = _data(n=6, seed=3)
    x = x.double()
    kw = dict(gamma=2.0, beta=0.02, steps=60, search_steps=3)
    rb = scfe(m, x, t, **kw)
    for i in range(len(x)):
        ri = scfe(m, x[i:i + 1], t[i:i + 1], **kw)
        assert torch.allclose(ri.x[0], rb.x[i], atol=1e-9), i
        assert ri.iterations.item() == rb.iterations[i].item()


def test_larger_beta_gives_sparser_counterfactuals():
    m, xs, _ = _blob_model(d=20, k=4, seed=4)
    x = xs[:24]
    t = (m(x).argmax(1) + 1) % 4
    l0 = []
    for beta in (0.0, 0.01, 0.1):
        r = scfe(m, x, t, gamma=1.0, beta=beta, steps=60, search_steps=4)
        assert r.valid.float().mean() >= 0.9
        l0.append(r.l0.float().mean().item())
    assert all(a > b for a, b in zip(l0, l0[1:])), l0
    assert l0[-1] < 0.5 * l0[0], l0


def test_binary_targets_01_and_pm1_agree_and_model_mode_restored():
    m, xs, _ = _blob_model(k=2, seed=5, binary=True)
    m.train()
    x = xs[:24]
    t01 = (m(x).squeeze(1) < 0).long()                                    # flip every decision
    r1 = scfe(m, x, t01, gamma=1.0, beta=0.01, steps=40, search_steps=4, loss="logistic")
    r2 = scfe(m, x, 2 * t01 - 1, gamma=1.0, beta=0.01, steps=40, search_steps=4, loss="logistic")
    assert torch.equal(r1.x, r2.x) and r1.valid.all()
    assert m.training


def test_runs_under_inference_mode_and_no_grad():
    m = _mlp(seed=6)
    x, t = _data(seed=6)
    with torch.inference_mode():
        xi = x.clone()
    with torch.no_grad():
        r = scfe(m, xi, t, gamma=1.0, beta=0.01, steps=20, search_steps=2)
    assert r.x.shape == x.shape and torch.isfinite(r.x).all()


def test_runs_inside_inference_mode_with_a_density():
    m, xs, ys = _blob_model(seed=8)
    kde = KDE(bandwidth=0.2).fit(xs, ys)
    x = xs[:8]
    t = (m(x).argmax(1) + 1) % 3
    with torch.inference_mode():
        kde.log_prob(x, t)                                                # first use builds the cache here
        r = scfe(m, x, t, gamma=1.0, beta=0.01, tau=0.1, density=kde, steps=20, search_steps=2)
    assert torch.isfinite(r.log_density).all() and r.valid.float().mean() > 0.5


def test_perturbation_registered():
    m = _mlp(seed=7)
    x, t = _data(seed=7)
    perturb = make_perturbation("pcfe_l0", gamma=1.0, beta=0.02, steps=40, search_steps=3)
    assert torch.equal(perturb(m, x, t), scfe(m, x, t, gamma=1.0, beta=0.02, steps=40, search_steps=3).x)


# ------------------------------------------------------- exhaustive search on small linear problems
def _linear_problem(rng):
    d = int(rng.integers(2, 7))
    w = rng.normal(size=d)
    x = rng.uniform(size=d)
    b = -w @ x - rng.uniform(0, 1) * np.linalg.norm(w)                 # x is on the negative side
    gamma = float(np.exp(rng.uniform(np.log(1), np.log(20))))
    beta = float(np.exp(rng.uniform(np.log(0.01), np.log(0.3))))
    return w, b, x, gamma, beta


def _exhaustive(w, b, x, gamma, beta, iters=200):
    """min over supports S of [min_{x' in [0,1]^d, x'_i = x_i off S} ‖x'−x‖² + γ·softplus(−(w·x'+b))] + β|S|.

    For a fixed S the subproblem is strongly convex and its KKT conditions give x'_i − x_i = clip(σ w_i) on S
    with a scalar σ = γ·sigmoid(−m)/2, m the margin at x'; σ solves a monotone 1-d equation, solved by
    bisection to machine precision (checked against L-BFGS-B while writing this test)."""
    d = len(w)
    S = np.array(list(itertools.product([0, 1], repeat=d)), bool)
    a, c = -x, 1 - x
    m0 = w @ x + b
    delta = lambda s: np.where(S, np.clip(s[:, None] * w, a, c), 0.0)
    lo, hi = np.zeros(len(S)), np.full(len(S), gamma / 2)
    for _ in range(iters):
        mid = (lo + hi) / 2
        r = gamma / 2 / (1 + np.exp(m0 + delta(mid) @ w)) - mid
        lo, hi = np.where(r > 0, mid, lo), np.where(r > 0, hi, mid)
    dl = delta((lo + hi) / 2)
    val = (dl ** 2).sum(1) + gamma * np.logaddexp(0, -(m0 + dl @ w)) + beta * S.sum(1)
    return val.min()


def test_linear_models_reach_the_exhaustive_optimum():
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(100):
        w, b, x, gamma, beta = _linear_problem(rng)
        W, B = torch.tensor(w)[None], torch.tensor([b])
        model = lambda z: z @ W.T + B
        r = scfe(model, torch.tensor(x)[None], torch.tensor([1]), gamma=gamma, beta=beta, steps=500,
                 search_steps=1, loss="logistic", tol=1e-9)
        opt = _exhaustive(w, b, x, gamma, beta)
        assert ((r.x >= 0) & (r.x <= 1)).all()
        gaps.append((r.objective.item() - opt) / opt)
    gaps = np.array(gaps)
    frac = float((gaps <= 0.01).mean())
    print(f"\nS-CFE vs exhaustive search, 100 linear problems (d=2..6): {100 * frac:.0f}% within 1% of the optimum; "
          f"median gap {np.median(gaps):.2e}, worst {gaps.max():.3f}")
    assert gaps.min() > -1e-9, "the exhaustive optimum must be a lower bound"
    assert frac >= 0.9, frac


# ----------------------------------------------------------------------------------------- densities
def _two_blobs(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(70, 4, generator=g), torch.randn(50, 4, generator=g) * 0.7 + 2]).to(dtype)
    return x, torch.tensor([3] * 70 + [7] * 50)


@pytest.mark.parametrize("make", [lambda: KDE(), lambda: KDE(bandwidth="scott"), lambda: KDE(projection=2),
                                  lambda: GMM(n_components=3), lambda: GMM(n_components=2, covariance_type="diag"),
                                  lambda: GMM(n_components=2, covariance_type="tied"),
                                  lambda: GMM(n_components=2, covariance_type="spherical", projection=3)])
def test_density_agrees_with_sklearn(make):
    x, y = _two_blobs()
    dens = make().fit(x, y)
    g = torch.Generator().manual_seed(2)
    q = (torch.randn(30, 4, generator=g) + 1).double()
    yq = torch.tensor([3, 7] * 15)
    lp = dens.code_log_prob(q, yq)                                      # the code part: scikit-learn on each class's code
    z = dens.project(q, yq).numpy()
    if dens.projection:
        for c in (3, 7):                                                # the code is the class's own PCA transform
            np.testing.assert_allclose(z[yq.numpy() == c], dens.pcas_[c].transform(q[yq == c].numpy()), rtol=0, atol=1e-12)
    ref = np.where(yq.numpy() == 3, dens.estimators_[3].score_samples(z), dens.estimators_[7].score_samples(z))
    np.testing.assert_allclose(lp.numpy(), ref, rtol=1e-9, atol=1e-9)
    if not dens.projection:                                             # raw features: q̂ is the code density
        assert torch.equal(dens.log_prob(q, yq), lp)
    lp32 = dens.code_log_prob(q.float(), yq)                            # float32 evaluation stays close
    np.testing.assert_allclose(lp32.numpy(), ref, rtol=1e-4, atol=1e-3)
    full = dens.log_prob(q, yq)                                          # a mixed batch = each class on its own
    for c in (3, 7):
        assert torch.allclose(full[yq == c], dens.log_prob(q[yq == c], yq[yq == c]), rtol=1e-12, atol=1e-10)


def test_density_gradient_is_correct():
    x, y = _two_blobs()
    for dens in (KDE(bandwidth=0.5, projection=3).fit(x, y), GMM(n_components=2).fit(x, y)):
        q = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
        yq = torch.tensor([3, 7, 3, 7, 3])
        assert torch.autograd.gradcheck(lambda z: dens.log_prob(z, yq, check=False), (q,))


def test_kde_bandwidth_is_the_cross_validated_one():
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity
    x, y = _two_blobs()
    grid = [0.1, 0.2, 0.4, 0.8, 1.6]
    kde = KDE(bandwidths=grid).fit(x, y)
    for c in (3, 7):
        gs = GridSearchCV(KernelDensity(), {"bandwidth": grid}, cv=5).fit(x[y == c].numpy())
        assert kde.bandwidths_[c] == gs.best_params_["bandwidth"]


# ------------------------------------------------------- PPCA densities: proper densities of the whole input
def _low_rank_blobs(d=6, n=(80, 60), seed=3, dtype=torch.float64):
    "Two classes near different 2-d affine subspaces of R^d (plus small isotropic noise)."
    g = torch.Generator().manual_seed(seed)
    xs = []
    for i, m in enumerate(n):
        A = torch.randn(2, d, generator=g)
        xs.append(torch.randn(m, 2, generator=g) @ A + 0.2 * torch.randn(m, d, generator=g) + 2 * i)
    return torch.cat(xs).to(dtype), torch.tensor([0] * n[0] + [1] * n[1])


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_ppca_gmm_with_one_component_is_the_exact_gaussian(cov):
    from scipy.stats import multivariate_normal
    x, y = _low_rank_blobs()
    dens = GMM(n_components=1, covariance_type=cov, projection=2).fit(x, y)
    q = torch.randn(25, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    for c in (0, 1):
        W, s2, gm = dens.pcas_[c].components_.T, dens.sigma2_[c], dens.estimators_[c]
        S = gm.covariances_[0] if cov == "full" else np.diag(gm.covariances_[0])
        mean = dens.pcas_[c].mean_ + W @ gm.means_[0]
        covx = W @ S @ W.T + s2 * (np.eye(6) - W @ W.T)                 # PPCA: W Σ Wᵀ + σ²(I − WWᵀ)
        ref = multivariate_normal(mean, covx).logpdf(q.numpy())
        np.testing.assert_allclose(dens.log_prob(q, torch.full((25,), c)).numpy(), ref, rtol=1e-10, atol=1e-9)
        # σ² is the mean residual energy per discarded dimension of the class's training data
        X = x[y == c].numpy()
        R = (X - dens.pcas_[c].mean_) @ (np.eye(6) - W @ W.T)
        assert dens.sigma2_[c] == pytest.approx((R ** 2).sum() / (len(X) * 4), rel=1e-10)


def test_full_rank_kde_is_sklearn_kernel_density():
    from sklearn.neighbors import KernelDensity
    x, y = _low_rank_blobs()
    q = torch.randn(20, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for c in (0, 1):
        dens = KDE(bandwidth=0.6, projection=6).fit(x, y)                # k = d: a rotation, no residual
        ref = KernelDensity(bandwidth=0.6).fit(x[y == c].numpy()).score_samples(q.numpy())
        np.testing.assert_allclose(dens.log_prob(q, torch.full((20,), c)).numpy(), ref, rtol=1e-10, atol=1e-9)
    grid = [0.2, 0.3, 0.45, 0.7, 1.0]                                    # and on the same grid CV picks the same bandwidth
    cv_rot, cv_raw = KDE(projection=6, bandwidths=grid).fit(x, y), KDE(bandwidths=grid).fit(x, y)
    assert all(cv_rot.bandwidths_[c] == pytest.approx(cv_raw.bandwidths_[c]) for c in (0, 1))


@pytest.mark.parametrize("make", [lambda: KDE(bandwidth="scott", projection=1), lambda: GMM(n_components=2, projection=1)])
def test_ppca_density_integrates_to_one_in_2d(make):
    g = torch.Generator().manual_seed(6)
    t = torch.randn(200, 1, generator=g, dtype=torch.float64)
    x = torch.cat([t, 0.5 * t], 1) + 0.15 * torch.randn(200, 2, generator=g, dtype=torch.float64)
    dens = make().fit(x, torch.zeros(200, dtype=torch.long))
    u = torch.linspace(-7, 7, 281, dtype=torch.float64)
    grid = torch.cartesian_prod(u, u)
    mass = dens.log_prob(grid, torch.zeros(len(grid), dtype=torch.long)).exp().sum() * (u[1] - u[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=2e-3)


def test_off_manifold_lowers_log_prob_and_the_gradient_leaves_the_span():
    x, y = _low_rank_blobs(d=10)
    for dens in (KDE(projection=2).fit(x, y), GMM(n_components=2, projection=2).fit(x, y)):
        W = torch.as_tensor(dens.pcas_[1].components_)                  # 2×10
        u = torch.randn(10, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        u = u - W.T @ (W @ u); u = u / u.norm()                          # orthogonal to class 1's span
        x1, y1 = x[y == 1][:30], torch.ones(30, dtype=torch.long)
        mu = torch.as_tensor(dens.pcas_[1].mean_)
        on = mu + ((x1 - mu) @ W.T) @ W                                  # the points projected onto class 1's subspace
        assert torch.allclose(dens.manifold_distance(on, y1), torch.zeros(30, dtype=torch.float64), atol=1e-9)
        last = dens.log_prob(on, y1)
        for step in (0.5, 1.0, 2.0):
            moved = on + step * u
            lp = dens.log_prob(moved, y1)
            assert (lp < last).all()                                      # further off the manifold, less plausible
            assert torch.allclose(dens.log_prob(on, y1) - lp, torch.full_like(lp, step ** 2 / (2 * dens.sigma2_[1])))
            assert torch.allclose(dens.code_log_prob(moved, y1), dens.code_log_prob(on, y1), atol=1e-9)
            assert torch.allclose(dens.manifold_distance(moved, y1), torch.full_like(lp, step), atol=1e-9)
            last = lp
        def outside(fn):
            xg = x1.clone().requires_grad_()
            gr, = torch.autograd.grad(fn(xg, y1).sum(), xg)
            return (gr - (gr @ W.T) @ W).norm(dim=1), (gr @ W.T).norm(dim=1)
        out_code, in_code = outside(dens.code_log_prob)
        out_full, _ = outside(dens.log_prob)
        assert (out_code <= 1e-10 * (1 + in_code)).all()                 # the code density: free directions
        assert (out_full > 1e-2).all()                                   # the PPCA density: a pull back


def _digits_fixture():
    "scikit-learn's 8×8 digits in [0,1]^64 and a small MLP trained on 1200 of them."
    from sklearn.datasets import load_digits
    d = load_digits()
    X, Y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(m(X[:1200]), Y[:1200]); opt.zero_grad(); loss.backward(); opt.step()
    return m.eval(), X, Y


def test_pcfe_with_calibrated_tau_is_closer_to_the_target_manifold_and_valid():
    m, X, Y = _digits_fixture()
    assert (m(X[1200:]).argmax(1) == Y[1200:]).float().mean() > 0.9
    dens = KDE(projection=8).fit(X[:1200], Y[:1200])
    g = torch.Generator().manual_seed(1)
    xc_, tc_ = X[:200], (m(X[:200]).argmax(1) + torch.randint(1, 10, (200,), generator=g)) % 10
    kw = dict(gamma=1.0, beta=0.01, steps=60, search_steps=4)
    tau = calibrate_tau(m, xc_, tc_, dens, max_samples=48, **kw)
    assert tau > 0
    x, t = X[1200:1240], (m(X[1200:1240]).argmax(1) + torch.randint(1, 10, (40,), generator=g)) % 10
    r0 = scfe(m, x, t, **kw)
    rt = scfe(m, x, t, tau=tau, density=dens, **kw)
    assert r0.valid.float().mean() >= 0.95 and rt.valid.float().mean() >= 0.95
    d0, dt = dens.manifold_distance(r0.x, t).mean().item(), dens.manifold_distance(rt.x, t).mean().item()
    assert dt < 0.9 * d0, (d0, dt)                                       # closer to the target class's subspace
    assert dens.log_prob(rt.x, t).mean() > dens.log_prob(r0.x, t).mean()
    def knn(xs):                                                         # mean distance to the 5 nearest target-class points
        return torch.stack([torch.cdist(xs[i:i + 1], X[:1200][Y[:1200] == t[i]]).topk(5, largest=False).values.mean()
                            for i in range(len(xs))]).mean().item()
    assert knn(rt.x) < knn(r0.x)


def test_calibrate_tau_is_the_stated_rule():
    m, X, Y = _digits_fixture()
    dens = GMM(n_components=2, projection=6).fit(X[:600], Y[:600])
    x, t = X[600:616], (m(X[600:616]).argmax(1) + 3) % 10
    kw = dict(gamma=1.0, beta=0.01, steps=30, search_steps=3)
    tau = calibrate_tau(m, x, t, dens, **kw)
    r0 = scfe(m, x, t, **kw)
    xg = r0.x.clone().requires_grad_()
    gr, = torch.autograd.grad(dens.log_prob(xg, t).sum(), xg)
    move, pull = 2 * (r0.x - x).norm(dim=1), gr.norm(dim=1)
    use = r0.valid & (move > 0)
    assert use.any()
    assert tau == pytest.approx((move[use] / pull[use]).median().item(), rel=1e-6)
    r1 = scfe(m, x, t, gamma=1e-3, beta=0.0, steps=2, search_steps=1)        # no valid one: the moved ones count
    assert not r1.valid.any()
    xg = r1.x.clone().requires_grad_()
    gr1, = torch.autograd.grad(dens.log_prob(xg, t).sum(), xg)
    ref1 = (2 * (r1.x - x).norm(dim=1) / gr1.norm(dim=1)).median().item()
    assert calibrate_tau(m, x, t, dens, gamma=1e-3, beta=0.0, steps=2, search_steps=1) == pytest.approx(ref1, rel=1e-6)
    assert calibrate_tau(m, x, t, dens, ratio=0.5, **kw) == pytest.approx(0.5 * tau, rel=1e-6)
    with pytest.raises(ValueError, match="calibrate_tau: none of the 16 τ = 0 counterfactuals moved"):
        calibrate_tau(m, x, m(x).argmax(1), dens, **kw)                 # targets = the decisions: nothing moves


def test_solver_version_and_lazy_sklearn():
    import subprocess, sys
    assert SCFE_VERSION == "2"
    code = "import sys, cfx_nb.scfe; print(any(k.startswith('sklearn') for k in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------- bad input
def _bad_setup():
    m = _mlp()
    x, t = _data()
    return m, x, t


@pytest.mark.parametrize("kwargs, msg", [
    (dict(beta=-0.1), "scfe: beta=-0.1 must be a finite number >= 0"),
    (dict(gamma=0.0), "scfe: gamma=0.0 must be a finite number > 0"),
    (dict(gamma=-2), "scfe: gamma=-2 must be a finite number > 0"),
    (dict(tau=-1.0), "scfe: tau=-1.0 must be a finite number >= 0"),
    (dict(lo=0.7, hi=0.3), "scfe: box has lo > hi"),
    (dict(lo=torch.zeros(6), hi=torch.tensor([1, 1, 1, -1, 1, 1.0])), "scfe: box has lo > hi at 1 feature(s)"),
    (dict(lo=torch.zeros(5)), "scfe: lo has shape (5,), which does not broadcast to x's shape (24, 6)"),
    (dict(lo=0.5), "scfe: x has"),
    (dict(steps=0), "scfe: steps=0 must be an integer >= 1"),
    (dict(search_steps=0), "scfe: search_steps=0"),
    (dict(eta=1.0), "scfe: eta=1.0 must be a finite number > 1"),
    (dict(L0=0), "scfe: L0=0"),
    (dict(L_shrink=1.5), "scfe: L_shrink=1.5"),
    (dict(trial_batch=0), "scfe: trial_batch=0 must be an integer >= 1"),
    (dict(loss="hinge"), "scfe: loss='hinge' is not one of 'ce', 'logistic', 'exponential'"),
    (dict(loss="logistic"), "scfe: loss='logistic' needs a binary model"),
    (dict(tau=0.5), "scfe: tau=0.5 > 0 needs a density, but density=None"),
    (dict(density="kde"), "scfe: density=str has no log_prob"),
])
def test_bad_parameters(kwargs, msg):
    m, x, t = _bad_setup()
    kw = dict(gamma=1.0, beta=0.1, steps=5, search_steps=1) | kwargs
    with pytest.raises(ValueError) as e:
        scfe(m, x, t, **kw)
    assert msg in str(e.value)


def test_bad_x_outside_box():
    m, x, t = _bad_setup()
    x[3, 2] = 1.25
    with pytest.raises(ValueError, match=r"scfe: x has 1 value\(s\) outside the box \[lo, hi\] \(e.g. x=1.25 not in \[0, 1\]\)"):
        scfe(m, x, t, gamma=1.0, beta=0.1, steps=5)


def test_bad_x_nan():
    m, x, t = _bad_setup()
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="scfe: x contains NaN or inf"):
        scfe(m, x, t, gamma=1.0, beta=0.1, steps=5)


def test_bad_target_shape_mismatch():
    m, x, t = _bad_setup()
    with pytest.raises(ValueError, match="scfe: target has 5 labels but the batch has 24"):
        scfe(m, x, t[:5], gamma=1.0, beta=0.1, steps=5)


def test_bad_target_out_of_range():
    m, x, t = _bad_setup()
    with pytest.raises(ValueError, match=r"scfe: target has labels in \[0, 3\]; allowed: 0 … 2"):
        scfe(m, x, torch.cat([t[:-1], torch.tensor([3])]), gamma=1.0, beta=0.1, steps=5)


def test_bad_binary_targets():
    m, x, _ = _bad_setup()
    m1 = _mlp(k=1)
    with pytest.raises(ValueError, match=r"scfe: target has values \[0, 2\]; loss='logistic' needs binary targets"):
        scfe(m1, x, torch.tensor([0, 2] * 12), gamma=1.0, beta=0.1, steps=5, loss="logistic")


def test_bad_density_not_fitted_for_target_class():
    m, x, t = _bad_setup()
    kde = KDE(bandwidth=0.3).fit(torch.rand(40, 6), torch.tensor([0, 1] * 20))   # no class 2
    with pytest.raises(ValueError, match=r"scfe: target contains class\(es\) \[2\] for which the density was not fitted"):
        scfe(m, x, t, gamma=1.0, beta=0.1, tau=1.0, density=kde, steps=5)


def test_bad_density_feature_shape():
    m, x, t = _bad_setup()
    gmm = GMM(n_components=1).fit(torch.rand(60, 5), torch.arange(60) % 3)
    with pytest.raises(ValueError, match=r"scfe: x has feature shape \(6,\) but the density was fitted on \(5,\)"):
        scfe(m, x, t, gamma=1.0, beta=0.1, tau=1.0, density=gmm, steps=5)


def test_bad_density_unfitted():
    m, x, t = _bad_setup()
    with pytest.raises(ValueError, match="scfe: the KDE density is not fitted"):
        scfe(m, x, t, gamma=1.0, beta=0.1, tau=1.0, density=KDE(), steps=5)


@pytest.mark.parametrize("call, msg", [
    (lambda: KDE(bandwidth=-1.0), "KDE: bandwidth=-1.0 must be a finite number > 0"),
    (lambda: KDE(bandwidth="auto"), "KDE: bandwidth='auto' is not one of 'cv', 'scott', 'silverman'"),
    (lambda: KDE(projection=0), "KDE: projection=0 must be an integer >= 1"),
    (lambda: KDE(bandwidths=[-1.0, 0.5]), "KDE: bandwidths[0]=-1.0 must be a finite number > 0"),
    (lambda: KDE(bandwidths=[0.5, float("nan")]), "KDE: bandwidths[1]=nan must be a finite number > 0"),
    (lambda: KDE(bandwidths=[0.5, 0.0]), "KDE: bandwidths[1]=0.0 must be a finite number > 0"),
    (lambda: KDE(bandwidths=[]), "KDE: bandwidths=[] must be a non-empty 1-d sequence"),
    (lambda: KDE(bandwidths="0.5"), "KDE: bandwidths='0.5' must be a non-empty 1-d sequence"),
    (lambda: KDE(bandwidths=[[0.1, 0.2]]), "KDE: bandwidths=[[0.1, 0.2]] must be a non-empty 1-d sequence"),
    (lambda: KDE(bandwidth=0.5, bandwidths=[0.1, 0.2]), "KDE: bandwidths is the cross-validation grid, used only with bandwidth='cv'"),
    (lambda: KDE(bandwidth=float("nan")), "KDE: bandwidth=nan must be a finite number > 0"),
    (lambda: KDE(cv=1), "KDE: cv=1 must be an integer >= 2"),
    (lambda: KDE(projection=2.5), "KDE: projection=2.5 must be an integer >= 1"),
    (lambda: GMM(reg_covar=float("nan")), "GMM: reg_covar=nan"),
    (lambda: GMM(random_state=-1), "GMM: random_state=-1 must be an integer >= 0"),
    (lambda: GMM(max_itr=10), "GMM: unknown parameter(s) ['max_itr']"),
    (lambda: GMM(max_iter=0), "GMM: max_iter=0 must be an integer >= 1"),
    (lambda: GMM(n_init=0), "GMM: n_init=0 must be an integer >= 1"),
    (lambda: GMM(tol=-1.0), "GMM: tol=-1.0 must be a finite number > 0"),
    (lambda: GMM(init_params="best"), "GMM: init_params='best' is not one of"),
    (lambda: GMM(n_components=2, projection=5).fit(torch.rand(10, 5), torch.tensor([0, 1] * 5)), "GMM.fit: projection=5 exceeds"),
    (lambda: KDE(projection=2).fit(torch.rand(10, 3), torch.tensor([0, 1] * 5)).manifold_distance(torch.rand(2, 4), torch.tensor([0, 1])),
     "KDE.manifold_distance: x has feature shape (4,)"),
    (lambda: KDE(bandwidth=1.0).fit(torch.rand(10, 3), torch.tensor([0, 1] * 5)).manifold_distance(torch.rand(2, 3), torch.tensor([0, 1])),
     "KDE.manifold_distance: needs a density fitted with projection=k"),
    (lambda: calibrate_tau(_mlp(), torch.rand(4, 6), torch.tensor([0, 1, 2, 0]), None, gamma=1.0, beta=0.0, steps=5),
     "calibrate_tau: density=NoneType has no log_prob"),
    (lambda: calibrate_tau(_mlp(), torch.rand(4, 6), torch.tensor([0, 1, 2, 0]), KDE(bandwidth=0.3).fit(torch.rand(30, 6), torch.arange(30) % 3),
                           gamma=1.0, beta=0.0, steps=5, ratio=0), "calibrate_tau: ratio=0 must be a finite number > 0"),
    (lambda: calibrate_tau(_mlp(), torch.rand(4, 6), torch.tensor([0, 1, 2, 0]), KDE(bandwidth=0.3).fit(torch.rand(30, 6), torch.arange(30) % 3),
                           gamma=1.0, beta=0.0, steps=5, max_samples=0), "calibrate_tau: max_samples=0 must be an integer >= 1"),
    (lambda: calibrate_tau(_mlp(), torch.rand(4, 6), torch.tensor([0, 1, 2, 5]), KDE(bandwidth=0.3).fit(torch.rand(30, 6), torch.arange(30) % 3),
                           gamma=1.0, beta=0.0, steps=5), "calibrate_tau: target contains class(es) [5]"),
    (lambda: GMM(covariance_type="block"), "GMM: covariance_type='block' is not one of"),
    (lambda: GMM(n_components=0), "GMM: n_components=0"),
    (lambda: KDE().fit(torch.rand(10, 3), torch.zeros(9, dtype=torch.long)), "KDE.fit: y has 9 labels but the batch has 10"),
    (lambda: KDE().fit(torch.rand(10, 3), torch.tensor([0] * 9 + [1])), "KDE.fit: every class needs >= 2 samples"),
    (lambda: GMM(n_components=4).fit(torch.rand(10, 3), torch.tensor([0] * 7 + [1] * 3)), "GMM.fit: every class needs >= n_components=4"),
    (lambda: KDE(projection=5).fit(torch.rand(10, 3), torch.tensor([0, 1] * 5)), "KDE.fit: projection=5 exceeds"),
    (lambda: KDE(bandwidth=1.0).fit(torch.rand(10, 3), torch.tensor([0, 1] * 5)).log_prob(torch.rand(2, 3), torch.tensor([0, 5])),
     "KDE.log_prob: y contains class(es) [5] for which the density was not fitted"),
    (lambda: make_perturbation("pcfe_l0", gamma=1.0, beta=-1.0, steps=5), "make_perturbation('pcfe_l0'): beta=-1.0"),
    (lambda: make_perturbation("pcfe_l0", gamma=0.0, beta=1.0, steps=5), "make_perturbation('pcfe_l0'): gamma=0.0"),
    (lambda: make_perturbation("pcfe_l0", gamma=1.0, beta=1.0, steps=5, tau=-1.0), "make_perturbation('pcfe_l0'): tau=-1.0"),
    (lambda: make_perturbation("pcfe_l0", gamma=1.0, beta=1.0, steps=5, lo=1.0, hi=0.0), "make_perturbation('pcfe_l0'): box has lo=1.0 > hi=0.0"),
    (lambda: make_perturbation("pcfe_l0", gamma=1.0, beta=1.0, steps=5, tau=1.0, density=KDE()), "make_perturbation('pcfe_l0'): density is not fitted"),
    (lambda: make_perturbation("pcfe_l0", gamma=1.0, beta=1.0, steps=5, alpha=1), "make_perturbation('pcfe_l0'): unknown parameter(s) ['alpha']"),
    (lambda: scfe_objective(_mlp(), torch.rand(2, 6), torch.rand(3, 6), torch.tensor([0, 1]), gamma=1.0, beta=0.0), "scfe_objective: x_cf has shape (3, 6)"),
])
def test_bad_input_elsewhere(call, msg):
    with pytest.raises(ValueError) as e:
        call()
    assert msg in str(e.value)


def test_class_loss_values():
    z = torch.tensor([[1.0, 3.0]])
    assert torch.allclose(class_loss(z, torch.tensor([1]), "logistic"), torch.nn.functional.softplus(torch.tensor([-2.0])))
    assert torch.allclose(class_loss(z, torch.tensor([0]), "exponential"), torch.exp(torch.tensor([2.0])))
    assert torch.allclose(class_loss(z, torch.tensor([1]), "ce"), torch.nn.functional.cross_entropy(z, torch.tensor([1]), reduction="none"))
