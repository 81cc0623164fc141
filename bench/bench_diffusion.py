"""Benchmark the diffusion counterfactual sampler (cfx_nb.diffusion.counterfactuals) against its floor, in one run.

The floor is the work any sampler of this kind must do: the UNet forward passes themselves. For each variant we
record every UNet call the sampler makes (batch size and per-sample timesteps, through a forward pre-hook), then
time, on the same model and inputs of the same shapes:

* floor = those UNet calls alone, replayed back to back (for the Gaussian neighbourhood: `steps` × one forward of the
          whole batch; with classifier-free guidance each forward carries the doubled batch);
* ours  = `counterfactuals(bundle, x, target, ...)`, the public function (validation, scheduler steps, Gibbs updates).

With the exact-posterior step variance the sampler makes one extra (finite-difference) UNet evaluation per step, batched
into the same forward pass; the recorded calls include it, and a "ddpm variance" variant shows the old step.

Target: ours ≤ 1.15 × floor. Medians of --repeats runs, interleaved (floor, ours, ours, floor, …) against drift; in
brackets the ratio of the fastest runs (the least disturbed on a shared machine). The UNet is the default preset's
(8×8 digits, channels 16, 32) with random weights: timing does not depend on training.

Training throughput (`train_ddpm`): optimiser steps per second of a real `train_ddpm` run (its second epoch, from the
per-epoch metrics), with and without autocast (`mixed_precision` "no" and "bf16"; "fp16" too on CUDA), against the floor
of the same UNet's forward + backward + AdamW step on batches of the same size, in the same precision.

Usage:  .venv/bin/python bench/bench_diffusion.py [--device auto|cpu|cuda] [--batch 256] [--steps 25] [--repeats 5]
                                                  [--image-size 8] [--channels 16,32] [--in-channels 1]
                                                  [--threads 0] [--out bench/results_diffusion.json]
                                                  [--train-steps 20] [--train-batch 128] [--skip-train] [--skip-sampler]
On a GPU, e.g. the paper preset's UNet, kept short:
        .venv/bin/python bench/bench_diffusion.py --device cuda --image-size 32 --in-channels 3 --channels 128,256,256 \
            --batch 256 --steps 25 --repeats 3 --train-steps 30 --train-batch 128
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys

import time

import torch
from _common import alternating, machine, sync




def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=256, help="(image, target) pairs per CE batch")
    ap.add_argument("--steps", type=int, default=25, help="denoising steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--channels", default="16,32", help="UNet block_out_channels (default: the default preset's)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--train-steps", type=int, default=20, help="optimiser steps per train_ddpm epoch timed")
    ap.add_argument("--train-batch", type=int, default=128, help="train_ddpm batch size")
    ap.add_argument("--skip-train", action="store_true", help="do not time train_ddpm")
    ap.add_argument("--skip-sampler", action="store_true", help="do not time the CE sampler")
    ap.add_argument("--layers", type=int, default=1, help="UNet layers per block")
    a = ap.parse_args(argv)

    from cfx_nb.core import get_device
    from cfx_nb.diffusion import DiffusionBundle, counterfactuals, make_scheduler, make_unet
    if a.threads: torch.set_num_threads(a.threads)
    dev = get_device(a.device)
    torch.manual_seed(0)
    chans = tuple(int(c) for c in a.channels.split(","))
    unet = make_unet(a.image_size, a.in_channels, 10, block_out_channels=chans, layers_per_block=a.layers)
    bundle = DiffusionBundle(unet.to(dev).eval().requires_grad_(False), make_scheduler(1000), 10, null_class=10)
    x = torch.rand(a.batch, a.in_channels, a.image_size, a.image_size, device=dev)
    target = torch.randint(0, 10, (a.batch,), device=dev)
    d = a.in_channels * a.image_size ** 2
    variants = {
        "gaussian σ=0.3": dict(neighbourhood="gaussian", sigma_ce=0.3),
        "gaussian σ=0.3, CFG w=2": dict(neighbourhood="gaussian", sigma_ce=0.3, guidance_scale=2.0),
        "boltzmann (2 Gibbs sweeps)": dict(neighbourhood="boltzmann", temperature=0.3 / d ** 0.5, sweeps=2),
        "gaussian σ=0.3, ddpm variance (old step)": dict(neighbourhood="gaussian", sigma_ce=0.3, variance="ddpm"),
        "guided (paper 1's approximation), from noise": dict(neighbourhood="gaussian", sigma_ce=0.3, method="guided"),
    }
    rows = []
    for name, kw in ({} if a.skip_sampler else variants).items():
        kw = dict(kw, steps=a.steps, seed=0, batch_size=a.batch)
        calls = []
        h = bundle.unet.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append((args[0].shape, args[1].clone())), with_kwargs=True)
        counterfactuals(bundle, x, target, **kw)  # warm-up, and the record of the UNet calls
        h.remove()
        inputs = [(torch.randn(s, device=dev), t, torch.randint(0, 10, (s[0],), device=dev)) for s, t in calls]

        def floor():
            with torch.inference_mode():
                for xi, ti, yi in inputs: bundle.unet(xi, ti, class_labels=yi)
        fns = {"floor": floor, "ours": lambda: counterfactuals(bundle, x, target, **kw)}
        floor()
        times, peak = alternating(fns, dev, a.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        rows.append({"variant": name, "batch": a.batch, "steps": a.steps, "unet_calls": len(calls),
                     "sample_forwards": int(sum(s[0] for s, _ in calls)), "median_s": med, "min_s": best, "times_s": times,
                     "ours_over_floor": med["ours"] / med["floor"], "best_ours_over_floor": best["ours"] / best["floor"],
                     "peak_mem_mib": {k: v / 2**20 for k, v in peak.items()} or None})
        print(f"done {name}: " + ", ".join(f"{k} {v:.3f}s" for k, v in med.items()), file=sys.stderr, flush=True)

    train_rows = [] if a.skip_train else bench_train(a, dev, chans)
    mach = machine(dev)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nDiffusion CE sampler, batch {a.batch} pairs, {a.steps} steps, UNet {a.channels} on "
          f"{a.in_channels}×{a.image_size}×{a.image_size}, device {dev}; medians of {a.repeats} "
          f"(ratio: of medians, and in brackets of the fastest runs)\nmachine: {mach}; process peak RSS {rss:.0f} MiB\n")
    print("| variant | UNet calls | floor (s) | ours (s) | ours / floor | target ≤ 1.15 |"
          + (" peak MiB (floor / ours) |" if dev.type == "cuda" else ""))
    print("|---|---|---|---|---|---|" + ("---|" if dev.type == "cuda" else ""))
    for r in rows:
        m, b = r["median_s"], r["min_s"]
        line = (f"| {r['variant']} | {r['unet_calls']} | {m['floor']:.3f} | {m['ours']:.3f} | "
                f"{r['ours_over_floor']:.3f} ({r['best_ours_over_floor']:.3f}) | "
                f"{'yes' if r['ours_over_floor'] <= 1.15 else 'no'} |")
        if r["peak_mem_mib"]: line += f" {r['peak_mem_mib']['floor']:.0f} / {r['peak_mem_mib']['ours']:.0f} |"
        print(line)
    if train_rows:
        print(f"\ntrain_ddpm throughput, batch {a.train_batch}, {a.train_steps} steps per epoch (second epoch timed)\n")
        print("| precision | floor fwd+bwd+AdamW (steps/s) | train_ddpm (steps/s) | train_ddpm / floor |")
        print("|---|---|---|---|")
        for r in train_rows:
            print(f"| {r['precision']} | {r['floor_steps_per_s']:.2f} | {r['train_steps_per_s']:.2f} | {r['ratio']:.3f} |")
    if a.out:
        from cfx_nb.core import save_json
        save_json({"machine": mach, "device": str(dev), "args": vars(a), "peak_rss_mib": rss, "rows": rows,
                   "train_rows": train_rows}, a.out)


def bench_train(a, dev, chans) -> list[dict]:
    "train_ddpm steps/s (its second epoch) per precision, and the UNet forward+backward+AdamW floor at the same batch."
    import torch.nn.functional as F
    from cfx_nb.diffusion import make_scheduler, make_unet, train_ddpm
    precisions = ["no", "bf16"] + (["fp16"] if dev.type == "cuda" else [])
    n = a.train_steps * a.train_batch
    x = torch.rand(n, a.in_channels, a.image_size, a.image_size)
    y = torch.randint(0, 10, (n,))
    out = []
    for mp in precisions:
        torch.manual_seed(0)
        unet = make_unet(a.image_size, a.in_channels, 10, block_out_channels=chans, layers_per_block=a.layers).to(dev)
        b = train_ddpm(x, y, 10, unet=unet, scheduler=make_scheduler(1000), epochs=2, batch_size=a.train_batch,
                       progress=False, device=dev, mixed_precision=mp)
        ours = b.metrics[-1]["steps_per_s"]
        net = make_unet(a.image_size, a.in_channels, 10, block_out_channels=chans, layers_per_block=a.layers).to(dev).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        xb = torch.randn(a.train_batch, a.in_channels, a.image_size, a.image_size, device=dev)
        tb = torch.randint(0, 1000, (a.train_batch,), device=dev)
        yb = torch.randint(0, 10, (a.train_batch,), device=dev)

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16 if mp == "bf16" else torch.float16, enabled=mp != "no"):
                pred = net(xb, tb, class_labels=yb).sample
            loss = F.mse_loss(pred.float(), xb)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        step(); step()
        sync(dev); t0 = time.perf_counter()
        for _ in range(a.train_steps): step()
        sync(dev)
        floor = a.train_steps / (time.perf_counter() - t0)
        out.append({"precision": mp, "floor_steps_per_s": floor, "train_steps_per_s": ours, "ratio": ours / floor})
        print(f"done train_ddpm {mp}: {ours:.2f} steps/s (floor {floor:.2f})", file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    main()
