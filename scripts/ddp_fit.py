"""Data-parallel training with cfx_nb.training.fit, one process per device (README, "Several GPUs").

    torchrun --nproc_per_node 2 scripts/ddp_fit.py --device cpu --out /tmp/ddp        # two CPU processes (a test of the path)
    torchrun --nproc_per_node 8 scripts/ddp_fit.py --device cuda --model resnet50 ... # eight GPUs of one node
    accelerate launch --num_processes 8 scripts/ddp_fit.py --device cuda ...          # the same through accelerate

Each rank trains on its own shard of every batch (`--batch` is the global batch), the ranks end with identical
weights, and only rank 0 writes checkpoints and metrics.csv (tests/test_training.py checks this under torchrun).
Note: accelerate 1.15's `accelerate launch --cpu --num_processes 2` starts ONE process (multi-CPU needs an MPI
hostfile); use torchrun for several CPU processes.
"""
import argparse
import os

import torch

from cfx_nb.data import load_dataset
from cfx_nb.models import make_model
from cfx_nb.training import evaluate, fit


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits"); ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--model", default="small_cnn"); ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64); ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="auto"); ap.add_argument("--out", default="outputs/ddp_fit")
    a = ap.parse_args()
    torch.set_num_threads(1)
    train, test = (load_dataset(a.dataset, s, size=a.size) for s in ("train", "test"))
    torch.manual_seed(0)
    model = make_model(a.model, n_classes=train.n_classes, in_channels=train[0][0].shape[0], image_size=a.size)
    fit(model, train, epochs=a.epochs, batch_size=a.batch, optimizer="adam", lr=a.lr, device=a.device,
        ckpt_dir=os.path.join(a.out, "ckpt"), seed=0, val=test)
    if int(os.environ.get("RANK", "0")) == 0:
        print({"world_size": int(os.environ.get("WORLD_SIZE", "1")), **{k: v for k, v in evaluate(model, test).items() if k in ("acc", "wga")}})


if __name__ == "__main__":
    main()
