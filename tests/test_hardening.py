"""Issue 15/16 hardening: every bad input to the dataset readers, the artifact and checkpoint files and the
model/dataset registries is refused before any work with an error naming the parameter or the file; every
damaged or foreign artifact is moved aside and recomputed (same result as a clean run); two processes racing
on one artifact compute it once."""
import logging
import multiprocessing as mp
import os
import shutil
import time

import pandas as pd
import pytest
import torch

from cfx_nb import core as C
from cfx_nb import data as D
from cfx_nb import models as M
from cfx_nb import testing as T


# --- WaterBirds metadata: every row checked before loading -----------------------------------------------

@pytest.fixture(scope="module")
def wb_root(tmp_path_factory):
    return T.write_waterbirds_fixture(tmp_path_factory.mktemp("wbsrc") / "wb", n_per_group=1, size=16)


def _wb_with(src, tmp_path, line: int, col: str, value: str):
    "A copy of the fixture whose metadata.csv holds `value` in column `col` at file line `line` (header = line 1)."
    d = tmp_path / "wb"
    shutil.copytree(src, d)
    m = pd.read_csv(d / "metadata.csv", dtype=str)
    m.loc[line - 2, col] = value
    m.to_csv(d / "metadata.csv", index=False)
    return d


@pytest.mark.parametrize("line, col, value, msg", [
    (5, "y", "5", "line 5 has y='5'; allowed values of y: 0 (landbird), 1 (waterbird)"),
    (3, "y", "", "line 3 is empty; allowed values of y"),
    (4, "y", "bird", "line 4 has y='bird'"),
    (2, "y", "0.5", "line 2 has y='0.5'"),
    (6, "place", "", "line 6 is empty; allowed values of place: 0 (land), 1 (water)"),
    (7, "place", "-1", "line 7 has place='-1'"),
    (2, "split", "train", "line 2 has split='train'; allowed values of split: 0 (train), 1 (val), 2 (test)"),
    (8, "split", "7", "line 8 has split='7'"),
    (9, "split", "", "line 9 is empty; allowed values of split"),
    (3, "img_filename", "", "line 3 has img_filename=''"),
    (4, "img_filename", "../outside.jpg", "line 4 has img_filename='../outside.jpg'; allowed: a non-empty path relative"),
    (5, "img_filename", "/etc/hostname", "line 5 has img_filename='/etc/hostname'"),
    (6, "img_filename", "001.Landbird/../../x.jpg", "line 6 has img_filename='001.Landbird/../../x.jpg'"),
])
def test_waterbirds_bad_metadata_row(wb_root, tmp_path, line, col, value, msg):
    root = _wb_with(wb_root, tmp_path, line, col, value)
    with pytest.raises(ValueError) as e:
        D.load_waterbirds(root, "test")  # a bad row of any split is refused, whichever split is asked for
    assert str(root / "metadata.csv") in str(e.value) and msg in str(e.value)


def test_waterbirds_empty_and_headeronly_metadata(wb_root, tmp_path):
    root = tmp_path / "wb"
    shutil.copytree(wb_root, root)
    (root / "metadata.csv").write_text("")
    with pytest.raises(ValueError) as e:
        D.load_waterbirds(root, "train")
    assert str(root / "metadata.csv") in str(e.value) and "is empty" in str(e.value)
    (root / "metadata.csv").write_text("img_id,img_filename,y,split,place\n")
    with pytest.raises(ValueError) as e:
        D.load_waterbirds(root, "train")
    assert str(root / "metadata.csv") in str(e.value) and "no rows" in str(e.value)


def test_waterbirds_split_without_rows(wb_root, tmp_path):
    root = tmp_path / "wb"
    shutil.copytree(wb_root, root)
    m = pd.read_csv(root / "metadata.csv")
    m[m.split != 1].to_csv(root / "metadata.csv", index=False)
    with pytest.raises(ValueError) as e:
        D.load_waterbirds(root, "val")
    assert "metadata.csv" in str(e.value) and "no rows of split='val'" in str(e.value)


def test_waterbirds_valid_metadata_unchanged(wb_root):
    "Validation changes nothing for a valid file: labels, groups and paths are those of the CSV."
    ds = D.load_waterbirds(wb_root, "train")
    m = pd.read_csv(wb_root / "metadata.csv")
    m = m[m.split == 0]
    assert ds.y.tolist() == m.y.tolist() and ds.group.tolist() == (2 * m.y + m.place).tolist()
    assert [p.relative_to(wb_root).as_posix() for p in ds.paths] == m.img_filename.tolist()


@pytest.mark.parametrize("how", ["truncate", "zero"])
def test_corrupt_jpeg_names_file(wb_root, tmp_path, how):
    root = tmp_path / "wb"
    shutil.copytree(wb_root, root)
    ds = D.load_waterbirds(root, "train", size=16)
    T.damage_file(ds.paths[1], how)
    with pytest.raises(C.ArtifactError) as e:
        ds[1]
    assert str(ds.paths[1]) in str(e.value) and "item 1" in str(e.value)
    with pytest.raises(C.ArtifactError, match="cannot decode image"):
        D.load_waterbirds(root, "train", size=16, in_memory=True)


def test_missing_image_names_file(wb_root, tmp_path):
    root = tmp_path / "wb"
    shutil.copytree(wb_root, root)
    ds = D.load_waterbirds(root, "val", size=16)
    ds.paths[0].unlink()
    with pytest.raises(FileNotFoundError) as e:
        ds[0]
    assert str(ds.paths[0]) in str(e.value)


# --- SpuCo, in-memory datasets ------------------------------------------------------------------------------

def test_spuco_tree_without_images(tmp_path):
    T.write_spuco_fixture(tmp_path, n=0)  # every folder, no file
    with pytest.raises(FileNotFoundError) as e:
        D.load_spuco_animals(tmp_path, "train")
    msg = str(e.value)
    assert "load_spuco_animals: no images" in msg and str(tmp_path) in msg and "spuco_dogs/{train,val,test}" in msg


@pytest.mark.parametrize("x, index", [
    (torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [0.0, float("inf")]]), 1),
    (torch.zeros(4, 1, 2, 2).index_put_((torch.tensor([2]),), torch.full((1, 2, 2), float("inf"))), 2),
])
def test_group_dataset_names_first_bad_sample(x, index):
    with pytest.raises(ValueError) as e:
        D.GroupDataset(x, torch.zeros(len(x), dtype=torch.long), n_classes=1)
    assert f"GroupDataset: x contains NaN or inf values" in str(e.value) and f"the first is index {index}" in str(e.value)


def test_file_group_dataset_labels_checked(tmp_path):
    with pytest.raises(ValueError) as e:
        D.FileGroupDataset([tmp_path / "a.jpg"], torch.tensor([3]), torch.tensor([0]), n_classes=2, n_groups=4,
                           class_names=["a", "b"], group_names=list("abcd"))
    assert "FileGroupDataset: y has labels in [3, 3]" in str(e.value)


# --- files: JSON, torch, weights ---------------------------------------------------------------------------

def test_load_json_errors_name_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        C.load_json(tmp_path / "summary.json")
    assert str(tmp_path / "summary.json") in str(e.value)
    (tmp_path / "summary.json").write_text('{"seconds": ')
    with pytest.raises(C.ArtifactError) as e:
        C.load_json(tmp_path / "summary.json")
    assert str(tmp_path / "summary.json") in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", b"\x00" * 64])
def test_load_torch_errors_name_file(tmp_path, content):
    f = tmp_path / "x.pt"
    f.write_bytes(content)
    with pytest.raises(C.ArtifactError) as e:
        C.load_torch(f)
    assert str(f) in str(e.value) and len(str(e.value).splitlines()) == 1  # one line, not torch's essay


def test_make_model_weights_not_a_checkpoint(tmp_path):
    f = tmp_path / "README.txt"
    f.write_text("these are not weights")
    with pytest.raises(C.ArtifactError) as e:
        M.make_model("resnet50", 2, 3, 224, weights=f)
    assert f"resnet50: weights={str(f)!r} is not a checkpoint or state dict" in str(e.value)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(C.ArtifactError) as e:
        M.resnet50(2, weights=tmp_path / "list.pt")
    assert "list.pt" in str(e.value) and "holds no state dict" in str(e.value)


def test_explicit_damaged_checkpoint_names_file(tmp_path):
    p = C.save_checkpoint(tmp_path, 1, torch.nn.Linear(2, 2))
    T.damage_file(p)
    with pytest.raises(C.ArtifactError) as e:
        C.load_checkpoint(p, torch.nn.Linear(2, 2))
    assert str(p) in str(e.value)


# --- bad parameters of the new API -------------------------------------------------------------------------

@pytest.mark.parametrize("call, exc, msg", [
    (lambda p: C.save_artifact({"a": 1}, p / "a.pt", key=""), ValueError, "save_artifact: key='' must be a non-empty string"),
    (lambda p: C.save_artifact(None, p / "a.pt", key="k"), ValueError, "save_artifact: obj=None"),
    (lambda p: C.load_artifact(p / "a.pt", key=3), ValueError, "load_artifact: key=3"),
    (lambda p: C.load_artifact(p, key="k"), ValueError, "is a directory"),
    (lambda p: C.cached_artifact(p / "a.pt", "k", compute=42), ValueError, "cached_artifact: compute=42 must be a callable"),
    (lambda p: C.cached_artifact(p / "a.pt", "k", lambda: None), ValueError, "compute() returned None"),
    (lambda p: C.file_lock(p / "a.pt", timeout=-1).__enter__(), ValueError, "file_lock: timeout=-1"),
    (lambda p: C.file_lock(None).__enter__(), ValueError, "file_lock: path=None"),
    (lambda p: M.make_model("wrn-bogus"), ValueError, "make_model: name='wrn-bogus' is not one of 'small_cnn', 'wrn-<depth>-<k>'"),
    (lambda p: M.make_model(None), ValueError, "make_model: name=None is not one of"),
    (lambda p: M.register_model("x", target_layer="conv5"), ValueError, "register_model: target_layer='conv5'"),
    (lambda p: D.load_dataset("imagenet", "train"), ValueError, "load_dataset: name='imagenet' is not one of 'digits'"),
    (lambda p: D.register_dataset("My Data"), ValueError, "register_dataset: name='My Data'"),
    (lambda p: T.damage_file(p / "none.pt"), FileNotFoundError, "damage_file: path="),
    (lambda p: T.write_mnist_fixture(p, folder="KMNIST"), ValueError, "write_mnist_fixture: folder='KMNIST'"),
])
def test_bad_parameters(tmp_path, call, exc, msg):
    with pytest.raises(exc) as e:
        call(tmp_path)
    assert msg in str(e.value)


def test_file_lock_timeout_names_lock(tmp_path):
    with C.file_lock(tmp_path / "a.pt"):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as e:
            with C.file_lock(tmp_path / "a.pt", timeout=0.2): pass
    assert str(tmp_path / "a.pt.lock") in str(e.value) and 0.15 < time.monotonic() - t0 < 5


# --- damaged artifacts: moved aside, recomputed, same result ----------------------------------------------

def _swap(path, other_key):
    "Replace the artifact at `path` by a valid artifact of another key holding other tensors."
    C.save_artifact({"x": torch.zeros(3)}, path, key=other_key)


@pytest.mark.parametrize("how", ["truncate", "zero", "garbage", "swap", "forged"])
def test_damaged_artifact_is_recomputed(tmp_path, caplog, how):
    f = tmp_path / "chunk_00000.pt"
    compute = lambda: {"x": torch.arange(6.0).view(2, 3), "stats": {"n": 2}}
    clean = C.cached_artifact(f, "perturb-abc/0", compute)
    if how == "swap": _swap(f, "perturb-OTHER/0")
    elif how == "forged":  # the right header over other tensors: only the checksum can tell
        saved = torch.load(f, weights_only=True)
        saved["x"] = torch.zeros(2, 3)
        torch.save(saved, f)
    else: T.damage_file(f, how)
    calls = []
    with caplog.at_level(logging.WARNING, logger="cfx_nb.core"):
        again = C.cached_artifact(f, "perturb-abc/0", lambda: calls.append(1) or compute())
    assert torch.equal(again["x"], clean["x"]) and again["stats"] == clean["stats"]
    assert torch.equal(C.load_artifact(f, "perturb-abc/0")["x"], clean["x"])  # and saved intact
    if how == "garbage":  # bytes appended after the archive: the content still verifies, nothing to recompute
        assert calls == [] and not (tmp_path / "chunk_00000.pt.corrupt-1").exists()
        return
    assert calls == [1]  # recomputed once
    assert (tmp_path / "chunk_00000.pt.corrupt-1").exists()
    assert any(str(f) in r.getMessage() for r in caplog.records)


def test_artifact_written_with_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = C.save_artifact({"a": torch.ones(1)}, tmp_path / "a.pt", key="k")
        j = C.save_json({"a": 1}, tmp_path / "r.json")
    finally: os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644 and j.stat().st_mode & 0o777 == 0o644


def _ckpts(d, model_seed=0):
    torch.manual_seed(model_seed)
    m = torch.nn.Linear(3, 2)
    states = {}
    for e in (1, 2, 3):
        with torch.no_grad(): m.weight.add_(1.0)
        C.save_checkpoint(d, e, m, keep=2)
        states[e] = {k: v.clone() for k, v in m.state_dict().items()}
    return states


@pytest.mark.parametrize("how", ["truncate", "zero", "swap"])
def test_damaged_checkpoint_falls_back_to_previous(tmp_path, caplog, how):
    states = _ckpts(tmp_path)
    latest = C.checkpoint_path(tmp_path, 3)
    if how == "swap": shutil.copyfile(C.checkpoint_path(tmp_path, 2), latest)  # a valid checkpoint of another epoch
    else: T.damage_file(latest, how)
    with caplog.at_level(logging.WARNING, logger="cfx_nb.core"):
        assert C.latest_checkpoint(tmp_path) == C.checkpoint_path(tmp_path, 2)
    assert any(str(latest) in r.getMessage() for r in caplog.records)
    assert (tmp_path / "epoch_00003.pt.corrupt-1").exists() and not latest.exists()
    m = torch.nn.Linear(3, 2)
    info = C.load_checkpoint(tmp_path, m)
    assert info["epoch"] == 2
    assert all(torch.equal(v, states[2][k]) for k, v in m.state_dict().items())  # same as a clean epoch-2 resume


def test_all_checkpoints_damaged(tmp_path):
    _ckpts(tmp_path)
    for p in tmp_path.glob("epoch_*.pt"): T.damage_file(p, "zero")
    assert C.latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError) as e:
        C.load_checkpoint(tmp_path, torch.nn.Linear(3, 2))
    assert str(tmp_path) in str(e.value)


def test_damaged_generated_cache_is_regenerated(tmp_path):
    clean = D.make_waterbirds_like("val", scale=0.05, cache_dir=tmp_path)
    (f,) = tmp_path.glob("waterbirds_like-*/val.pt")
    T.damage_file(f)
    again = D.make_waterbirds_like("val", scale=0.05, cache_dir=tmp_path)
    assert torch.equal(again.x, clean.x) and torch.equal(again.group, clean.group)
    assert f.with_name("val.pt.corrupt-1").exists()


# --- two processes, one artifact ---------------------------------------------------------------------------

def _race_worker(path, log, out):
    def compute():
        with open(log, "a") as f: f.write("computed\n")
        time.sleep(0.5)  # long enough for the other process to arrive while this one computes
        return {"x": torch.arange(10) * 7}
    obj = C.cached_artifact(path, "race/0", compute, timeout=60)
    torch.save(obj, out)


def test_two_processes_compute_once(tmp_path):
    ctx = mp.get_context("fork")  # two independent processes (fork: no second torch import, the test stays fast)
    procs = [ctx.Process(target=_race_worker, args=(tmp_path / "a.pt", tmp_path / "log", tmp_path / f"out{i}.pt"))
             for i in range(2)]
    for p in procs: p.start()
    for p in procs: p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "log").read_text() == "computed\n"  # exactly one computation
    a, b = (torch.load(tmp_path / f"out{i}.pt", weights_only=True) for i in range(2))
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["x"], torch.arange(10) * 7)
    assert torch.equal(C.load_artifact(tmp_path / "a.pt", "race/0")["x"], a["x"])
