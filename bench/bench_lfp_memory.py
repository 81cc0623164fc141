"""Peak memory of one learning-from-perturbations pass over a file-backed dataset, at two dataset sizes.

Issue 16's check: a pass (source model fit, PGD perturbation of the whole training set, fresh model fit on the
perturbed set, evaluation) over a WaterBirds-format folder of N images at 224 px (N x 602 KB as float32) must
raise the process's peak RSS by less than 0.5 GiB over what it held before the pass, and by no more when N
doubles. Each size runs in a fresh process (ru_maxrss is a lifetime peak); the dataset is written in the real
on-disk format (metadata.csv + JPEGs) by cfx_nb.testing.

    .venv/bin/python bench/bench_lfp_memory.py [--n 2400 4800] [--size 224] [--batch-size 8] [--chunk-size 32] [--mmap-threshold 65536] [--out bench/results/lfp_memory_cpu.json]

The batch is the paper preset's (8): what a pass holds beyond its data is one batch's activations, which at 224 px
grow with the batch (one training step of this CNN at batch 32 alone raises the peak by about 757 MB).

glibc's malloc raises its mmap threshold dynamically (up to 32 MB) after large frees, after which freed batch and
chunk buffers stay in the heap instead of going back to the system: the peak then drifts up stage by stage.
A fixed threshold (MALLOC_MMAP_THRESHOLD_, set here for the measured process; --mmap-threshold 0 leaves it)
returns them. Measured at 400 images, streamed: +595 MB (chunk 128, dynamic), +452 (chunk 32, dynamic),
+420 (chunk 128, fixed 64 KiB), +234 (chunk 32, fixed 64 KiB).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r'''
import json, os, resource, sys, time
import torch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
from cfx_nb.data import load_waterbirds
from cfx_nb.lfp import run_lfp
from cfx_nb.models import make_model
root, size, cache, bs, chunk = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
train = load_waterbirds(root, "train", size=size)   # file-backed: images are decoded when read
test = load_waterbirds(root, "test", size=size)
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
before, t0 = rss_mb(), time.time()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
r = run_lfp(train, {"test": test}, lambda: make_model("small_cnn", n_classes=2, in_channels=3, image_size=size, width=0.25),
            {"pgd_linf": {"eps": 0.03, "steps": 1}}, {"epochs": 1, "batch_size": bs, "optimizer": "adam", "lr": 1e-3},
            {"bench": "memory", "n": len(train)}, cache, seed=0, target_mode="uniform", chunk_size=chunk,
            perturb_batch_size=bs, eval_batch_size=2 * bs, device="cpu", progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"n_train": len(train), "batch_size": bs, "chunk_size": chunk, "n_test": len(test), "rss_before_mb": before, "peak_before_mb": peak_before,
                  "peak_mb": peak, "increase_mb": peak - before, "seconds": time.time() - t0,
                  "perturbed_streamed": type(r.perturbed["pgd_linf"]).__name__,
                  "float32_train_gb": len(train) * 3 * size * size * 4 / 2**30,
                  "test_acc": r.rows[1]["test_acc"]}))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[2400, 4800], help="training images (4 groups, equal sizes)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8, help="training and perturbation batch (the paper preset's 8); evaluation uses twice this")
    ap.add_argument("--chunk-size", type=int, default=32, help="images per perturbed chunk on disk (32 x 602 KB = 19 MB at 224 px)")
    ap.add_argument("--mmap-threshold", type=int, default=65536,
                    help="glibc MALLOC_MMAP_THRESHOLD_ of the measured process, in bytes (0: leave glibc's dynamic threshold)")
    ap.add_argument("--out", default="bench/results/lfp_memory_cpu.json")
    a = ap.parse_args()
    from cfx_nb.testing import write_waterbirds_fixture
    rows = []
    for n in a.n:
        with tempfile.TemporaryDirectory() as d:
            # the fixture writes n_per_group images per (y, place) group and split; train gets 4 * n_per_group
            root = write_waterbirds_fixture(Path(d) / "wb", n_per_group=n // 4, size=a.size)
            env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": str(a.mmap_threshold)} if a.mmap_threshold else {})}
            out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(a.size), str(Path(d) / "cache"), str(a.batch_size),
                                  str(a.chunk_size)], capture_output=True, text=True, check=True, env=env)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    res = {"machine": os.uname().machine, "cpus": os.cpu_count(), "size": a.size, "batch_size": a.batch_size, "chunk_size": a.chunk_size,
           "malloc_mmap_threshold": a.mmap_threshold or None, "threads": int(os.environ.get("BENCH_THREADS", "2")), "runs": rows,
           "increase_ratio_doubled": rows[-1]["increase_mb"] / rows[0]["increase_mb"] if len(rows) > 1 else None}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
