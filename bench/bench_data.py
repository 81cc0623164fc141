"""Is data loading a bottleneck? One DataLoader epoch over the embedded WaterBirds-like train set vs one
training epoch of the small CNN on the same data, measured in the same run (medians of several repeats).

    .venv/bin/python bench/bench_data.py [--repeats 5] [--batch-size 64] [--width 0.25] [--size 32] [--device cpu]

Also reports the time to generate the dataset (no cache) and to read it back from the on-disk cache.
Timings on a shared machine are noisy: compare the ratios, not the absolute seconds.
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cfx_nb.core import get_device
from _common import timed
from cfx_nb.data import make_waterbirds_like
from cfx_nb.models import SmallCNN


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=float, default=0.25, help="SmallCNN channel multiplier")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-workers", type=int, default=0)
    args = ap.parse_args()
    dev = get_device(args.device)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as cache:
        t_gen, _ = timed(lambda: make_waterbirds_like("train", size=args.size, cache=False), None, 3)
        make_waterbirds_like("train", size=args.size, cache_dir=cache)
        t_read, _ = timed(lambda: make_waterbirds_like("train", size=args.size, cache_dir=cache), None, 3)
    ds = make_waterbirds_like("train", size=args.size, cache=False)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers)

    def load_epoch():
        n = 0
        for x, y, g in loader: n += len(y)
        assert n == len(ds)

    model = SmallCNN(3, 2, args.size, width=args.width).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all, y_all = ds.x.to(dev), ds.y.to(dev)

    def train_epoch():  # the model's work alone: batches are sliced from tensors already on the device
        model.train()
        for b in torch.randperm(len(y_all), device=dev).split(args.batch_size):
            loss = F.cross_entropy(model(x_all[b]), y_all[b])
            opt.zero_grad(); loss.backward(); opt.step()
        if dev.type == "cuda": torch.cuda.synchronize()

    def loader_train_epoch():  # the same epoch fed by the DataLoader
        model.train()
        for x, y, g in loader:
            loss = F.cross_entropy(model(x.to(dev)), y.to(dev))
            opt.zero_grad(); loss.backward(); opt.step()
        if dev.type == "cuda": torch.cuda.synchronize()

    train_epoch()  # warm-up
    # interleave the measurements so that load changes on a shared machine hit both alike
    t_load, t_train, t_both = [], [], []
    for _ in range(args.repeats):
        t_load.append(timed(load_epoch, dev, 1)[0]); t_train.append(timed(train_epoch, dev, 1)[0]); t_both.append(timed(loader_train_epoch, dev, 1)[0])
    med = statistics.median
    res = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": str(dev), "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None},
        "dataset": repr(ds), "batch_size": args.batch_size, "model": f"SmallCNN(width={args.width}, size={args.size})",
        "generate_s": round(t_gen, 3), "read_cache_s": round(t_read, 3),
        "dataloader_epoch_s": round(med(t_load), 3), "train_epoch_s": round(med(t_train), 3),
        "train_epoch_with_dataloader_s": round(med(t_both), 3),
        "ratio_load_over_train": round(med(t_load) / med(t_train), 4),
        "overhead_of_dataloader": round(med(t_both) / med(t_train) - 1, 4),
        "repeats": {"load": [round(t, 3) for t in t_load], "train": [round(t, 3) for t in t_train], "both": [round(t, 3) for t in t_both]},
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
