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
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()  # rewritten from the history: no repeated epoch
    assert [r.split(",")[:2] for r in rows[1:]] == [[str(e), repr(l)] for e, l in zip(hist["epoch"], hist["loss"])]
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


# ---------------------------------------------------------------- hardening: refused before any work, naming the parameter
class _Items(Dataset):
    """A dataset that is not stacked tensors (the per-batch checking path), like a file-backed one."""
    def __init__(self, x, y, g=None): self.t = (x, y) if g is None else (x, y, g)
    def __len__(self): return len(self.t[0])
    def __getitem__(self, i): return tuple(a[i] for a in self.t)


def _weights(m): return {k: v.clone() for k, v in m.state_dict().items()}


def _finite(m): return all(torch.isfinite(v).all() for v in m.state_dict().values())


@pytest.mark.parametrize("wrap", [TensorDataset, _Items])
def test_evaluate_refuses_nan_inputs(blobs, wrap):
    _, test = blobs
    x, y, g = (t.clone() for t in test.tensors)
    x[37, 3] = math.nan
    with pytest.raises(ValueError) as e: evaluate(_mlp(), wrap(x, y, g))
    assert "evaluate: data sample 37 has NaN or inf values" in str(e.value)
    with pytest.raises(ValueError) as e: predict(_mlp(), wrap(x, y, g))
    assert "predict: data sample 37 has NaN or inf values" in str(e.value)


@pytest.mark.parametrize("wrap", [TensorDataset, _Items])
@pytest.mark.parametrize("n_groups, msg", [("abc", "evaluate: n_groups='abc'"), (1, "evaluate: n_groups=1 but data has group ind"),
                                           (0, "evaluate: n_groups=0"), (2.5, "evaluate: n_groups=2.5")])
def test_evaluate_refuses_bad_n_groups(blobs, wrap, n_groups, msg):
    _, test = blobs
    with pytest.raises(ValueError) as e: evaluate(_mlp(), wrap(*test.tensors), n_groups=n_groups)
    assert msg in str(e.value)
    assert len(evaluate(_mlp(), wrap(*test.tensors), n_groups=6)["group_acc"]) == 4  # a valid n_groups still works


def test_model_with_fewer_logits_than_classes(blobs):
    train, test = blobs
    x, y, g = train.tensors
    y3 = y.clone(); y3[5] = 2  # three classes, a two-logit model
    kw = dict(epochs=1, lr=0.1, device="cpu", progress=False)
    calls = []
    with pytest.raises(ValueError) as e: fit(_mlp(), TensorDataset(x, y3), on_batch=lambda *a: calls.append(a), **kw)
    assert "fit: model returns 2 logits but train has labels up to 2" in str(e.value) and not calls
    with pytest.raises(ValueError) as e: fit(_mlp(), _Items(x, y3), **kw)  # generic data: found in the batch, before its step
    assert "fit: train sample 5 has label 2 but the model returns 2 logits" in str(e.value)
    with pytest.raises(ValueError) as e: evaluate(_mlp(), TensorDataset(x, y3))
    assert "evaluate: model returns 2 logits but data has labels up to 2" in str(e.value)
    with pytest.raises(ValueError) as e: evaluate(_mlp(), _Items(x, y3))
    assert "evaluate: data sample 5 has label 2 but the model returns 2 logits" in str(e.value)
    ds = TensorDataset(x, y); ds.n_classes = 5  # a dataset that declares more classes than the model has
    with pytest.raises(ValueError) as e: fit(_mlp(), ds, **kw)
    assert "fit: model returns 2 logits but train has n_classes=5" in str(e.value)


def test_fit_refuses_ckpt_dir_that_is_a_file(blobs, tmp_path):
    train, _ = blobs
    f = tmp_path / "ckpt"
    f.write_text("not a directory")
    m, calls = _mlp(), []
    before = _weights(m)
    with pytest.raises(ValueError) as e:
        fit(m, train, epochs=2, lr=0.1, device="cpu", progress=False, ckpt_dir=f, on_batch=lambda *a: calls.append(a))
    assert f"fit: ckpt_dir={str(f)!r} is an existing file" in str(e.value)
    assert not calls and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_fit_refuses_nan_sample_in_memory_before_training(blobs):
    train, _ = blobs
    x, y, g = (t.clone() for t in train.tensors)
    x[123, 0] = math.inf
    m, calls = _mlp(), []
    before = _weights(m)
    with pytest.raises(ValueError) as e:
        fit(m, Subset(TensorDataset(x, y, g), list(range(100, 200))), epochs=1, lr=0.1, device="cpu", progress=False,
            on_batch=lambda *a: calls.append(a))
    assert "fit: train sample 23 has NaN or inf values" in str(e.value)  # the index within the dataset given
    assert not calls and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_fit_refuses_nan_sample_of_file_backed_data_before_its_step(blobs):
    train, _ = blobs
    x, y, g = (t.clone() for t in train.tensors)
    x[300, 7] = math.nan
    m, calls = _mlp(), []
    with pytest.raises(ValueError) as e:
        fit(m, _Items(x, y, g), epochs=1, batch_size=64, lr=0.1, device="cpu", progress=False, seed=3,
            on_batch=lambda *a: calls.append(a))
    assert "fit: train sample 300 has NaN or inf values" in str(e.value)
    assert _finite(m) and len(calls) < 8  # stopped at the batch holding it, before that batch's step


def test_non_finite_loss_restores_the_weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 10, generator=g), torch.randint(0, 2, (64,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    before = _weights(model)
    with pytest.raises(FloatingPointError, match="the model's weights are put back"):
        fit(model, TensorDataset(x, y), epochs=1, batch_size=16, lr=1e20, device="cpu", progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- metrics, logging, progress, tracker
def test_metrics_csv_beside_checkpoints_and_logging(blobs, tmp_path, caplog):
    import csv
    train, test = blobs
    with caplog.at_level("INFO", logger="cfx_nb.training"):
        h = fit(_mlp(), train, epochs=3, batch_size=64, lr=0.1, val=test, device="cpu", progress=False, ckpt_dir=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert list(rows[0]) == ["epoch", "loss", "acc", "val_acc", "val_wga", "lr", "time_s"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["loss"]) for r in rows] == h["loss"] and [float(r["val_wga"]) for r in rows] == h["val_wga"]
    msgs = [r.getMessage() for r in caplog.records if r.name == "cfx_nb.training"]
    assert sum(m.startswith("fit: epoch ") for m in msgs) == 3 and "fit: epoch 3/3" in msgs[-1]


def test_one_progress_bar_over_epochs_and_none_by_default_off_a_terminal(blobs, capsys):
    train, _ = blobs
    fit(_mlp(), train, epochs=2, batch_size=64, lr=0.1, device="cpu")  # progress=None; pytest's stderr is no terminal
    assert capsys.readouterr().err == ""
    fit(_mlp(), train, epochs=2, batch_size=64, lr=0.1, device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "fit: 100%" in err and "2/2" in err and "epoch 1" not in err  # no per-epoch bar


def test_tensorboard_through_accelerate_tracker(blobs, tmp_path, monkeypatch):
    import importlib.util
    import accelerate.tracking
    train, _ = blobs
    have = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    if not have:  # not installed: skipped cleanly by default, refused clearly when asked for
        fit(_mlp(), train, epochs=1, batch_size=64, lr=0.1, device="cpu", progress=False, ckpt_dir=tmp_path / "a")
        assert not (tmp_path / "a" / "tensorboard").exists()
        with pytest.raises(ValueError, match="fit: tensorboard=True but neither tensorboard nor tensorboardX is installed"):
            fit(_mlp(), train, epochs=1, lr=0.1, device="cpu", ckpt_dir=tmp_path / "b", tensorboard=True)
    logged = []

    class Fake:  # stands in for accelerate's TensorBoardTracker, recording what fit logs
        def __init__(self, run_name, logging_dir): logged.append(("init", run_name, str(logging_dir)))
        def start(self): logged.append("start")
        def log(self, values, step): logged.append((step, dict(values)))
        def finish(self): logged.append("finish")
    monkeypatch.setattr(accelerate.tracking, "TensorBoardTracker", Fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "tensorboard" else real(n, *a))
    h = fit(_mlp(), train, epochs=2, batch_size=64, lr=0.1, device="cpu", progress=False, ckpt_dir=tmp_path / "c")
    assert logged[0] == ("init", "fit", str(tmp_path / "c" / "tensorboard")) and logged[-1] == "finish"
    assert [s for s, _ in logged[2:4]] == [1, 2] and logged[3][1]["fit/loss"] == h["loss"][1]


# ---------------------------------------------------------------- GPU-path options, checked on the CPU
def test_compile_and_channels_last_options(blobs):
    ns = _fixture()
    kw = {**ns["KW"], "epochs": 1, "adversarial": None}
    (m1, data), (m2, _), (m3, _) = ns["make"](), ns["make"](), ns["make"]()
    h1 = fit(m1, data, **kw)
    h2 = fit(m2, data, compile="eager", **kw)  # dynamo tracing, eager kernels: the same numbers
    assert _same_weights(m1, m2) and h1["loss"] == h2["loss"]
    # channels_last: the same maths in another memory layout (random draws like dropout masks or noise_like
    # follow the layout, so compare without them)
    (m4, _), kw = ns["make"](), {**kw, "augment": None}
    m3[3], m4[3] = nn.Identity(), nn.Identity()
    h3, h4 = fit(m3, data, channels_last=True, **kw), fit(m4, data, **kw)
    assert h3["loss"] == pytest.approx(h4["loss"], rel=1e-4)
    assert all(p.is_contiguous() for p in m3.parameters())  # memory format restored
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(m4.state_dict().values(), m3.state_dict().values()))
    with pytest.raises(ValueError, match="fit: channels_last=1 is not one of True, False"):
        fit(m3, data, **{**kw, "channels_last": 1})


# ---------------------------------------------------------------- two processes (torchrun) on the CPU
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
DDP_SETUP = textwrap.dedent('''
    import torch, torch.nn as nn
    from torch.utils.data import TensorDataset
    def make():
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 3, (64,), generator=g)
        x = torch.rand(64, 6, generator=g) * 0.5 + y.view(-1, 1) * 0.2
        x[:, 0] = torch.arange(64) / 64  # feature 0 names the sample, so that each process's shard can be read
        torch.manual_seed(5)
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)), TensorDataset(x, y)
    def KW(seen):
        def tag(x):  # an augmentation that records the samples this process trains on
            seen.append((x[:, 0] * 64).round().long().tolist()); return x
        return dict(epochs=2, lr=0.2, momentum=0.0, seed=3, device="cpu", progress=False, augment=tag)
''')


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed beside this python")
def test_torchrun_two_processes_match_one_process_at_the_combined_batch(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SETUP + textwrap.dedent(f'''
        import os
        import cfx_nb.training as T
        saves, real_save = [], T.save_checkpoint
        T.save_checkpoint = lambda *a, **k: (saves.append(a[1]), real_save(*a, **k))[1]
        seen = []
        model, data = make()
        h = T.fit(model, data, batch_size=8, ckpt_dir={str(tmp_path / "ckpt")!r}, val=data, **KW(seen))
        torch.save({{"seen": seen, "state": model.state_dict(), "history": h, "saves": saves}},
                   {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
    '''))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script)], capture_output=True,
                          text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for e in range(2):  # each process sees its own half of every epoch; together, every sample once
        s0 = [i for b in r0["seen"][4 * e:4 * e + 4] for i in b]
        s1 = [i for b in r1["seen"][4 * e:4 * e + 4] for i in b]
        assert len(s0) == len(s1) == 32 and not set(s0) & set(s1) and sorted(s0 + s1) == list(range(64))
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])  # identical weights on both ranks
    assert r0["saves"] == [1, 2] and r1["saves"] == []  # only rank 0 writes checkpoints
    assert r0["history"]["val_acc"] == r1["history"]["val_acc"] and len(r0["history"]["val_acc"]) == 2
    ns = {}
    exec(DDP_SETUP, ns)
    model, data = ns["make"]()
    h = fit(model, data, batch_size=16, **ns["KW"]([]))  # one process, the combined batch
    assert all(torch.allclose(model.state_dict()[k], r0["state"][k], atol=1e-5) for k in r0["state"])
    assert h["loss"] == pytest.approx(r0["history"]["loss"], rel=1e-5)


def test_make_accelerator_resets_an_incompatible_single_process_state():
    from cfx_nb.core import make_accelerator
    a = make_accelerator("cpu", "bf16")
    assert a.device.type == "cpu" and a.mixed_precision == "bf16"
    b = make_accelerator(torch.device("cpu"), "no")  # another precision: the shared state is reset, not an error
    assert b.mixed_precision == "no" and b.num_processes == 1
    with pytest.raises(ValueError, match="make_accelerator: mixed_precision='fp8' is not one of"):
        make_accelerator("cpu", "fp8")
