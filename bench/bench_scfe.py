"""Benchmark the S-CFE solver (cfx_nb.scfe): batched vs one sample at a time, and one iteration vs the floor.

Two ratios, each against a reference measured in the same run (medians of several repeats):

1. speed-up of the batched solver over the same solver called once per sample (same settings, N samples);
   target >= 20x.
2. time of one FISTA iteration (batched, N samples, tol=0; samples at a fixed point still stop, so the time is
   divided by the mean number of iterations per sample; the time per loop pass is reported too) over the floor: one forward+backward of the
   classifier w.r.t. the input plus the density's log_prob forward+backward on the same batch (the work any
   first-order method must do per step); target <= 1.3x. Exact backtracking and the monotone restart also
   need f at the trial point, i.e. one more (no-grad) forward per iteration, so the ratio against
   "floor + one forward" is reported too: it is the solver's own overhead.

Usage:  .venv/bin/python bench/bench_scfe.py [--device auto|cpu|cuda] [--n 256] [--steps 50] [--search-steps 2]
                                             [--n-seq 256] [--repeats 5] [--threads 0] [--out bench/results_scfe.json]
The model is the project's SmallCNN (width 0.25) on 16×16 digits (scikit-learn's bundled set, upsampled),
trained for a few epochs so that the γ search behaves as in use; q̂ is the PPCA-KDE with a 16-component code
per class, and τ is `calibrate_tau`'s value (or --tau).

A second mode measures τ rather than time:
        .venv/bin/python bench/bench_scfe.py --calibrate-waterbirds [--threads 1] [--out ...]
trains 05_waterbirds' default source model (small CNN width 0.25, 24 px, scale 0.5, Adam 1e-3, batch 128,
15 epochs, seed 0), fits the PPCA-KDE (k = 16) on the training set, and reports `calibrate_tau` at the default
preset's S-CFE settings (γ₀ = 10, β = 1e-3, 20 steps, 2 search steps; 256 training images, ỹ = 1 − y), 4σ̄²
(the authors' weight 2.0 read as a sum-of-squares reconstruction weight), and on 256 other training images
the flip rate, ℓ0, ℓ2 and distance to the target class's principal subspace at τ = 0, τ calibrated and 4σ̄²,
and the median norm of ∇ log q̂ inside / outside the target class's span for the code density alone and the PPCA density.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

import torch
from _common import machine, sync, timed
import torch.nn.functional as F



def setup(dev, seed=0, width=0.25):
    from sklearn.datasets import load_digits
    from cfx_nb.models import SmallCNN
    from cfx_nb.scfe import KDE
    torch.manual_seed(seed)
    d = load_digits()
    X = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16
    X = F.interpolate(X, size=16, mode="bilinear", align_corners=False).clamp(0, 1)
    Y = torch.tensor(d.target)
    m = SmallCNN(1, 10, image_size=16, width=width)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(5):
        perm = torch.randperm(1400)
        for i in range(0, 1400, 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(m(X[idx]), Y[idx]); opt.zero_grad(); loss.backward(); opt.step()
    m.eval().to(dev)
    kde = KDE(projection=16, bandwidth="scott").fit(X[:1400], Y[:1400])
    return m, kde, X[1400:].to(dev), Y[1400:].to(dev)


def calibrate_waterbirds(args):
    "τ on the embedded WaterBirds-like default data (see the module docstring)."
    import numpy as np
    from cfx_nb.core import seed_everything
    from cfx_nb.data import load_dataset
    from cfx_nb.models import make_model
    from cfx_nb.scfe import KDE, calibrate_tau, scfe
    from cfx_nb.training import fit
    t0 = time.time()
    train = load_dataset("waterbirds", "train", size=24, scale=0.5)
    seed_everything(0)
    m = make_model("small_cnn", n_classes=2, in_channels=3, image_size=24, width=0.25)
    fit(m, train, epochs=15, batch_size=128, optimizer="adam", lr=1e-3, seed=0, device="cpu", progress=False)
    m.eval()
    t_train = time.time() - t0
    kde = KDE(projection=16).fit(train.x, train.y)
    t_fit = time.time() - t0 - t_train
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(train.x), generator=g)
    ic, ie = perm[:256], perm[256:512]
    kw = dict(gamma=10.0, beta=1e-3, steps=20, search_steps=2)
    tau = calibrate_tau(m, train.x[ic], 1 - train.y[ic], kde, **kw)
    s2 = float(np.mean(list(kde.sigma2_.values())))
    res = {"n_train": len(train.x), "d": int(train.x[0].numel()), "k": 16, "sigma2": kde.sigma2_, "tau_calibrated": tau,
           "tau_4_sigma2": 4 * s2, "train_s": round(t_train, 1), "density_fit_s": round(t_fit, 1), "runs": {}}
    x, t = train.x[ie], 1 - train.y[ie]
    for name, tt in [("tau=0", 0.0), ("tau=calibrated", tau), ("tau=4sigma2", 4 * s2)]:
        t1 = time.time()
        r = scfe(m, x, t, tau=tt, density=kde if tt > 0 else None, **kw)
        res["runs"][name] = {"tau": tt, "flip_rate": r.valid.float().mean().item(), "l0": r.l0.float().mean().item(),
                             "l2": r.l2.mean().item(), "dist_to_target_subspace": kde.manifold_distance(r.x, t).mean().item(),
                             "log_q": kde.log_prob(r.x, t).mean().item(), "seconds": round(time.time() - t1, 1)}
    res["dist_original_to_target_subspace"] = kde.manifold_distance(x, t).mean().item()
    W = torch.stack([torch.as_tensor(kde.pcas_[int(c)].components_) for c in t])           # N×k×d, float64
    for name, f in [("code_only", kde.code_log_prob), ("ppca", kde.log_prob)]:            # the free directions
        xg = x.double().clone().requires_grad_()
        gr, = torch.autograd.grad(f(xg, t).sum(), xg)
        gr = gr.flatten(1)
        inside = torch.einsum("nkd,nd->nk", W, gr)
        outside = gr - torch.einsum("nk,nkd->nd", inside, W)
        res[f"grad_{name}_median_norm_inside_outside_span"] = [inside.norm(dim=1).median().item(), outside.norm(dim=1).median().item()]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--search-steps", type=int, default=2)
    ap.add_argument("--n-seq", type=int, default=None, help="samples for the one-at-a-time run (default: --n; 0 skips it)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--width", type=float, default=0.25, help="SmallCNN channel multiplier (1 = the published widths)")
    ap.add_argument("--tau", type=float, default=None, help="plausibility weight (default: calibrate_tau's value)")
    ap.add_argument("--calibrate-waterbirds", action="store_true", help="measure τ on the WaterBirds-like default data instead")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    from cfx_nb.core import get_device
    from cfx_nb.scfe import calibrate_tau, scfe
    if args.threads: torch.set_num_threads(args.threads)
    if args.calibrate_waterbirds:
        res = calibrate_waterbirds(args)
        print(json.dumps(res, indent=1))
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f: json.dump(res, f, indent=1)
        return
    dev = get_device(args.device)
    m, kde, Xt, Yt = setup(dev, width=args.width)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, len(Xt), (args.n,), generator=g)
    x, y = Xt[idx.to(dev)], Yt[idx.to(dev)]
    tgt = (y + torch.randint(1, 10, (args.n,), generator=g).to(dev)) % 10
    tau = args.tau if args.tau is not None else calibrate_tau(m, x[:64], tgt[:64], kde, gamma=1.0, beta=0.01,
                                                              steps=args.steps, search_steps=args.search_steps)
    kw = dict(gamma=1.0, beta=0.01, tau=tau, density=kde, steps=args.steps, search_steps=args.search_steps)
    res = {"device": str(dev), "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "width": args.width, "n": args.n, "tau": tau, "steps": args.steps, "search_steps": args.search_steps}

    # 1. batched vs one sample at a time ---------------------------------------------------------------
    scfe(m, x[:8], tgt[:8], **kw)                                   # warm-up
    t_batch, _ = timed(lambda: scfe(m, x, tgt, **kw), dev, args.repeats)
    n_seq = args.n if args.n_seq is None else args.n_seq
    per = []
    for i in range(n_seq):
        sync(dev); t0 = time.perf_counter(); scfe(m, x[i:i + 1], tgt[i:i + 1], **kw); sync(dev)
        per.append(time.perf_counter() - t0)
    if n_seq:
        t_seq = sum(per) * args.n / n_seq
        res.update(batched_s=t_batch, sequential_s=t_seq, sequential_extrapolated=n_seq < args.n,
                   sequential_median_per_sample_s=statistics.median(per), speedup=t_seq / t_batch)
        print(f"[{dev}] batched {args.n} samples: {t_batch:.3f} s | one at a time: {t_seq:.2f} s"
              f"{' (extrapolated from %d)' % n_seq if n_seq < args.n else ''} | speed-up {t_seq / t_batch:.1f}x (target >= 20x)")

    # 2. one iteration vs the floor -------------------------------------------------------------------
    K = args.steps
    it_kw = dict(kw, search_steps=1, tol=0.0)
    for label, tau_i, dens in [("with KDE", tau, kde), ("no density", 0.0, None)]:
        kwi = dict(it_kw, tau=tau_i, density=dens)
        def solve(): return scfe(m, x, tgt, **kwi)
        r = solve()
        its = r.iterations.float().mean().item()        # per-sample iterations (samples at a fixed point stop)
        passes = r.iterations.max().item()               # loop passes of the batched solver
        t_solve, _ = timed(solve, dev, args.repeats)
        def floor():
            xv = x.detach().clone().requires_grad_(True)
            f = (xv - x).square().flatten(1).sum(1) + F.cross_entropy(m(xv), tgt, reduction="none")
            if dens is not None: f = f - tau_i * dens.log_prob(xv, tgt, check=False)
            torch.autograd.grad(f.sum(), xv)
        def check():                       # the forward at the trial point that backtracking + restart need
            with torch.no_grad():
                f = F.cross_entropy(m(x), tgt, reduction="none")
                if dens is not None: f = f - tau_i * dens.log_prob(x, tgt, check=False)
        for _ in range(3): floor(); check()
        t_floor, _ = timed(lambda: [floor() for _ in range(10)], dev, args.repeats)
        t_check, _ = timed(lambda: [check() for _ in range(10)], dev, args.repeats)
        t_floor, t_check = t_floor / 10, t_check / 10
        t_iter, t_pass = t_solve / its, t_solve / passes
        res[f"iteration_{label.replace(' ', '_')}"] = dict(
            per_sample_iteration_s=t_iter, per_pass_s=t_pass, floor_s=t_floor, forward_s=t_check,
            ratio=t_iter / t_floor, ratio_per_pass=t_pass / t_floor,
            ratio_vs_floor_plus_forward=t_iter / (t_floor + t_check), mean_iterations=its, passes=passes)
        print(f"[{dev}] {label}: floor (fwd+bwd{' + density grad' if dens else ''}) {1e3 * t_floor:.2f} ms, one forward "
              f"{1e3 * t_check:.2f} ms | one iteration {1e3 * t_iter:.2f} ms = {t_iter / t_floor:.2f}x floor (target <= 1.3x), "
              f"{t_iter / (t_floor + t_check):.2f}x (floor + forward) | one loop pass {1e3 * t_pass:.2f} ms = {t_pass / t_floor:.2f}x floor "
              f"({its:.1f} iterations per sample, {passes} passes)")
    if dev.type == "cuda": res["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f: json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
