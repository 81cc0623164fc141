"""Bad input to every core helper gives a clear ValueError; checkpoints and atomic files behave."""
import math
import os

import numpy as np
import pytest
import torch

from cfx_nb import core


@pytest.mark.parametrize("call, msg", [
    (lambda: core.check_choice("l3", ["l2", "linf"], "norm", "pgd"), "pgd: norm='l3' is not one of 'l2', 'linf'"),
    (lambda: core.check_number(-0.1, "eps", "pgd", ge=0), "pgd: eps=-0.1 must be a finite number >= 0"),
    (lambda: core.check_number(math.inf, "lr", "fit", gt=0), "fit: lr=inf"),
    (lambda: core.check_number(0, "steps", "pgd", ge=1, integer=True), "pgd: steps=0 must be an integer >= 1"),
    (lambda: core.check_number(None, "alpha", "pgd", gt=0), "pgd: alpha=None"),
    (lambda: core.check_tensor([1, 2], "x", "pgd"), "pgd: x must be a torch.Tensor"),
    (lambda: core.check_tensor(torch.rand(2, 3), "x", "pgd", ndim=4), "pgd: x has 2 dimensions"),
    (lambda: core.check_tensor(torch.tensor([0.5, float("nan")]), "x", "pgd"), "pgd: x contains NaN or inf"),
    (lambda: core.check_tensor(torch.tensor([0.0, 2.0]), "x", "pgd", lo=0, hi=1), "pgd: x has values in [0, 2]"),
    (lambda: core.check_tensor(torch.rand(2, 3, 4, 4), "x", "f", shape=(None, 1, 4, 4)), "expected (*, 1, 4, 4)"),
    (lambda: core.check_labels(torch.tensor([0, 5]), "y", 3, "pgd"), "pgd: y has labels in [0, 5]; allowed: 0 … 2"),
    (lambda: core.check_labels(torch.tensor([0.0, 1.0]), "y", 3, "pgd"), "pgd: y must be a 1-d integer tensor"),
    (lambda: core.check_labels(torch.tensor([0, 1]), "y", 3, "pgd", n=3), "pgd: y has 2 labels but the batch has 3"),
    (lambda: core.get_device("tpu"), "get_device: device='tpu' is not one of"),
    (lambda: core.seed_everything(-3), "seed_everything: seed=-3"),
    (lambda: core.seed_everything(1.5), "seed_everything: seed=1.5 must be an integer"),
    (lambda: core.atomic_write("x", mode="a").__enter__(), "atomic_write: mode='a' is not one of 'wb', 'w'"),
    (lambda: core.save_checkpoint("d", -1, torch.nn.Linear(1, 1)), "save_checkpoint: epoch=-1"),
    (lambda: core.save_checkpoint("d", 1, torch.nn.Linear(1, 1), keep=0), "save_checkpoint: keep=0"),
    (lambda: core.config_hash({"f": print}), "config_hash: value"),
    (lambda: core.resolve_config({"smoke": {"a": 1}}, "big", fn="05_waterbirds"), "05_waterbirds: preset='big' is not one of 'smoke'"),
    (lambda: core.resolve_config({"smoke": {"a": 1}}, "smoke", {"b": 2}, fn="nb"), "nb: unknown parameter b=2; known parameters: a"),
    (lambda: core.make_perturbation("pgd_l3"), "make_perturbation: method='pgd_l3' is not one of"),
])
def test_bad_input_names_parameter(call, msg):
    with pytest.raises(ValueError) as e:
        call()
    assert msg in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match="no CUDA device is available"):
        core.get_device("cuda")


def test_load_checkpoint_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        core.load_checkpoint(tmp_path, torch.nn.Linear(1, 1))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        core.load_checkpoint(tmp_path / "epoch_00001.pt", torch.nn.Linear(1, 1))


def _setup():
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.5), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    return model, opt, sched


def _epochs(model, opt, sched, n, X, Y):
    for _ in range(n):
        for idx in torch.randperm(len(X)).split(8):
            loss = torch.nn.functional.cross_entropy(model(X[idx] + 0.01 * torch.randn_like(X[idx])), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        np.random.rand()  # numpy's generator is part of the state too


def test_checkpoint_resume_is_bit_identical(tmp_path):
    core.seed_everything(0)
    X, Y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    # uninterrupted: 6 epochs, with a checkpoint written after 3 (writing must not perturb anything)
    m, o, s = _setup()
    _epochs(m, o, s, 3, X, Y)
    core.save_checkpoint(tmp_path, 3, m, o, s, extra={"history": [1.0, 2.0]})
    _epochs(m, o, s, 3, X, Y)
    ref = {k: v.clone() for k, v in m.state_dict().items()}
    after = (np.random.rand(), torch.rand(1).item())
    # "killed" after 3: a fresh process would build fresh objects and restore everything
    core.seed_everything(123)  # scramble every generator
    m2, o2, s2 = _setup()
    info = core.load_checkpoint(tmp_path, m2, o2, s2)
    assert info["epoch"] == 3 and info["extra"]["history"] == [1.0, 2.0]
    _epochs(m2, o2, s2, 3, X, Y)
    for k, v in m2.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert after == (np.random.rand(), torch.rand(1).item())
    assert s.get_last_lr() == s2.get_last_lr()


def test_checkpoint_keeps_newest(tmp_path):
    m = torch.nn.Linear(2, 2)
    for e in range(1, 6):
        core.save_checkpoint(tmp_path, e, m, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_00004.pt", "epoch_00005.pt"]
    assert core.latest_checkpoint(tmp_path).name == "epoch_00005.pt"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "results.json"
    with pytest.raises(RuntimeError):
        with core.atomic_write(target, "w") as f:
            f.write("{")
            raise RuntimeError("boom")
    assert not target.exists() and os.listdir(tmp_path) == []


def test_config_hash_and_run_dir(tmp_path):
    a = core.run_dir(tmp_path, "src", {"x": 1, "y": [1, 2]})
    b = core.run_dir(tmp_path, "src", {"y": (1, 2), "x": 1.0})
    c = core.run_dir(tmp_path, "src", {"y": (1, 2), "x": 2})
    assert a == b != c
    assert core.load_json(a / "config.json") == {"x": 1, "y": [1, 2]}
