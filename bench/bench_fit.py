"""Benchmark the training throughput of cfx_nb.training.fit against the plain forward+backward+step floor, in one run.

The floor is the bare loop `loss = CE(model(x), y); zero_grad; backward; step` on one batch already on the
device, with the same precision / memory format / compilation as the variant measured; `fit(..., epochs=1)`
trains on `--steps` batches of the same shape held in memory (an in-memory TensorDataset: batches gathered
and moved to the device by fit, as in use), or, for the `+loader` variants, on a dataset read item by item
through a DataLoader (workers and pinned memory on CUDA), as a file-backed dataset is. Both are reported in
images/s; `epoch/floor` is the time of fit's epoch loop (`history['time_s']`) over steps × the floor's step
time, `call/floor` the whole `fit` call (accelerate set-up included). Medians of --repeats rounds, the order
of floor and fit alternated against drift.

Variants (`--variants`, comma-separated; each a `+`-joined set of): fp32 | bf16 | fp16, channels_last,
compile, loader. Default on CPU: fp32, fp32+loader; on CUDA: fp32, bf16, bf16+channels_last,
bf16+channels_last+loader, bf16+channels_last+compile. A variant is started only while the run is within
--budget-s seconds (a compile variant only within half of it: compiling ResNet-50's forward and backward takes
a minute or more, once for the floor and once for fit); skipped or failed variants are recorded, not fatal.

Usage:  .venv/bin/python bench/bench_fit.py [--device cpu|cuda|auto] [--model small_cnn|resnet50|wrn-16-2]
            [--batch 128] [--steps 20] [--repeats 3] [--image-size N] [--variants ...] [--threads 0]
            [--out bench/results/fit_<device>_<model>.json]
CPU check (tiny):  .venv/bin/python bench/bench_fit.py --device cpu --model small_cnn --batch 32 --steps 4 --repeats 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from _common import machine, sync

SHAPES = {"small_cnn": (1, 28), "resnet50": (3, 224), "wrn-16-2": (3, 32)}


class Items(Dataset):
    "Stacked tensors served one item at a time (fit takes the DataLoader path, as for a file-backed dataset)."
    def __init__(self, x, y): self.items = (x, y)
    def __len__(self): return len(self.items[0])
    def __getitem__(self, i): return self.items[0][i], self.items[1][i]


def parse_variant(v: str) -> dict:
    parts = set(v.split("+"))
    prec = [p for p in parts if p in ("fp32", "bf16", "fp16")]
    unknown = parts - {"fp32", "bf16", "fp16", "channels_last", "compile", "loader"}
    if unknown or len(prec) != 1: raise SystemExit(f"bench_fit: variant {v!r}: one of fp32|bf16|fp16 plus channels_last/compile/loader")
    return {"mixed_precision": {"fp32": "no"}.get(prec[0], prec[0]), "channels_last": "channels_last" in parts,
            "compile": "compile" in parts, "loader": "loader" in parts}


def build(name: str, image_size: int | None):
    from cfx_nb.models import make_model
    c, s = SHAPES.get(name, (3, 32))
    s = image_size or s
    kw = {"image_size": s} if name == "small_cnn" else {"weights": None} if name == "resnet50" else {}
    return make_model(name, n_classes=10, in_channels=c, **kw), (c, s, s)


def floor_step(model, opt, x, y, v, dev):
    "One plain training step (the floor) with the variant's precision, memory format and compilation."
    if v["compile"] and id(model) not in floor_step.compiled: floor_step.compiled[id(model)] = torch.compile(model)
    if id(opt) not in floor_step.scalers:
        floor_step.scalers[id(opt)] = torch.amp.GradScaler(dev.type, enabled=v["mixed_precision"] == "fp16")
    fwd = floor_step.compiled[id(model)] if v["compile"] else model
    amp = v["mixed_precision"] != "no"
    dtype = torch.bfloat16 if v["mixed_precision"] == "bf16" else torch.float16
    scaler = floor_step.scalers[id(opt)]
    with torch.autocast(dev.type, dtype=dtype, enabled=amp):
        loss = F.cross_entropy(fwd(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt); scaler.update()
floor_step.compiled, floor_step.scalers = {}, {}


def run_variant(name, a, dev, v, x, y):
    from cfx_nb.training import fit
    torch.manual_seed(0)
    model, _ = build(a.model, a.image_size)
    model.to(dev)
    n = len(x)
    data = Items(x, y) if v["loader"] else TensorDataset(x, y)
    xb, yb = x[:a.batch].to(dev), y[:a.batch].to(dev)
    if v["channels_last"]: xb = xb.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def floor():
        model.train()
        if v["channels_last"]: model.to(memory_format=torch.channels_last)
        for _ in range(a.steps): floor_step(model, opt, xb, yb, v, dev)
        if v["channels_last"]: model.to(memory_format=torch.contiguous_format)

    def epoch():
        t0 = time.perf_counter()
        h = fit(model, data, epochs=1, batch_size=a.batch, lr=1e-3, device=str(dev), progress=False, seed=0,
                mixed_precision=v["mixed_precision"], channels_last=v["channels_last"], compile=v["compile"])
        sync(dev)
        return h["time_s"][0], time.perf_counter() - t0

    floor(); epoch(); sync(dev)  # warm-up (and compilation)
    t = {"floor": [], "epoch": [], "call": []}
    for r in range(a.repeats):
        for k in (["floor", "fit"] if r % 2 == 0 else ["fit", "floor"]):
            if k == "floor":
                sync(dev); t0 = time.perf_counter(); floor(); sync(dev); t["floor"].append(time.perf_counter() - t0)
            else:
                e, c = epoch(); t["epoch"].append(e); t["call"].append(c)
        print(f"  {name} repeat {r}: " + ", ".join(f"{k} {v_[-1]:.3f}s" for k, v_ in t.items()), file=sys.stderr, flush=True)
    med = {k: statistics.median(v_) for k, v_ in t.items()}
    return {"variant": v, "median_s": med, "times_s": t, "images": n,
            "floor_img_s": n / med["floor"], "fit_img_s": n / med["epoch"], "fit_call_img_s": n / med["call"],
            "epoch_over_floor": med["epoch"] / med["floor"], "call_over_floor": med["call"] / med["floor"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="small_cnn", help="small_cnn, resnet50 or wrn-16-2 (any make_model name)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="batches per epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=None, help="default: 28 (small_cnn), 224 (resnet50), 32 (wrn)")
    ap.add_argument("--variants", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=170, help="start no variant after this many seconds")
    ap.add_argument("--out", default=None, help="default: bench/results/fit_<device>_<model>.json")
    a = ap.parse_args(argv)

    from cfx_nb.core import get_device, save_json
    if a.threads: torch.set_num_threads(a.threads)
    dev = get_device(a.device)
    if dev.type == "cuda": torch.backends.cudnn.benchmark = True
    names = (a.variants or ("fp32,bf16,bf16+channels_last,bf16+channels_last+loader,bf16+channels_last+compile"
                            if dev.type == "cuda" else "fp32,fp32+loader")).split(",")
    variants = {nm: parse_variant(nm) for nm in names}
    t_start = time.perf_counter()
    torch.manual_seed(0)
    shape = build(a.model, a.image_size)[1]
    x, y = torch.rand(a.batch * a.steps, *shape), torch.randint(0, 10, (a.batch * a.steps,))
    res, skipped = {}, {}
    for nm, v in variants.items():
        elapsed = time.perf_counter() - t_start
        if elapsed > (a.budget_s / 2 if v["compile"] else a.budget_s):
            skipped[nm] = f"not started: {elapsed:.0f} s elapsed of the {a.budget_s:.0f} s budget"; continue
        try: res[nm] = run_variant(nm, a, dev, v, x, y)
        except Exception as e:  # one failing variant (e.g. no compiler for torch.compile) must not lose the others
            skipped[nm] = f"failed: {type(e).__name__}: {str(e)[:500]}"
        if dev.type == "cuda": torch.cuda.empty_cache()

    mach = machine(dev)
    print(f"\nfit vs. the forward+backward+step floor: {a.model}, batch {a.batch}, {a.steps} batches per epoch, "
          f"device {dev}; medians of {a.repeats}\nmachine: {mach}\n")
    print("| variant | floor (img/s) | fit epoch (img/s) | whole fit() (img/s) | epoch / floor | fit() / floor |")
    print("|---|---|---|---|---|---|")
    for nm, r in res.items():
        print(f"| {nm} | {r['floor_img_s']:.1f} | {r['fit_img_s']:.1f} | {r['fit_call_img_s']:.1f} | "
              f"{r['epoch_over_floor']:.3f} | {r['call_over_floor']:.3f} |")
    for nm, why in skipped.items(): print(f"| {nm} | {why} | | | | |")
    wall = time.perf_counter() - t_start
    print(f"\nwall time {wall:.0f} s")
    out = Path(a.out or Path(__file__).parent / "results" / f"fit_{dev.type}_{a.model}.json")
    save_json({"bench": "fit", "args": vars(a), "device": str(dev), "machine": mach, "results": res,
               "skipped": skipped, "wall_s": wall}, out)
    print(f"\nwritten: {out}")
    return res


if __name__ == "__main__":
    main()
