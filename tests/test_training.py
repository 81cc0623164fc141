"""cfx_nb.training: fit (standard and adversarial), kill-and-resume bit-identical on the CPU, metrics, bad input."""
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset, TensorDataset

from cfx_nb.core import latest_checkpoint
from cfx_nb.training import (EpochShuffle, batches, evaluate, fit, group_accuracy, predict, robust_accuracy,
                             worst_group_accuracy)

# The same fixture code runs in this process and in the subprocess that gets killed.
SETUP = textwrap.dedent('''
    import torch, torch.nn as nn
    from torch.utils.data import TensorDataset
    def make():
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 3, (90,), generator=g)
        x = (torch.rand(90, 1, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.2).clamp(0, 1)
        torch.manual_seed(123)
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
                              nn.Flatten(), nn.Linear(512, 3))
        return model, TensorDataset(x, y, y + 3 * (torch.arange(90) % 2))
    def noise(x):  # an augmentation that draws from the global generator
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    KW = dict(epochs=3, batch_size=16, lr=0.05, schedule="cosine", augment=noise, seed=7, device="cpu", progress=False,
              adversarial={"norm": "l2", "eps": 0.5, "steps": 2, "random_start": True})
''')


def _fixture():
    ns = {}
    exec(SETUP, ns)
    return ns


def _same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_kill_and_resume_is_bit_identical(tmp_path):
    ns = _fixture()
    # 1. the reference: never stopped
    ref_model, data = ns["make"]()
    ref_hist = fit(ref_model, data, ckpt_dir=tmp_path / "ref", **ns["KW"])
    # 2. a run really killed (SIGKILL, no clean-up) in the middle of its second epoch
    script = SETUP + textwrap.dedent(f'''
        import os, signal
        torch.set_num_threads({torch.get_num_threads()})
        from cfx_nb.training import fit
        def kill(epoch, batch):
            if epoch == 1 and batch == 2: os.kill(os.getpid(), signal.SIGKILL)
        model, data = make()
        fit(model, data, ckpt_dir={str(tmp_path / "run")!r}, on_batch=kill, **KW)
        raise SystemExit("not killed")
    ''')
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert latest_checkpoint(tmp_path / "run").name == "epoch_00001.pt"
    # 3. the same call again resumes after epoch 1 and ends bit-identical to the reference
    model, data = ns["make"]()
    model[0].weight.data.add_(1.0)  # whatever the fresh model holds is replaced by the checkpoint
    calls = []
    hist = fit(model, data, ckpt_dir=tmp_path / "run", on_batch=lambda e, b: calls.append(e), **ns["KW"])
    assert set(calls) == {1, 2}  # epoch 0 was not redone
    assert _same_weights(model, ref_model)
    assert hist["loss"] == ref_hist["loss"] and hist["acc"] == ref_hist["acc"] and hist["epoch"] == [1, 2, 3]
    # 4. a finished run is not trained again
    again = fit(model, data, ckpt_dir=tmp_path / "run", on_batch=lambda e, b: calls.append("again"), **ns["KW"])
    assert "again" not in calls and again["loss"] == hist["loss"]


def test_resume_refuses_other_config(tmp_path):
    ns = _fixture()
    model, data = ns["make"]()
    fit(model, data, ckpt_dir=tmp_path, **{**ns["KW"], "epochs": 1, "schedule": None, "adversarial": None})
    other, _ = ns["make"]()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"fit: ckpt_dir=.* holds a run with another configuration \(lr: 0.05 there, 0.1 here\)"):
        fit(other, data, ckpt_dir=tmp_path, **{**ns["KW"], "epochs": 2, "schedule": None, "adversarial": None, "lr": 0.1})
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # refused before loading anything


def test_same_seed_same_result_and_history():
    ns = _fixture()
    (m1, data), (m2, _) = ns["make"](), ns["make"]()
    kw = {**ns["KW"], "epochs": 2}
    h1, h2 = fit(m1, data, val=data, **kw), fit(m2, data, val=data, **kw)
    assert _same_weights(m1, m2) and h1["loss"] == h2["loss"]
    assert set(h1) == {"epoch", "loss", "acc", "lr", "time_s", "val_acc", "val_wga"}
    assert all(len(v) == 2 for v in h1.values())
    assert h1["lr"][1] < h1["lr"][0]  # cosine schedule
    assert 0 <= h1["val_wga"][-1] <= h1["val_acc"][-1] <= 1


# ---------------------------------------------------------------- standard vs adversarial training
@pytest.fixture(scope="module")
def blobs():
    """Tsipras et al.'s robust vs. non-robust features in [0,1]^16: x_0 = 0.5 ± 0.45 agrees with the label
    90% of the time (robust: flipping it costs 0.45 in L2); x_1..x_15 = 0.5 ± 0.03 + noise are weakly
    correlated each (non-robust: an L2 budget of 0.3 shifts them all). Groups: (label, x_0 agrees)."""
    torch.manual_seed(0)
    n = 768
    y = torch.randint(0, 2, (n,)); s = (2 * y - 1).float()
    agree = torch.rand(n) < 0.9
    x = torch.empty(n, 16)
    x[:, 0] = 0.5 + 0.45 * s * torch.where(agree, 1.0, -1.0)
    x[:, 1:] = 0.5 + 0.03 * s[:, None] + 0.1 * torch.randn(n, 15)
    x, g = x.clamp(0, 1), y * 2 + agree.long()
    return TensorDataset(x[:512], y[:512], g[:512]), TensorDataset(x[512:], y[512:], g[512:])


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))


def test_adversarial_training_is_more_robust(blobs):
    train, test = blobs
    std, rob = _mlp(), _mlp()
    fit(std, train, epochs=10, batch_size=64, lr=0.1, device="cpu", progress=False)
    fit(rob, train, epochs=10, batch_size=64, lr=0.1, device="cpu", progress=False,
        adversarial={"norm": "l2", "eps": 0.3, "steps": 5})
    assert evaluate(std, test)["acc"] > 0.8 and evaluate(rob, test)["acc"] > 0.8
    r_std = robust_accuracy(std, test, norm="l2", eps=0.3, steps=10)
    r_rob = robust_accuracy(rob, test, norm="l2", eps=0.3, steps=10)
    assert r_rob > r_std + 0.2, (r_std, r_rob)
    assert robust_accuracy(std, test, norm="linf", eps=0.0, steps=1, alpha=0.1) == evaluate(std, test)["acc"]


def test_fit_leaves_model_interface_alone(blobs):
    train, _ = blobs
    m = _mlp()
    m.eval(); m[1].train()
    fit(m, train, epochs=1, batch_size=64, lr=0.1, device="cpu", progress=False, mixed_precision="bf16")
    assert "forward" not in m.__dict__ and "_original_forward" not in m.__dict__  # autocast wrapper removed
    assert not m.training and m[1].training
    assert m(torch.rand(3, 16)).dtype == torch.float32
    fit(m, train, epochs=1, batch_size=64, lr=0.1, device="cpu", progress=False, mixed_precision="no")  # state reset works


def test_hooks_and_generic_datasets(blobs):
    train, _ = blobs

    class Pairs(Dataset):  # (x, y) items with Python int labels: the generic path, groups = labels
        def __len__(self): return 100
        def __getitem__(self, i): return train.tensors[0][i], int(train.tensors[1][i])
    seen, aug = [], []
    def augment(x):
        aug.append(len(x)); return x
    h = fit(_mlp(), Pairs(), epochs=2, batch_size=32, lr=0.1, device="cpu", progress=False, augment=augment,
            on_batch=lambda e, b: seen.append((e, b)), optimizer="adam", schedule="step")
    assert seen == [(e, b) for e in range(2) for b in range(4)] and aug == [32, 32, 32, 4] * 2
    assert h["lr"] == pytest.approx([0.1, 0.01])
    ev = evaluate(_mlp(), Subset(train, list(range(50))))
    assert ev["n"] == 50 and set(ev["group_n"]) <= {0, 1, 2, 3} and sum(ev["group_n"].values()) == 50


def test_epoch_shuffle_is_a_function_of_seed_and_epoch():
    a, b = EpochShuffle(50, seed=1), EpochShuffle(50, seed=1)
    a.set_epoch(3); b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(4); assert list(a) != list(b)
    assert list(EpochShuffle(50, seed=2)) != list(EpochShuffle(50, seed=1))


def test_batches_fast_path_matches_items():
    x, y, g = torch.rand(20, 3), torch.arange(20) % 4, torch.arange(20) % 3
    ds = Subset(TensorDataset(x, y, g), [5, 1, 7, 3])
    loader = batches(ds, 10)
    assert loader.dataset.t is not None  # one indexing operation per batch
    bx, by, bg = next(iter(loader))
    assert torch.equal(bx, x[[5, 1, 7, 3]]) and torch.equal(by, y[[5, 1, 7, 3]]) and torch.equal(bg, g[[5, 1, 7, 3]])
    bx, by, bg = next(iter(batches(TensorDataset(x, y), 10)))
    assert torch.equal(bg, by)  # no groups: group = y


# ---------------------------------------------------------------- metrics
def test_group_and_worst_group_accuracy():
    pred = torch.tensor([0, 1, 1, 0, 1, 1, 0, 0])
    y = torch.tensor([0, 1, 0, 0, 1, 0, 1, 0])
    group = torch.tensor([0, 0, 1, 1, 3, 3, 3, 3])
    acc = group_accuracy(pred, y, group)
    assert acc[0] == 1.0 and acc[1] == 0.5 and math.isnan(acc[2]) and acc[3] == 0.5
    assert len(group_accuracy(pred, y, group, n_groups=6)) == 6
    assert worst_group_accuracy(pred, y, group) == 0.5  # the empty group 2 is ignored
    assert worst_group_accuracy(y, y, group) == 1.0


def test_evaluate_and_predict(blobs):
    train, test = blobs
    m = _mlp()
    fit(m, train, epochs=3, batch_size=64, lr=0.1, device="cpu", progress=False)
    m.train()
    ev = evaluate(m, test)
    pred = predict(m, test)
    y, g = test.tensors[1], test.tensors[2]
    assert m.training  # mode restored
    assert ev["acc"] == pytest.approx((pred == y).double().mean().item())
    assert ev["wga"] == pytest.approx(worst_group_accuracy(pred, y, g))
    assert ev["group_acc"] == pytest.approx({i: a.item() for i, a in enumerate(group_accuracy(pred, y, g))})
    p2, logits = predict(m, test.tensors[0], batch_size=7, return_logits=True)
    assert torch.equal(p2, pred) and logits.shape == (256, 2)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, msg", [
    ({"epochs": 0}, "fit: epochs=0 must be an integer >= 1"),
    ({"batch_size": 0}, "fit: batch_size=0"),
    ({"lr": -0.1}, "fit: lr=-0.1 must be a finite number > 0"),
    ({"lr": math.nan}, "fit: lr=nan"),
    ({"momentum": 1.0}, "fit: momentum=1.0"),
    ({"weight_decay": -1.0}, "fit: weight_decay=-1.0"),
    ({"optimizer": "rmsprop"}, "fit: optimizer='rmsprop' is not one of 'sgd', 'adam', 'adamw'"),
    ({"schedule": "linear"}, "fit: schedule='linear' is not one of None, 'cosine', 'step'"),
    ({"mixed_precision": "fp8"}, "fit: mixed_precision='fp8' is not one of"),
    ({"mixed_precision": "fp16"}, "fit: mixed_precision='fp16' needs a CUDA device"),
    ({"device": "tpu"}, "get_device: device='tpu'"),
    ({"augment": 3}, "fit: augment=3 must be None or a callable"),
    ({"seed": -1}, "fit: seed=-1"),
    ({"adversarial": {"norm": "l3", "eps": 1, "steps": 2}}, "fit: adversarial: norm='l3' is not one of 'l2', 'linf'"),
    ({"adversarial": {"norm": "l2", "eps": -1, "steps": 2}}, "fit: adversarial: eps=-1"),
    ({"adversarial": {"norm": "l2", "eps": 1, "steps": 0}}, "fit: adversarial: steps=0"),
    ({"adversarial": {"norm": "l2", "eps": 1, "steps": 2, "alpha": 0}}, "fit: adversarial: alpha=0"),
    ({"adversarial": {"norm": "l2", "eps": 1}}, "fit: adversarial is missing ['steps']"),
    ({"adversarial": {"norm": "l2", "eps": 1, "steps": 2, "sigma": 1}}, "fit: adversarial has unknown keys ['sigma']"),
    ({"adversarial": "pgd"}, "fit: adversarial='pgd' must be None or a dict"),
])
def test_fit_bad_params(blobs, change, msg):
    train, _ = blobs
    with pytest.raises(ValueError) as e:
        fit(_mlp(), train, **{**dict(epochs=1, lr=0.1, device="cpu", progress=False), **change})
    assert msg in str(e.value)


def test_fit_bad_data(blobs):
    train, _ = blobs
    x, y, g = train.tensors
    kw = dict(epochs=1, lr=0.1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="fit: train is empty"): fit(_mlp(), Subset(train, []), **kw)
    with pytest.raises(ValueError, match="fit: train must be a map-style Dataset"): fit(_mlp(), 5, **kw)
    with pytest.raises(ValueError, match=r"fit: train labels has labels in \[-1"): fit(_mlp(), TensorDataset(x, y - 1), **kw)
    with pytest.raises(ValueError, match="fit: train inputs has values in"):
        fit(_mlp(), TensorDataset(x * 3, y), adversarial={"norm": "l2", "eps": 1, "steps": 1}, **kw)
    with pytest.raises(ValueError, match=r"fit: dataset items must be \(x, y\) or \(x, y, group\)"): fit(_mlp(), TensorDataset(x), **kw)
    with pytest.raises(ValueError, match="fit: model must be a torch.nn.Module"): fit("net", train, **kw)


@pytest.mark.parametrize("call, msg", [
    (lambda: group_accuracy(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([0, 0])), "group_accuracy: y has 1 labels but the batch has 2"),
    (lambda: group_accuracy(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, -1])), "group_accuracy: group has negative values"),
    (lambda: group_accuracy(torch.tensor([0.0]), torch.tensor([0]), torch.tensor([0])), "group_accuracy: pred must be a 1-d integer tensor"),
    (lambda: group_accuracy(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 3]), n_groups=2), "group_accuracy: n_groups=2"),
    (lambda: worst_group_accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)), "worst_group_accuracy: pred is empty"),
    (lambda: worst_group_accuracy(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0])), "worst_group_accuracy: group has 1 labels"),
    (lambda: evaluate(_mlp(), torch.rand(3, 16)), "evaluate: data must be a dataset with labels"),
    (lambda: predict(_mlp(), torch.rand(3, 16), batch_size=0), "predict: batch_size=0"),
    (lambda: robust_accuracy(_mlp(), TensorDataset(torch.rand(4, 16), torch.zeros(4, dtype=torch.long)), norm="l5", eps=1), "robust_accuracy: norm='l5'"),
    (lambda: robust_accuracy(_mlp(), TensorDataset(torch.rand(4, 16) * 2, torch.zeros(4, dtype=torch.long)), norm="l2", eps=1), "robust_accuracy: data inputs has values in"),
])
def test_metrics_bad_input(call, msg):
    with pytest.raises(ValueError) as e: call()
    assert msg in str(e.value)


def test_diverged_training_stops_with_a_clear_error_and_no_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 10, generator=g), torch.randint(0, 2, (64,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    with pytest.raises(FloatingPointError, match=r"fit: the training loss became (nan|inf) in epoch \d+ \(lr=1e\+20"):
        fit(model, TensorDataset(x, y), epochs=5, batch_size=16, lr=1e20, device="cpu", progress=False,
            ckpt_dir=tmp_path / "ckpt")
    done = latest_checkpoint(tmp_path / "ckpt")  # the epochs before the divergence may be saved, never the diverged one
    assert done is None or all(torch.isfinite(p).all() for p in torch.load(done, weights_only=True)["model"].values())
