"""Learning from perturbations: targets, cached chunks, and a run killed mid-way that resumes from its cache."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cfx_nb.data import GroupDataset
from cfx_nb.lfp import choose_targets, perturb_dataset, run_lfp

ROOT = Path(__file__).resolve().parent.parent

# a tiny but real run: digits 8x8, 150 samples, two methods, small chunks so that a kill lands mid-way
SCRIPT = r'''
import json, sys
import torch
torch.set_num_threads(1)
from cfx_nb.data import GroupDataset, load_digits
from cfx_nb.models import make_model
from cfx_nb.lfp import run_lfp
tr = load_digits("train", size=8)
tr = GroupDataset(tr.x[:150], tr.y[:150], tr.group[:150], n_classes=10)
rows = run_lfp(tr, {"train": tr}, lambda: make_model("small_cnn", n_classes=10, in_channels=1, image_size=8, width=0.25),
               {"pgd_l2": {"eps": 1.0, "steps": 40, "random_start": True}, "cfe_l2": {"lam": 0.1, "lr": 0.05, "steps": 40}},
               dict(epochs=2, batch_size=32, optimizer="adam", lr=1e-3), {"dataset": "digits-150"}, sys.argv[1],
               seed=3, target_mode="random", chunk_size=10, perturb_batch_size=10, progress=False).rows
json.dump([{k: v for k, v in r.items() if k != "seconds"} for r in rows], open(sys.argv[2], "w"))
'''


def _run(cache, out, **kw):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(cache), str(out)], cwd=ROOT, **kw)


def test_killed_run_resumes_from_cache_with_identical_results(tmp_path):
    ref_cache, cache = tmp_path / "ref", tmp_path / "killed"
    # reference: never interrupted
    assert _run(ref_cache, tmp_path / "ref.json").wait(timeout=300) == 0
    ref = json.loads((tmp_path / "ref.json").read_text())
    # killed as soon as a few chunks of the first perturbed set exist
    p = _run(cache, tmp_path / "killed.json")
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        chunks = list(cache.glob("perturb-pgd_l2-*/chunks/chunk_*.pt"))
        if len(chunks) >= 3:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed.json").exists()
    pert_dir = next(cache.glob("perturb-pgd_l2-*"))
    assert not (pert_dir / "chunks" / "summary.json").exists()  # killed mid-way: not marked complete
    before = {c.name: c.stat().st_mtime_ns for c in (pert_dir / "chunks").glob("chunk_*.pt")}
    # no half-written file is left under a final name (temporary files start with '.')
    for f in cache.rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            if f.suffix == ".pt": torch.load(f, weights_only=True)
            if f.suffix == ".json": json.loads(f.read_text())
    # the rerun resumes: the chunks written before the kill are reused, not recomputed
    assert _run(cache, tmp_path / "killed.json").wait(timeout=300) == 0
    after = {c.name: c.stat().st_mtime_ns for c in (pert_dir / "chunks").glob("chunk_*.pt")}
    assert all(after[k] == v for k, v in before.items())
    assert len(after) == 15
    assert json.loads((tmp_path / "killed.json").read_text()) == ref


def test_perturb_dataset_flip_rate_and_sizes():
    torch.manual_seed(0)
    x = torch.rand(12, 1, 3, 3)
    y = torch.randint(0, 3, (12,))
    data = GroupDataset(x, y, y, n_classes=3)
    target = choose_targets(y, 3, "random", seed=0)

    class ReadPixel(torch.nn.Module):  # class k wins where pixel k is brightest
        def forward(self, x): return x.flatten(1)[:, :3] * 10

    def set_pixel(model, x, t):
        out = x.clone().flatten(1)
        out[torch.arange(len(x)), t] = 1.0 + 0 * out[torch.arange(len(x)), t]
        out[:, :3] = torch.where(torch.nn.functional.one_hot(t, 3).bool(), out[:, :3], 0.0)
        return out.view_as(x)

    dt, s = perturb_dataset(ReadPixel(), data, set_pixel, target, progress=False)
    assert s["flip_rate"] == 1.0 and torch.equal(dt.y, target) and torch.equal(dt.group, data.group)
    d = (dt.x - x).flatten(1)
    assert s["mean_l2"] == pytest.approx(d.norm(dim=1).mean().item(), rel=1e-5)
    assert s["mean_l0"] == pytest.approx((d.abs() > 1e-6).sum(1).float().mean().item())


@pytest.mark.parametrize("kw, msg", [
    (dict(target_mode="rnd"), "run_lfp: target_mode='rnd' is not one of"),
    (dict(methods={"pgd_l3": {}}), "run_lfp: methods='pgd_l3' is not one of"),
    (dict(methods={"pgd_l2": {"eps": -1.0}}), "methods.pgd_l2.eps=-1.0"),
    (dict(methods={"cfe_l2": {"lr": 0}}), "methods.cfe_l2.lr=0"),
    (dict(methods={"pgd_l2": {"epsilon": 1}}), "methods.pgd_l2 has unknown parameter(s) ['epsilon']"),
    (dict(fit_kwargs={"epochs": 1, "lr": 0.1, "seed": 3}), "fit_kwargs must not contain 'seed'"),
    (dict(fit_kwargs={"epochs": 1, "lr": -1}), "lr=-1"),
    (dict(chunk_size=0), "run_lfp: chunk_size=0 must be an integer >= 1"),
    (dict(perturb_batch_size=0), "run_lfp: perturb_batch_size=0 must be an integer >= 1"),
    (dict(eval_batch_size=0), "run_lfp: eval_batch_size=0 must be an integer >= 1"),
    (dict(make_model=None), "run_lfp: make_model=None must be a callable"),
    (dict(evals=[1]), "run_lfp: evals must be a dict"),
])
def test_run_lfp_bad_input_before_any_work(tmp_path, kw, msg):
    x = torch.rand(8, 1, 4, 4)
    y = torch.randint(0, 2, (8,))
    data = GroupDataset(x, y, y, n_classes=2)
    built = []
    args = dict(train=data, evals={"train": data}, make_model=lambda: built.append(1) or torch.nn.Flatten(),  # noqa
                methods={"pgd_l2": {"eps": 1.0, "steps": 1}}, fit_kwargs={"epochs": 1, "lr": 0.1}, key={}, cache_root=tmp_path)
    args.update(kw)
    with pytest.raises(ValueError, match=None) as e:
        run_lfp(**args)
    assert msg in str(e.value)
    assert not built and not any(tmp_path.iterdir())  # nothing was built or written


def test_a_registered_toy_method_runs_through_the_loop_and_the_report(tmp_path):
    """The extension point: one registration, no list edited anywhere; the toy method is run, labelled in the
    summary table and judged in the claims table of the spurious-correlation report."""
    from cfx_nb.experiment import Param
    from cfx_nb.methods import METHODS, MethodSpec, register_method
    from cfx_nb.spurious import load_data, run_spurious, spurious_experiment
    spec = MethodSpec("toy_shift", "Toy shift", lambda delta: (lambda model, x, t: (x + delta).clamp(0, 1)),
                      {"delta": Param("float", "brightness shift", ge=-1, le=1)}, {"delta": 0.1})
    register_method(spec)
    try:
        pre = {"seeds": [0], "methods": {"toy_shift": {}, "pgd_linf": {"eps": 0.1, "steps": 1}}, "target_mode": "uniform",
               "model": "small_cnn", "width": 0.25, "pretrained": None, "image_size": 16, "scale": 0.02, "epochs": 1,
               "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "grad_clip": None,
               "rerun_check": False, "dry_run": False, "select": "last", "n_show": 2}
        run = spurious_experiment("toy", {"smoke": pre}, "WaterBirds", "x").setup({"preset": "smoke", "out_dir": str(tmp_path), "device": "cpu"})
        rep = run_spurious(run, "waterbirds", load_data(run, "waterbirds"))
        assert [r["method"] for r in rep.rows] == ["original", "pgd_linf", "toy_shift"]
        assert "Toy shift" in list(rep.paper_style().columns)
        assert any("Toy shift" in s for s in rep.claims_table().statement)
    finally:
        del METHODS["toy_shift"]
