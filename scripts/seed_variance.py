"""Seed-to-seed spread of the source model's test worst-group accuracy on an embedded dataset.

How 05's and 06's default presets were chosen (their notebooks tabulate the results): train the preset's
small CNN from 8 seeds on the embedded data at a given size and scale, and report mean ± std and the range
of test accuracy and WGA. A spread of ±20 points means a seed's model learns the object or the background
by chance, and no verdict built on a few such seeds survives a rerun.

usage: OMP_NUM_THREADS=1 .venv/bin/python scripts/seed_variance.py CONFIG [SIZE [SCALE [WIDTH]]]
       CONFIG: A_adam_const15, B_adam_cos15, C_adam_cos30, D_sgd_cos30, E_adam_cos15_wd, F_sgd_const15
       SIZE 16, SCALE 1.0, WIDTH 0.25 by default; DATASET=spuco_dogs in the environment for 06's data
"""
import os
import sys
import time

import numpy as np
import torch

from cfx_nb.data import load_dataset
from cfx_nb.models import make_model
from cfx_nb.training import evaluate, fit

CONFIGS = {
    "A_adam_const15": dict(optimizer="adam", lr=1e-3, epochs=15),
    "B_adam_cos15": dict(optimizer="adam", lr=1e-3, epochs=15, schedule="cosine"),
    "C_adam_cos30": dict(optimizer="adam", lr=1e-3, epochs=30, schedule="cosine"),
    "D_sgd_cos30": dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=30, schedule="cosine"),
    "E_adam_cos15_wd": dict(optimizer="adamw", lr=2e-3, weight_decay=0.05, epochs=15, schedule="cosine"),
    "F_sgd_const15": dict(optimizer="sgd", lr=0.01, momentum=0.9, epochs=15),
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in CONFIGS:
        sys.exit(f"seed_variance.py: CONFIG must be one of {sorted(CONFIGS)}\n{__doc__}")
    name = sys.argv[1]
    size, scale, width = (int(sys.argv[2]) if len(sys.argv) > 2 else 16, float(sys.argv[3]) if len(sys.argv) > 3 else 1.0,
                          float(sys.argv[4]) if len(sys.argv) > 4 else 0.25)
    torch.set_num_threads(1)
    ds = os.environ.get("DATASET", "waterbirds")
    tr, te = (load_dataset(ds, s, size=size, scale=scale) for s in ("train", "test"))
    out = []
    for seed in range(8):
        torch.manual_seed(seed)
        m = make_model("small_cnn", n_classes=tr.n_classes, in_channels=3, image_size=size, width=width)
        t = time.time()
        fit(m, tr, batch_size=128, seed=seed, device="cpu", progress=False, **CONFIGS[name])
        r = evaluate(m, te, device="cpu")
        out.append((100 * r["acc"], 100 * r["wga"], time.time() - t))
    a = np.array(out)
    print(f"{ds} {name} size={size} scale={scale} width={width}: test acc {a[:, 0].mean():.1f} ± {a[:, 0].std(ddof=1):.1f}, "
          f"WGA {a[:, 1].mean():.1f} ± {a[:, 1].std(ddof=1):.1f} (range {a[:, 1].min():.1f}–{a[:, 1].max():.1f}), "
          f"{a[:, 2].mean():.1f} s per model; WGA per seed {np.round(a[:, 1], 1).tolist()}")


if __name__ == "__main__":
    main()
