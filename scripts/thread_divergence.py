"""How much one CPU thread vs two changes a trained source model: the float-noise amplification behind 05's optimizer.

Trains 05's source model (`small_cnn`, width 0.25, 16 px, the whole embedded WaterBirds-like training set,
batch 128, 15 epochs) from the same seed once at one and once at two CPU threads, in a subprocess each (the
thread count is fixed before torch starts), and reports, per optimizer setting, the largest weight difference
relative to the largest weight of its tensor, and the test accuracy and WGA of both models. Changing the thread
count changes only the order of floating-point sums; how far the two models end apart is how much training
amplifies rounding noise, which another machine of the same kind would trigger too.

usage: .venv/bin/python scripts/thread_divergence.py [SETTING ...] [--seed S] [--dtype float32|float64]
       SETTING: adam (lr 1e-3, the previous default), adam3e-4, sgd (lr 0.01, momentum 0.9: 05's default), sgd05
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {"adam": dict(optimizer="adam", lr=1e-3), "adam3e-4": dict(optimizer="adam", lr=3e-4),
            "sgd": dict(optimizer="sgd", lr=0.01, momentum=0.9), "sgd05": dict(optimizer="sgd", lr=0.05, momentum=0.9)}


def train_one(setting: str, seed: int, dtype: str, out: str) -> None:
    "Child process: train at the thread count of OMP_NUM_THREADS, save the weights and print the test metrics as JSON."
    import torch
    from cfx_nb.data import load_dataset
    from cfx_nb.models import make_model
    from cfx_nb.training import evaluate, fit
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    d = getattr(torch, dtype)
    tr, te = (load_dataset("waterbirds", s, size=16, scale=1.0) for s in ("train", "test"))
    if d != torch.float32: tr.x, te.x = tr.x.to(d), te.x.to(d)
    torch.manual_seed(seed)
    m = make_model("small_cnn", n_classes=2, in_channels=3, image_size=16, width=0.25).to(d)
    fit(m, tr, batch_size=128, seed=seed, device="cpu", progress=False, epochs=15, **SETTINGS[setting])
    r = evaluate(m, te, device="cpu")
    torch.save(m.state_dict(), out)
    print(json.dumps({"acc": 100 * r["acc"], "wga": 100 * r["wga"]}))


def compare(setting: str, seed: int, dtype: str, tmp: Path) -> dict:
    "Train at 1 and 2 threads in subprocesses; the largest relative weight difference and both models' test metrics."
    import torch
    res, files = {}, {}
    for th in (1, 2):
        files[th] = tmp / f"{setting}_{th}.pt"
        env = {**os.environ, "OMP_NUM_THREADS": str(th)}
        p = subprocess.run([sys.executable, __file__, "--child", setting, "--seed", str(seed), "--dtype", dtype, "--out", str(files[th])],
                           env=env, capture_output=True, text=True, check=True)
        res[th] = json.loads(p.stdout.strip().splitlines()[-1])
    a, b = torch.load(files[1]), torch.load(files[2])
    dev = max(float((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max()) for k in a if a[k].is_floating_point())
    return {"setting": setting, "dtype": dtype, "seed": seed, "max_rel_weight_diff": dev,
            **{f"test_{k}_{th}t": round(res[th][k], 2) for th in (1, 2) for k in ("acc", "wga")}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="*", default=["adam", "sgd"], help=f"one or more of {sorted(SETTINGS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return train_one(a.child, a.seed, a.dtype, a.out)
    bad = [s for s in a.settings if s not in SETTINGS]
    if bad: sys.exit(f"thread_divergence.py: SETTING {bad[0]!r} is not one of {sorted(SETTINGS)}")
    with tempfile.TemporaryDirectory() as d:
        for s in a.settings: print(json.dumps(compare(s, a.seed, a.dtype, Path(d))), flush=True)


if __name__ == "__main__":
    main()
