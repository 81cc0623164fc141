"""cfx_nb.attacks: PGD against the torchattacks oracle, constraints, targeted success on a trained model,
Wachter CFE, bad input, and the model's state (mode, parameter gradients) left untouched."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

torchattacks = pytest.importorskip("torchattacks")

from cfx_nb.attacks import cfe_l2, pgd
from cfx_nb.core import eval_mode
from cfx_nb.core import PERTURBATIONS, make_perturbation
from cfx_nb.models import SmallCNN


def l2(d): return d.flatten(1).norm(dim=1)
def linf(d): return d.flatten(1).abs().amax(dim=1)


def tiny_cnn(k=3, c=1, seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), act(), nn.Dropout(0.2),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), act(), nn.Flatten(), nn.Linear(128, k))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    return tiny_cnn().train(), torch.rand(12, 1, 8, 8), torch.randint(0, 3, (12,))


# ---------------------------------------------------------------- oracle: torchattacks PGD / PGDL2
def _torchattacks(model, x, y, norm, eps, alpha, steps, targeted, random_start):
    Atk = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    atk = Atk(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    if targeted: atk.set_mode_targeted_by_label(quiet=True)
    return atk(x, y)


@pytest.mark.parametrize("norm, eps, alpha", [("linf", 8 / 255, 2 / 255), ("l2", 1.0, 0.2)])
@pytest.mark.parametrize("targeted", [False, True])
def test_oracle_small_cnn_float64(norm, eps, alpha, targeted):
    """The project's SmallCNN in double precision: same iterates as torchattacks (no random start).
    L2 differs only by torchattacks' 1e-10 guard acting on the batch-mean gradient (~1e-8)."""
    torch.manual_seed(0)
    model = SmallCNN(1, 10, 16, width=0.25).double()
    x, y = torch.rand(8, 1, 16, 16, dtype=torch.float64), torch.randint(0, 10, (8,))
    ref = _torchattacks(model, x, y, norm, eps, alpha, 10, targeted, False)
    ours = pgd(model, x, y, norm=norm, eps=eps, alpha=alpha, steps=10, targeted=targeted)
    assert (ours - ref).abs().max() <= (1e-12 if norm == "linf" else 1e-6)
    assert (ours - x).abs().max() > eps / 10  # the attack did move


@pytest.mark.parametrize("norm, eps, alpha", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)])
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("random_start", [False, True])
def test_oracle_float32(norm, eps, alpha, targeted, random_start):
    """Single precision, on a small CNN with smooth activations (with ReLU kinks, 1-ulp differences in the
    order of operations can flip a kink and grow; the float64 test covers ReLU). The random start
    consumes the generator exactly as torchattacks does, so with one seed both start at the same point."""
    model = tiny_cnn(k=4, act=nn.Softplus)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 4, (16,))
    torch.manual_seed(3); ref = _torchattacks(model, x, y, norm, eps, alpha, 10, targeted, random_start)
    torch.manual_seed(3); ours = pgd(model, x, y, norm=norm, eps=eps, alpha=alpha, steps=10, targeted=targeted, random_start=random_start)
    assert (ours - ref).abs().max() <= 1e-5


# ---------------------------------------------------------------- constraints on random models
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm, eps, dist", [("linf", 0.03, linf), ("linf", 0.3, linf), ("l2", 0.25, l2), ("l2", 3.0, l2)])
@pytest.mark.parametrize("kw", [{}, {"targeted": True}, {"random_start": True}, {"keep_best": True}])
def test_constraints(seed, norm, eps, dist, kw):
    model = tiny_cnn(k=5, c=3, seed=seed)
    torch.manual_seed(seed)
    x = torch.rand(10, 3, 8, 8); x[0] = 0; x[1] = 1  # corners of the box
    y = torch.randint(0, 5, (10,))
    xa = pgd(model, x, y, norm=norm, eps=eps, alpha=eps / 3, steps=6, **kw)
    assert xa.shape == x.shape and xa.dtype == x.dtype and not xa.requires_grad
    assert (dist(xa - x) <= eps * (1 + 1e-5)).all()
    assert xa.min() >= 0 and xa.max() <= 1


def test_eps_zero_returns_input(setup):
    model, x, y = setup
    for norm in ["l2", "linf"]:
        assert torch.equal(pgd(model, x, y, norm=norm, eps=0.0, alpha=0.1, steps=3, random_start=True), x)


def test_untargeted_increases_and_targeted_decreases_loss(setup):
    model, x, y = setup
    t = (y + 1) % 3
    def loss(z, lab):
        with torch.no_grad(), eval_mode(model): return F.cross_entropy(model(z), lab, reduction="none")
    for norm, eps in [("l2", 1.0), ("linf", 0.1)]:
        xu = pgd(model, x, y, norm=norm, eps=eps, alpha=eps / 4, steps=10)
        xt = pgd(model, x, t, norm=norm, eps=eps, alpha=eps / 4, steps=10, targeted=True)
        assert loss(xu, y).mean() > loss(x, y).mean()
        assert loss(xt, t).mean() < loss(x, t).mean()
        xb = pgd(model, x, t, norm=norm, eps=eps, alpha=eps / 4, steps=10, targeted=True, keep_best=True)
        assert (loss(xb, t) <= loss(xt, t) + 1e-6).all() and (loss(xb, t) <= loss(x, t) + 1e-6).all()


def test_batch_independence(setup):
    "Each sample's attack does not depend on the other samples of its batch."
    model, x, y = setup
    full = pgd(model, x, y, norm="l2", eps=1.0, alpha=0.25, steps=5)
    halves = torch.cat([pgd(model, x[:5], y[:5], norm="l2", eps=1.0, alpha=0.25, steps=5),
                        pgd(model, x[5:], y[5:], norm="l2", eps=1.0, alpha=0.25, steps=5)])
    assert (full - halves).abs().max() < 1e-5


# ---------------------------------------------------------------- a trained model: targeted success, CFE
@pytest.fixture(scope="module")
def digits_model():
    "A small CNN trained for a few seconds on scikit-learn's 8×8 digits (in [0,1])."
    from sklearn.datasets import load_digits
    d = load_digits()
    X = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16
    Y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(X), generator=g)
    tr, te = perm[:1500], perm[1500:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 16, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        for i in range(0, len(tr), 64):
            b = tr[i:i + 64]; opt.zero_grad(); F.cross_entropy(model(X[b]), Y[b]).backward(); opt.step()
    model.eval()
    with torch.no_grad(): acc = (model(X[te]).argmax(1) == Y[te]).float().mean().item()
    assert acc > 0.9, acc
    return model, X[tr], Y[tr], X[te][:128], Y[te][:128]


@pytest.mark.parametrize("norm, eps", [("l2", 2.0), ("linf", 0.3)])
def test_targeted_attack_reaches_target(digits_model, norm, eps):
    model, _, _, x, y = digits_model
    t = (y + 1 + torch.randint(0, 9, y.shape, generator=torch.Generator().manual_seed(1))) % 10  # random wrong targets
    xa = pgd(model, x, t, norm=norm, eps=eps, alpha=None, steps=40, targeted=True)
    with torch.no_grad(): hit = (model(xa).argmax(1) == t).float().mean().item()
    assert hit >= 0.9, hit
    # and a budget ten times smaller mostly fails: the budget matters
    xs = pgd(model, x, t, norm=norm, eps=eps / 10, alpha=None, steps=40, targeted=True)
    with torch.no_grad(): assert (model(xs).argmax(1) == t).float().mean().item() < 0.5


def test_cfe_flips_decisions_with_small_l2(digits_model):
    model, xtr, ytr, x, y = digits_model
    t = (y + 3) % 10
    xc = cfe_l2(model, x, t, lam=0.1, lr=0.01, steps=100)  # paper 2's MNIST setting (App. B)
    with torch.no_grad(): flipped = (model(xc).argmax(1) == t).float().mean().item()
    assert flipped >= 0.9, flipped
    assert xc.min() >= 0 and xc.max() <= 1
    # "small": much closer than the nearest training image of the target class
    d_cfe = l2(xc - x)
    d_nn = torch.stack([torch.cdist(x[i].flatten()[None], xtr[ytr == t[i]].flatten(1)).min() for i in range(len(x))])
    assert d_cfe.mean() < 0.75 * d_nn.mean(), (d_cfe.mean(), d_nn.mean())
    # a higher price on the distance gives closer counterfactuals
    assert l2(cfe_l2(model, x, t, lam=1.0, lr=0.01, steps=100) - x).mean() < d_cfe.mean()


# ---------------------------------------------------------------- the model is left as it was
class CountingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net, self.calls, self.n_classes = tiny_cnn(), 0, 3
    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("attack", ["pgd_l2", "pgd_linf", "cfe"])
def test_param_grads_and_mode_untouched(setup, attack):
    model, x, y = setup
    model[3].eval()  # a submodule in eval mode inside a model in train mode
    for p in model.parameters(): p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in model.parameters()]
    bn = model[1].running_mean.clone()
    modes = [m.training for m in model.modules()]
    if attack == "cfe": cfe_l2(model, x, y, lam=0.1, lr=0.01, steps=3)
    else: pgd(model, x, y, norm=attack[4:], eps=0.1, alpha=0.05, steps=3, random_start=True)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[1].running_mean, bn)  # eval mode: batch-norm statistics untouched
    model2 = tiny_cnn()
    pgd(model2, x, y, norm="l2", eps=0.1, alpha=0.05, steps=2)
    assert all(p.grad is None for p in model2.parameters())


def test_mode_restored_after_error(setup):
    _, x, y = setup
    class Boom(nn.Module):
        n_classes = 3
        def __init__(self): super().__init__(); self.lin = nn.Linear(64, 3); self.calls = 0
        def forward(self, z):
            self.calls += 1
            if self.calls > 2: raise RuntimeError("boom")
            return self.lin(z.flatten(1))
    m = Boom().train()
    with pytest.raises(RuntimeError): pgd(m, x, y, norm="l2", eps=0.1, alpha=0.05, steps=5)
    assert m.training


def test_one_forward_per_step_no_clean_recompute(setup):
    _, x, y = setup
    m = CountingNet()
    pgd(m, x, y, norm="linf", eps=0.1, alpha=0.05, steps=7)
    assert m.calls == 7
    m.calls = 0
    pgd(m, x, y, norm="l2", eps=0.1, alpha=0.05, steps=7, keep_best=True)
    assert m.calls == 8  # keep_best scores the final iterate once


def test_works_under_no_grad_and_inference_mode(setup):
    model, x, y = setup
    ref = pgd(model, x, y, norm="l2", eps=0.5, alpha=0.1, steps=3)
    with torch.no_grad(): a = pgd(model, x, y, norm="l2", eps=0.5, alpha=0.1, steps=3)
    with torch.inference_mode(): b = pgd(model, x, y, norm="l2", eps=0.5, alpha=0.1, steps=3)
    assert torch.equal(a, ref) and torch.equal(b, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_sync_per_step_cuda():
    from cfx_nb.attacks import pgd_batch
    torch.manual_seed(0)
    model = SmallCNN(1, 10, 16).cuda().eval()
    x, y = torch.rand(64, 1, 16, 16, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for norm in ["l2", "linf"]:
            for kw in [{}, {"keep_best": True, "targeted": True}, {"random_start": True}]:
                pgd_batch(model, x, y, norm, 0.5, 0.1, 5, **kw)
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ---------------------------------------------------------------- bad input: ValueError naming the parameter
KW = dict(norm="l2", eps=0.5, alpha=0.1, steps=3)


@pytest.mark.parametrize("change, msg", [
    ({"norm": "l1"}, "pgd: norm='l1' is not one of 'l2', 'linf'"),
    ({"norm": None}, "pgd: norm=None is not one of"),
    ({"eps": -0.1}, "pgd: eps=-0.1 must be a finite number >= 0"),
    ({"eps": math.nan}, "pgd: eps=nan"),
    ({"alpha": 0}, "pgd: alpha=0 must be a finite number > 0"),
    ({"alpha": -1.0}, "pgd: alpha=-1.0"),
    ({"steps": 0}, "pgd: steps=0 must be an integer >= 1"),
    ({"steps": 2.5}, "pgd: steps=2.5 must be an integer"),
    ({"targeted": "yes"}, "pgd: targeted='yes' is not one of False, True"),
    ({"random_start": 1}, "pgd: random_start=1 is not one of False, True"),
    ({"keep_best": None}, "pgd: keep_best=None is not one of False, True"),
])
def test_pgd_bad_params(setup, change, msg):
    model, x, y = setup
    with pytest.raises(ValueError) as e: pgd(model, x, y, **{**KW, **change})
    assert msg in str(e.value)


def test_pgd_x_outside_box(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match=r"pgd: x has values in \[.*\]; allowed range is \[0.0, 1.0\]"):
        pgd(model, x + 0.5, y, **KW)
    with pytest.raises(ValueError, match="pgd: x has values in"): pgd(model, x - 0.5, y, **KW)


def test_pgd_x_nan(setup):
    model, x, y = setup
    x = x.clone(); x[3, 0, 2, 2] = math.nan
    with pytest.raises(ValueError, match="pgd: x contains NaN or inf"): pgd(model, x, y, **KW)


def test_pgd_label_out_of_range(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match=r"pgd: y has labels in \[3, 3\]; allowed: 0 … 2"): pgd(model, x, torch.full_like(y, 3), **KW)
    with pytest.raises(ValueError, match=r"pgd: y has labels in \[-1"): pgd(model, x, y - 1, **KW)


def test_pgd_label_out_of_range_from_n_classes_attribute(setup):
    _, x, y = setup
    with pytest.raises(ValueError, match=r"allowed: 0 … 9 \(n_classes=10\)"):
        pgd(SmallCNN(1, 10, 8), x, torch.full_like(y, 10), **KW)


def test_pgd_shape_mismatch(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="pgd: y has 11 labels but the batch has 12"): pgd(model, x, y[:11], **KW)
    with pytest.raises(ValueError, match="pgd: y must be a 1-d integer tensor"): pgd(model, x, y[:, None], **KW)
    with pytest.raises(ValueError, match="pgd: x has shape"): pgd(model, x[0, 0, 0], y, **KW)


def test_empty_batch_is_refused_like_scfe(setup):
    model, x, y = setup
    for call, fn in [(lambda: pgd(model, x[:0], y[:0], **KW), "pgd"),
                     (lambda: cfe_l2(model, x[:0], y[:0], lam=0.1, lr=0.01, steps=2), "cfe_l2")]:
        with pytest.raises(ValueError) as e: call()
        assert f"{fn}: x has shape (0, 1, 8, 8)" in str(e.value) and "N >= 1" in str(e.value)


def test_pgd_bad_types(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="pgd: model must be a torch.nn.Module"): pgd(lambda z: z, x, y, **KW)
    with pytest.raises(ValueError, match="pgd: x must be a torch.Tensor"): pgd(model, x.numpy(), y, **KW)
    with pytest.raises(ValueError, match="pgd: x must be a floating-point tensor"): pgd(model, (x > 0.5).long(), y, **KW)
    with pytest.raises(ValueError, match="pgd: y must be a 1-d integer tensor"): pgd(model, x, y.float(), **KW)
    with pytest.raises(ValueError, match="pgd: model must return logits of shape N×K"):
        pgd(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), x, torch.zeros_like(y), **KW)


@pytest.mark.parametrize("change, msg", [
    ({"lam": -1.0}, "cfe_l2: lam=-1.0 must be a finite number >= 0"),
    ({"lr": 0}, "cfe_l2: lr=0 must be a finite number > 0"),
    ({"steps": 0}, "cfe_l2: steps=0 must be an integer >= 1"),
])
def test_cfe_bad_params(setup, change, msg):
    model, x, y = setup
    with pytest.raises(ValueError) as e: cfe_l2(model, x, y, **{**dict(lam=0.1, lr=0.01, steps=3), **change})
    assert msg in str(e.value)


def test_cfe_bad_tensors(setup):
    model, x, y = setup
    kw = dict(lam=0.1, lr=0.01, steps=3)
    with pytest.raises(ValueError, match="cfe_l2: x has values in"): cfe_l2(model, x * 3, y, **kw)
    with pytest.raises(ValueError, match="cfe_l2: target has labels in"): cfe_l2(model, x, y + 5, **kw)
    with pytest.raises(ValueError, match="cfe_l2: target has 4 labels but the batch has 12"): cfe_l2(model, x, y[:4], **kw)


# ---------------------------------------------------------------- the perturbation registry
def test_registered_perturbations(setup):
    model, x, y = setup
    assert {"pgd_l2", "pgd_linf", "cfe_l2"} <= set(PERTURBATIONS)
    t = (y + 1) % 3
    for name, norm in [("pgd_l2", "l2"), ("pgd_linf", "linf")]:
        perturb = make_perturbation(name, eps=0.3, alpha=0.1, steps=4)
        assert torch.equal(perturb(model, x, t), pgd(model, x, t, norm=norm, eps=0.3, alpha=0.1, steps=4, targeted=True))
    assert make_perturbation("pgd_l2", eps=1.0, steps=10).keywords["alpha"] == 0.25  # Madry's 2.5·ε/steps
    xc = make_perturbation("cfe_l2", lam=0.1, lr=0.01, steps=3)(model, x, t)
    assert torch.equal(xc, cfe_l2(model, x, t, lam=0.1, lr=0.01, steps=3))


@pytest.mark.parametrize("name, params, msg", [
    ("pgd_l2", {"eps": -1}, "make_perturbation('pgd_l2'): eps=-1"),
    ("pgd_linf", {"eps": 0.1, "alpha": 0}, "make_perturbation('pgd_linf'): alpha=0"),
    ("pgd_linf", {"eps": 0.1, "steps": 0}, "make_perturbation('pgd_linf'): steps=0"),
    ("cfe_l2", {"lam": -0.5}, "make_perturbation('cfe_l2'): lam=-0.5"),
    ("cfe_l2", {"lr": 0.0}, "make_perturbation('cfe_l2'): lr=0.0"),
])
def test_perturbation_params_validated_eagerly(name, params, msg):
    with pytest.raises(ValueError) as e: make_perturbation(name, **params)
    assert msg in str(e.value)


def test_box_bounds_unbounded_and_bad():
    """lo/hi: None means unbounded (tabular/synthetic data); lo >= hi is refused before any work."""
    from cfx_nb.attacks import cfe_l2, pgd
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    z, t = 2 * torch.randn(5, 4), torch.randint(0, 2, (5,))
    for norm, eps in (("l2", 1.5), ("linf", 0.4)):
        za = pgd(mlp, z, t, norm=norm, eps=eps, alpha=eps / 4, steps=8, targeted=True, lo=None, hi=None)
        d = (za - z).flatten(1).norm(p=2 if norm == "l2" else float("inf"), dim=1)
        assert d.max() <= eps + 1e-5
    zc = cfe_l2(mlp, z, t, lam=0.1, lr=0.1, steps=5, lo=None, hi=None)
    assert zc.shape == z.shape and torch.isfinite(zc).all()
    with pytest.raises(ValueError, match=r"pgd: lo=1.0 must be < hi=0.0"):
        pgd(mlp, z, t, norm="l2", eps=1.0, alpha=0.1, steps=1, lo=1.0, hi=0.0)
    with pytest.raises(ValueError, match=r"cfe_l2: x has values in"):
        cfe_l2(mlp, z, t, lam=0.1, lr=0.1, steps=1)  # default box [0,1]
