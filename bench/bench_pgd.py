"""Benchmark cfx_nb.attacks.pgd against torchattacks and against the floor, in one run.

For each model and norm, on the same model and the same batch (medians of --repeats runs, interleaved):

* floor  = `steps` × (forward + backward w.r.t. the input): `loss = CE(model(x), y); torch.autograd.grad(loss, x)`,
           the work any PGD implementation must do;
* ours   = `cfx_nb.attacks.pgd(model, x, y, norm=..., eps, alpha, steps)` (the public function, validation included);
* torchattacks = `torchattacks.PGD` / `PGDL2` with the same eps, alpha, steps and `random_start=False`.

Targets: ours ≤ 1.05 × floor, and faster than torchattacks. Timings on a shared machine are noisy: the table gives
ratios of medians and, in brackets, of the fastest of the runs (the least disturbed). Models: the project's SmallCNN (MNIST-sized
input) and a WideResNet (default WRN-16-2 on 32×32×3). On a small CPU use fewer steps / a smaller batch.

Usage:  .venv/bin/python bench/bench_pgd.py [--device auto|cpu|cuda] [--steps 100] [--batch 256] [--repeats 5]
                                            [--models small_cnn,wrn-16-2] [--norms linf,l2] [--threads 0]
                                            [--mixed-precision no|bf16] [--out bench/results_pgd.json]
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _common import alternating, machine
import torch.nn.functional as F




def build(name: str, dev, image_size: int):
    from cfx_nb.models import make_model
    if name.startswith("wrn"): m, shape = make_model(name, n_classes=10, in_channels=3), (3, 32, 32)
    else: m, shape = make_model(name, n_classes=10, in_channels=1, image_size=image_size), (1, image_size, image_size)
    return m.to(dev).eval(), shape


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--models", default="small_cnn,wrn-16-2")
    ap.add_argument("--norms", default="linf,l2")
    ap.add_argument("--image-size", type=int, default=28, help="input size of the small CNN (28: MNIST)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16"], help="run all three under bf16 autocast")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    a = ap.parse_args(argv)

    import torchattacks
    from cfx_nb.attacks import pgd
    from cfx_nb.core import get_device
    if a.threads: torch.set_num_threads(a.threads)
    dev = get_device(a.device)
    if dev.type == "cuda": torch.backends.cudnn.benchmark = True  # same setting for all three
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.mixed_precision == "bf16")
    cfg = {"linf": (8 / 255, 2 / 255, torchattacks.PGD), "l2": (0.5, 0.1, torchattacks.PGDL2)}
    rows = []
    for name in a.models.split(","):
        torch.manual_seed(0)
        model, shape = build(name, dev, a.image_size)
        x = torch.rand(a.batch, *shape, device=dev)
        y = torch.randint(0, 10, (a.batch,), device=dev)

        def floor():
            xg = x.clone().requires_grad_(True)
            for _ in range(a.steps):
                g, = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
            return g
        for norm in a.norms.split(","):
            eps, alpha, Atk = cfg[norm]
            atk = Atk(model, eps=eps, alpha=alpha, steps=a.steps, random_start=False)
            fns = {"floor": floor,
                   "ours": lambda: pgd(model, x, y, norm=norm, eps=eps, alpha=alpha, steps=a.steps),
                   "torchattacks": lambda: atk(x, y)}
            with amp:
                for f in fns.values(): f()  # warm-up (cuDNN autotuning, allocator)
                times, peak = alternating(fns, dev, a.repeats)
            med = {k: statistics.median(v) for k, v in times.items()}
            best = {k: min(v) for k, v in times.items()}
            rows.append({"model": name, "norm": norm, "steps": a.steps, "batch": a.batch, "median_s": med, "min_s": best,
                         "times_s": times,
                         "ours_over_floor": med["ours"] / med["floor"], "torchattacks_over_floor": med["torchattacks"] / med["floor"],
                         "ours_over_torchattacks": med["ours"] / med["torchattacks"],
                         "best_ours_over_floor": best["ours"] / best["floor"],
                         "best_torchattacks_over_floor": best["torchattacks"] / best["floor"],
                         "best_ours_over_torchattacks": best["ours"] / best["torchattacks"],
                         "peak_mem_mib": {k: v / 2**20 for k, v in peak.items()} or None})
            print(f"done {name} {norm}: " + ", ".join(f"{k} {v:.3f}s" for k, v in med.items()), file=sys.stderr, flush=True)

    mach = machine(dev)
    print(f"\nPGD, {a.steps} steps, batch {a.batch}, device {dev}, mixed precision {a.mixed_precision}; medians of {a.repeats} "
          f"(ratios: of medians, and in brackets of the fastest runs)\nmachine: {mach}\n")
    print("| model | norm | floor (s) | ours (s) | torchattacks (s) | ours / floor | torchattacks / floor | ours / torchattacks |"
          + (" peak MiB (floor / ours / ta) |" if dev.type == "cuda" else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if dev.type == "cuda" else ""))
    for r in rows:
        m = r["median_s"]
        line = (f"| {r['model']} | {r['norm']} | {m['floor']:.3f} | {m['ours']:.3f} | {m['torchattacks']:.3f} | "
                f"{r['ours_over_floor']:.3f} ({r['best_ours_over_floor']:.3f}) | "
                f"{r['torchattacks_over_floor']:.3f} ({r['best_torchattacks_over_floor']:.3f}) | "
                f"{r['ours_over_torchattacks']:.3f} ({r['best_ours_over_torchattacks']:.3f}) |")
        if r["peak_mem_mib"]:
            p = r["peak_mem_mib"]; line += f" {p['floor']:.0f} / {p['ours']:.0f} / {p['torchattacks']:.0f} |"
        print(line)
    if a.out:
        from cfx_nb.core import save_json
        save_json({"bench": "pgd", "args": vars(a), "device": str(dev), "machine": mach, "rows": rows}, a.out)
    return rows


if __name__ == "__main__":
    main()
