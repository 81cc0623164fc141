"""Benchmark one epoch of Madry adversarial training (cfx_nb.training.fit) against its floor, in one run.

Per batch, adversarial training must do `steps` forward+backward passes w.r.t. the input (the PGD attack,
model in eval mode) and one forward+backward w.r.t. the weights plus an optimizer step (model in train
mode): (steps + 1) × (forward + backward). The floor is that work measured in a bare loop on one batch
already on the device, times the number of batches; the epoch is `fit(..., epochs=1, adversarial=...)` on
the same data (an in-memory TensorDataset, batches fetched and moved to the device by fit, as in use).
Two epoch times are reported: the epoch loop alone (`history['time_s']`) and the whole `fit` call
(accelerate set-up included). Also one standard epoch against 1 × (forward + backward + step). Target:
adversarial epoch ≤ 1.1 × floor. Medians of --repeats runs.

Usage:  .venv/bin/python bench/bench_adv_training.py [--device auto|cpu|cuda] [--model small_cnn] [--n 2048]
                                                     [--batch 256] [--steps 10] [--repeats 3] [--threads 0]
                                                     [--mixed-precision no|bf16] [--out bench/results_adv_training.json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from _common import machine, sync
from bench_pgd import build


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--n", type=int, default=2048, help="training samples (n / batch batches per epoch)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="PGD steps of the inner maximization")
    ap.add_argument("--norm", default="l2", choices=["l2", "linf"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    from cfx_nb.attacks import pgd_batch
    from cfx_nb.core import eval_mode
    from cfx_nb.core import get_device
    from cfx_nb.training import fit
    if a.threads: torch.set_num_threads(a.threads)
    dev = get_device(a.device)
    if dev.type == "cuda": torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model, shape = build(a.model, dev, a.image_size)
    data = TensorDataset(torch.rand(a.n, *shape), torch.randint(0, 10, (a.n,)))
    n_batches = -(-a.n // a.batch)
    eps = 0.5 if a.norm == "l2" else 8 / 255
    adv = {"norm": a.norm, "eps": eps, "alpha": eps / 4, "steps": a.steps, "random_start": True}
    x, y = data.tensors[0][:a.batch].to(dev), data.tensors[1][:a.batch].to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.mixed_precision == "bf16")

    def attack_floor():  # steps × (forward + backward w.r.t. the input), eval mode
        with eval_mode(model):
            xg = x.clone().requires_grad_(True)
            for _ in range(a.steps): torch.autograd.grad(F.cross_entropy(model(xg), y), xg)

    def train_floor():  # 1 × (forward + backward w.r.t. the weights) + an optimizer step, train mode
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    def epoch(adversarial):
        h = fit(model, data, epochs=1, batch_size=a.batch, lr=1e-3, adversarial=adversarial, device=str(dev),
                progress=False, mixed_precision=a.mixed_precision, seed=0)
        return h["time_s"][0]

    def timed(f):
        sync(dev); t0 = time.perf_counter()
        with amp: r = f()
        sync(dev); return time.perf_counter() - t0, r

    for f in (attack_floor, train_floor, lambda: epoch(adv), lambda: epoch(None)): timed(f)  # warm-up
    t = {k: [] for k in ("attack_floor", "train_floor", "adv_fit", "adv_epoch", "std_fit", "std_epoch")}
    for r in range(a.repeats):
        t["attack_floor"].append(statistics.median(timed(attack_floor)[0] for _ in range(3)))
        t["train_floor"].append(statistics.median(timed(train_floor)[0] for _ in range(3)))
        w, e = timed(lambda: epoch(adv)); t["adv_fit"].append(w); t["adv_epoch"].append(e)
        w, e = timed(lambda: epoch(None)); t["std_fit"].append(w); t["std_epoch"].append(e)
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in t.items()), file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in t.items()}
    adv_floor = n_batches * (med["attack_floor"] + med["train_floor"])
    std_floor = n_batches * med["train_floor"]
    res = {"adv_epoch_over_floor": med["adv_epoch"] / adv_floor, "adv_fit_over_floor": med["adv_fit"] / adv_floor,
           "std_epoch_over_floor": med["std_epoch"] / std_floor, "std_fit_over_floor": med["std_fit"] / std_floor}

    mach = machine(dev)
    print(f"\nOne training epoch: {a.model}, {a.n} samples, batch {a.batch} ({n_batches} batches), {a.norm}-PGD {a.steps} steps, "
          f"device {dev}, mixed precision {a.mixed_precision}; medians of {a.repeats}\nmachine: {mach}\n")
    print("| epoch | floor (s) | epoch loop (s) | whole fit() (s) | loop / floor | fit() / floor |")
    print("|---|---|---|---|---|---|")
    print(f"| adversarial ({a.steps}+1 passes per batch) | {adv_floor:.3f} | {med['adv_epoch']:.3f} | {med['adv_fit']:.3f} | "
          f"{res['adv_epoch_over_floor']:.3f} | {res['adv_fit_over_floor']:.3f} |")
    print(f"| standard (1 pass per batch) | {std_floor:.3f} | {med['std_epoch']:.3f} | {med['std_fit']:.3f} | "
          f"{res['std_epoch_over_floor']:.3f} | {res['std_fit_over_floor']:.3f} |")
    if a.out:
        from cfx_nb.core import save_json
        save_json({"bench": "adv_training", "args": vars(a), "device": str(dev), "machine": mach,
                   "median_s": med, "times_s": t, "floor_s": {"adversarial": adv_floor, "standard": std_floor}, **res}, a.out)
    return res


if __name__ == "__main__":
    main()
