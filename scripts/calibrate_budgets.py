"""Flip rates of each perturbation method on the embedded WaterBirds-like data, over a grid of budgets.

The default presets of 05/06 take, for each method, the smallest budget of its grid whose perturbations
make the source model predict the target for >= 90% of 400 training images (targets = the other class):
a criterion on the *source* model only, fixed before any fresh model is trained or any WGA is seen.
usage: .venv/bin/python scripts/calibrate_budgets.py [--dataset waterbirds|spuco_dogs] [--optimizer sgd|adam] [--lr LR]
"""
import argparse

import torch

import cfx_nb.attacks  # noqa: F401  (registers pgd_l2, pgd_linf, cfe_l2)
import cfx_nb.scfe  # noqa: F401  (registers pcfe_l0)
from cfx_nb.core import make_perturbation, seed_everything
from cfx_nb.data import load_dataset
from cfx_nb.models import make_model
from cfx_nb.training import fit

GRIDS = {"pgd_l2": [dict(eps=e, steps=20) for e in (1.0, 2.0, 3.0, 4.0)],
         "pgd_linf": [dict(eps=e, steps=20) for e in (8 / 255, 0.05, 0.1, 0.15, 0.2)],
         "cfe_l2": [dict(lam=0.01, lr=0.01, steps=20)],
         "pcfe_l0": [dict(gamma=g, beta=1e-3, steps=20, search_steps=2) for g in (1.0, 10.0, 100.0)]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="waterbirds", choices=["waterbirds", "spuco_dogs"])
    ap.add_argument("--size", type=int, default=16, help="image side (the default presets': 16)")
    ap.add_argument("--scale", type=float, default=None, help="data scale (default: the default preset's, 1.0 / 0.25)")
    ap.add_argument("--optimizer", default=None, choices=["sgd", "adam"],
                    help="the source model's optimizer (default: the default preset's, sgd for waterbirds (05), adam for spuco_dogs (06))")
    ap.add_argument("--lr", type=float, default=None, help="its learning rate (default: 0.01 for sgd, 1e-3 for adam)")
    a = ap.parse_args()
    a.optimizer = a.optimizer or ("sgd" if a.dataset == "waterbirds" else "adam")
    opt = dict(optimizer=a.optimizer, lr=a.lr if a.lr is not None else (0.01 if a.optimizer == "sgd" else 1e-3))
    if a.optimizer == "sgd": opt["momentum"] = 0.9
    scale = a.scale if a.scale is not None else (1.0 if a.dataset == "waterbirds" else 0.25)
    tr = load_dataset(a.dataset, "train", size=a.size, scale=scale)
    seed_everything(1)
    f = make_model("small_cnn", n_classes=tr.n_classes, in_channels=3, image_size=a.size, width=0.25)
    fit(f, tr, epochs=15, batch_size=128, progress=False, seed=0, **opt)
    idx = torch.randperm(len(tr), generator=torch.Generator().manual_seed(0))[:400]
    x, y = tr.x[idx], tr.y[idx]
    t = (y + 1) % tr.n_classes
    print(f"| method | parameters | flip rate | mean ℓ2 |\n|---|---|---|---|")
    for name, grid in GRIDS.items():
        for p in grid:
            xt = make_perturbation(name, **p)(f, x, t)
            with torch.no_grad(): r = (f(xt).argmax(1) == t).float().mean().item()
            print(f"| {name} | {p} | {r:.3f} | {(xt - x).flatten(1).norm(dim=1).mean():.2f} |")


if __name__ == "__main__":
    main()
