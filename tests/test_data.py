"""cfx_nb.data: readers on tiny fixtures in each real on-disk format, the embedded defaults (shape, range,
group counts, determinism, caching, the spurious signal) and clear errors on bad input."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from cfx_nb import data as D
from cfx_nb import testing as T


# --- GroupDataset ---------------------------------------------------------------------------------

def test_group_dataset_items_loader_subset():
    x = torch.rand(10, 3, 4, 4)
    y = torch.tensor([0, 1] * 5)
    g = 2 * y + torch.tensor([0, 0, 1, 1, 0] * 2)
    ds = D.GroupDataset(x, y, g, n_classes=2, n_groups=4, class_names=["a", "b"])
    assert len(ds) == 10 and ds.group_counts().tolist() == [3, 2, 3, 2]
    xb, yb, gb = next(iter(DataLoader(ds, batch_size=10)))
    assert torch.equal(xb, x) and torch.equal(yb, y) and torch.equal(gb, g)
    sub = ds.subset(torch.tensor([1, 3]))
    assert sub.y.tolist() == [1, 1] and sub.class_names == ("a", "b") and sub.n_groups == 4


def test_group_defaults_to_label():
    ds = D.GroupDataset(torch.randn(4, 3), torch.tensor([2, 0, 1, 2]), n_classes=3)
    assert torch.equal(ds.group, ds.y) and ds.n_groups == 3


# --- embedded defaults ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, {s: D.make_waterbirds_like(s, cache_dir=cache) for s in D.SPLITS}


def test_waterbirds_like_shape_range_counts(wb):
    _, d = wb
    assert d["train"].group_counts().tolist() == [3498, 184, 56, 1057]
    assert d["val"].group_counts().tolist() == [100] * 4
    assert d["test"].group_counts().tolist() == [300] * 4
    for s in D.SPLITS:
        assert d[s].x.shape[1:] == (3, 32, 32) and d[s].x.dtype == torch.float32
        assert d[s].x.min() >= 0 and d[s].x.max() <= 1
        assert torch.equal(d[s].y, d[s].group // 2)  # group = 2*y + place
        assert d[s].class_names == ("landbird", "waterbird")
        assert d[s].group_names[2] == "waterbird/land"


def test_waterbirds_like_deterministic_and_cached(wb):
    cache, d = wb
    again = D.make_waterbirds_like("train", cache_dir=cache)
    fresh = D.make_waterbirds_like("train", cache=False)
    assert torch.equal(again.x, d["train"].x) and torch.equal(fresh.x, d["train"].x) and torch.equal(fresh.group, d["train"].group)
    dirs = [p for p in cache.iterdir() if p.name.startswith("waterbirds_like-")]
    files = {p.name for p in dirs[0].iterdir() if p.suffix != ".lock"}  # (plus the lock file of each split)
    assert len(dirs) == 1 and files == {"config.json", "train.pt", "val.pt", "test.pt"}
    other = D.make_waterbirds_like("val", seed=1, cache_dir=cache)
    assert not torch.equal(other.x, d["val"].x)
    assert len([p for p in cache.iterdir() if p.name.startswith("waterbirds_like-")]) == 2  # keyed by config


def test_waterbirds_like_scale_and_size(tmp_path):
    d = D.make_waterbirds_like("train", scale=0.5, size=16, cache_dir=tmp_path)
    assert d.group_counts().tolist() == [1749, 92, 28, 528] and d.x.shape[1:] == (3, 16, 16)
    t = D.make_waterbirds_like("test", scale=0.1, cache=False)
    assert t.group_counts().tolist() == [30] * 4


def test_waterbirds_like_spurious_and_core_signals(wb):
    """Background (place) shows in the blue channel's border; the object's class shows in the centre's tint.
    A linear model on 8x8-pooled pixels fits the correlated train set but is worse on the minority groups."""
    from sklearn.linear_model import LogisticRegression
    _, d = wb
    tr, te = d["train"], d["test"]
    border_blue = te.x[:, 2, :2, :].mean((1, 2))
    place = te.group % 2
    assert border_blue[place == 1].mean() > border_blue[place == 0].mean() + 0.2
    feats = lambda ds: torch.nn.functional.avg_pool2d(ds.x, 4).flatten(1).numpy()
    clf = LogisticRegression(max_iter=300).fit(feats(tr), tr.y.numpy())
    correct = torch.from_numpy(clf.predict(feats(te)) == te.y.numpy()).float()
    acc = [correct[te.group == k].mean().item() for k in range(4)]
    assert min(acc[0], acc[3]) > 0.9                     # majority groups: easy
    assert min(acc[1], acc[2]) < min(acc[0], acc[3]) - 0.1  # minority groups: the spurious cue misleads
    assert correct.mean() > 0.6                          # but the core cue is learnable


def test_spuco_like_structure(tmp_path):
    a = D.make_spuco_animals_like("train", cache_dir=tmp_path)
    assert a.n_classes == 4 and a.n_groups == 8
    assert a.group_counts().tolist() == [1000, 50, 50, 1000, 1000, 50, 50, 1000]
    assert a.x.shape[1:] == (3, 32, 32) and 0 <= a.x.min() and a.x.max() <= 1
    assert D.make_spuco_animals_like("test", cache_dir=tmp_path).group_counts().tolist() == [100] * 8
    dogs = D.make_spuco_animals_like("val", subset="dogs", scale=0.2, cache=False)
    assert dogs.class_names == ("small_dog", "big_dog") and dogs.group_counts().tolist() == [100] * 4
    b1 = D.make_spuco_animals_like("train", subset="birds", scale=0.02, cache=False)
    b2 = D.make_spuco_animals_like("train", subset="birds", scale=0.02, cache_dir=tmp_path)
    assert b1.group_counts().tolist() == [200, 10, 10, 200] and torch.equal(b1.x, b2.x)


def test_digits():
    d = {s: D.load_digits(s, size=12) for s in D.SPLITS}
    assert [len(d[s]) for s in D.SPLITS] == [1078, 359, 360]
    assert d["train"].x.shape[1:] == (1, 12, 12) and 0 <= d["train"].x.min() and d["train"].x.max() <= 1
    assert torch.bincount(d["test"].y).min() >= 35  # stratified
    assert torch.equal(D.load_digits("train", size=12).x, d["train"].x)
    assert D.load_digits("train", size=8).x.shape[-1] == 8


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_synthetic(kind):
    s = D.make_synthetic(kind, 300, 7, seed=2)
    assert s.x.shape == (300, 7) and s.n_classes == 2 and set(s.y.tolist()) == {0, 1}
    assert torch.equal(s.x, D.make_synthetic(kind, 300, 7, seed=2).x)
    assert not torch.equal(s.x, D.make_synthetic(kind, 300, 7, seed=3).x)
    if kind == "uniform": assert s.x.min() >= -1 and s.x.max() <= 1
    else: assert s.x.min() < -1 and s.x.max() > 1


# --- real readers on fixtures in the real formats --------------------------------------------------------

def test_waterbirds_reader(tmp_path):
    root = T.write_waterbirds_fixture(tmp_path / "waterbird_complete95_forest2water2", n_per_group=3, size=48)
    meta = pd.read_csv(root / "metadata.csv")
    assert list(meta.columns[:5]) == ["img_id", "img_filename", "y", "split", "place"]
    tr = D.load_waterbirds(tmp_path, "train", size=32)  # parent folder works too
    assert isinstance(tr, D.FileGroupDataset) and len(tr) == 12 and tr.group_counts().tolist() == [3, 3, 3, 3]
    x, y, g = tr[0]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    mem = D.load_waterbirds(root, "test", size=24, in_memory=True)
    assert isinstance(mem, D.GroupDataset) and mem.x.shape == (12, 3, 24, 24)
    expect = meta[meta.split == 2]
    assert mem.group.tolist() == (2 * expect.y + expect.place).tolist()
    # the fixture encodes place in red and y in blue: check the pixels went through the reader unchanged in meaning
    assert mem.x[mem.group % 2 == 1, 0].mean() > mem.x[mem.group % 2 == 0, 0].mean() + 0.3
    assert mem.x[mem.y == 1, 2].mean() > mem.x[mem.y == 0, 2].mean() + 0.3
    sub = tr.subset([0, 5]).load(progress=False)
    assert sub.x.shape == (2, 3, 32, 32)


def test_waterbirds_reader_errors(tmp_path):
    root = T.write_waterbirds_fixture(tmp_path / "wb", n_per_group=1)
    (root / pd.read_csv(root / "metadata.csv").img_filename[0]).unlink()
    with pytest.raises(FileNotFoundError, match="1 of 4 train images listed in metadata.csv are missing"):
        D.load_waterbirds(root, "train")
    pd.read_csv(root / "metadata.csv").drop(columns=["place"]).to_csv(root / "metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks columns \['place'\]"):
        D.load_waterbirds(root, "val")
    with pytest.raises(FileNotFoundError, match="no metadata.csv"):
        D.load_waterbirds(tmp_path, "train")


def test_spuco_reader(tmp_path):
    root = T.write_spuco_fixture(tmp_path, n=2, size=20)
    assert (root / "spuco_dogs" / "train" / "big_dogs" / "outdoor" / "0.jpg").is_file()
    a = D.load_spuco_animals(root, "val", size=16)
    assert a.n_classes == 4 and a.group_counts().tolist() == [2] * 8
    assert a.class_names == ("landbird", "waterbird", "small_dog", "big_dog")
    lab = {p.parts[-3]: int(y) for p, y in zip(a.paths, a.y)}
    assert lab == {"landbirds": 0, "waterbirds": 1, "small_dogs": 2, "big_dogs": 3}
    d = D.load_spuco_animals(root, "test", subset="dogs", size=16, in_memory=True)
    assert d.x.shape == (8, 3, 16, 16) and d.y.tolist() == [0] * 4 + [1] * 4
    ctx = {(p.parts[-3], p.parts[-2]): int(g) for p, g in zip(D.load_spuco_animals(root, "test", subset="dogs").paths, d.group)}
    assert ctx == {("small_dogs", "indoor"): 0, ("small_dogs", "outdoor"): 1, ("big_dogs", "indoor"): 2, ("big_dogs", "outdoor"): 3}
    assert D.load_spuco_animals(root / "spuco_birds", "train", subset="birds").group_counts().tolist() == [2] * 4


def test_spuco_reader_missing_folder(tmp_path):
    root = T.write_spuco_fixture(tmp_path, n=1)
    import shutil
    shutil.rmtree(root / "spuco_dogs" / "train" / "small_dogs" / "outdoor")
    with pytest.raises(FileNotFoundError, match="small_dogs/outdoor' is missing"):
        D.load_spuco_animals(root, "train")


@pytest.mark.parametrize("fn, folder", [(D.load_mnist, "MNIST"), (D.load_fmnist, "FashionMNIST")])
def test_mnist_idx_reader(tmp_path, fn, folder):
    T.write_mnist_fixture(tmp_path, n_train=30, n_test=12, folder=folder)
    raw = tmp_path / folder / "raw" / "train-images-idx3-ubyte"
    assert raw.read_bytes()[:4] == b"\x00\x00\x08\x03"  # the IDX magic number torchvision parses
    tr, te = fn(tmp_path, "train"), fn(tmp_path, "test")
    assert (len(tr), len(te)) == (30, 12) and tr.x.shape[1:] == (1, 28, 28)
    assert torch.allclose(tr.x[:, 0, 5, 5] * 255, tr.y.float() * 10, atol=1e-3)
    assert torch.equal(tr.group, tr.y) and tr.n_groups == 10
    va, tr2 = fn(tmp_path, "val", val_size=6, seed=1), fn(tmp_path, "train", val_size=6, seed=1)
    assert len(va) == 6 and len(tr2) == 24
    assert sorted(va.x[:, 0, 0, 0].tolist() + tr2.x[:, 0, 0, 0].tolist()) == sorted(tr.x[:, 0, 0, 0].tolist())



def test_cifar10_reader(tmp_path, monkeypatch):
    # torchvision checks the files' md5 against the official release: a fixture cannot match, so only that
    # check is bypassed here; parsing, layout and our conversion run for real
    import torchvision
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    T.write_cifar10_fixture(tmp_path, n_per_batch=4, n_test=6)
    tr, te = D.load_cifar10(tmp_path, "train"), D.load_cifar10(tmp_path, "test")
    assert (len(tr), len(te)) == (20, 6) and tr.x.shape[1:] == (3, 32, 32) and tr.x.dtype == torch.float32
    assert torch.allclose(tr.x[:, 0, 3, 4] * 255, tr.y.float() * 20, atol=1e-3)  # red plane carries the label
    assert torch.allclose(tr.x[:, 1] * 255, torch.full_like(tr.x[:, 1], 7), atol=1e-3)  # channel order kept
    assert torch.equal(tr.group, tr.y) and 0 <= tr.x.min() and tr.x.max() <= 1
    va, tr2 = D.load_cifar10(tmp_path, "val", val_size=5), D.load_cifar10(tmp_path, "train", val_size=5)
    assert (len(va), len(tr2)) == (5, 15)


def test_svhn_reader(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets.SVHN, "_check_integrity", lambda self: True)  # md5 only, as above
    T.write_svhn_fixture(tmp_path, n_train=12, n_test=5)  # SVHN stores the digit 0 as 10
    tr, te = D.load_svhn(tmp_path, "train"), D.load_svhn(tmp_path, "test")
    assert (len(tr), len(te)) == (12, 5) and tr.x.shape[1:] == (3, 32, 32)
    assert tr.y.tolist() == (np.arange(12) % 10).tolist()
    assert torch.allclose(tr.x[:, 2, 10, 10] * 255, tr.y.float() * 20, atol=1e-3)

def test_load_dataset_dispatch(tmp_path):
    T.write_mnist_fixture(tmp_path / "m")
    assert len(D.load_dataset("mnist", "train", tmp_path / "m")) == 20
    assert D.load_dataset("waterbirds", "test", scale=0.05, cache=False).group_counts().tolist() == [15] * 4
    wb = T.write_waterbirds_fixture(tmp_path / "wb")
    assert isinstance(D.load_dataset("waterbirds", "val", wb), D.FileGroupDataset)
    assert D.load_dataset("spuco_dogs", "test", scale=0.01, cache=False).n_classes == 2
    assert D.load_dataset("digits", "val").x.shape[1:] == (1, 16, 16)
    s_tr, s_te = D.load_dataset("synthetic_gaussian", "train", n=20, d=3), D.load_dataset("synthetic_gaussian", "test", n=20, d=3)
    assert s_tr.x.shape == (20, 3) and not torch.equal(s_tr.x, s_te.x)


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, exc, msg", [
    (lambda: D.make_waterbirds_like("dev"), ValueError, "make_waterbirds_like: split='dev' is not one of 'train', 'val', 'test'"),
    (lambda: D.make_waterbirds_like("train", scale=0), ValueError, "make_waterbirds_like: scale=0 must be a finite number > 0"),
    (lambda: D.make_waterbirds_like("train", size=4), ValueError, "make_waterbirds_like: size=4"),
    (lambda: D.make_waterbirds_like("train", ambiguity=1.5), ValueError, "ambiguity=1.5"),
    (lambda: D.make_spuco_animals_like("train", subset="cats"), ValueError, "make_spuco_animals_like: subset='cats' is not one of"),
    (lambda: D.load_digits("Train"), ValueError, "load_digits: split='Train' is not one of"),
    (lambda: D.load_digits("train", channels=2), ValueError, "load_digits: channels=2 is not one of 1, 3"),
    (lambda: D.make_synthetic("uniform", 10, 0), ValueError, "make_synthetic: d=0 must be an integer >= 1"),
    (lambda: D.make_synthetic("uniform", 10, -5), ValueError, "make_synthetic: d=-5"),
    (lambda: D.make_synthetic("uniform", 0, 5), ValueError, "make_synthetic: n=0"),
    (lambda: D.make_synthetic("cauchy", 10, 5), ValueError, "make_synthetic: kind='cauchy' is not one of 'uniform', 'gaussian'"),
    (lambda: D.load_waterbirds("/definitely/not/here", "train"), FileNotFoundError, "load_waterbirds: root='/definitely/not/here' is not a directory"),
    (lambda: D.load_waterbirds(None, "train"), ValueError, "load_waterbirds: root=None must be a path"),
    (lambda: D.load_spuco_animals("/definitely/not/here", "train"), FileNotFoundError, "spuco_birds/{train,val,test}"),
    (lambda: D.load_mnist("/definitely/not/here", "train"), FileNotFoundError, "load_mnist: root='/definitely/not/here' is not a directory"),
    (lambda: D.load_cifar10("/tmp", "train"), FileNotFoundError, "load_cifar10: CIFAR10 files not found"),
    (lambda: D.load_svhn("/tmp", "test"), FileNotFoundError, "load_svhn: SVHN files not found"),
    (lambda: D.load_mnist("/tmp", "holdout"), ValueError, "load_mnist: split='holdout' is not one of"),
    (lambda: D.load_mnist("/tmp", "val"), ValueError, "has no official validation split"),
    (lambda: D.load_dataset("imagenet", "train"), ValueError, "load_dataset: name='imagenet' is not one of 'digits', 'waterbirds'"),
    (lambda: D.load_dataset("waterbirds", "valid"), ValueError, "load_dataset: split='valid' is not one of 'train', 'val', 'test'"),
    (lambda: D.load_dataset("cifar10", "train"), ValueError, "load_dataset: 'cifar10' has no embedded copy and data_root=None"),
    (lambda: D.load_dataset("fmnist", "test"), ValueError, "The embedded offline substitute is 'digits'"),
    (lambda: D.load_dataset("digits", "test", "/some/root"), ValueError, "'digits' is bundled with scikit-learn"),
    (lambda: D.load_dataset("waterbirds", "train", "/definitely/not/here"), FileNotFoundError, "is not a directory"),
    (lambda: D.GroupDataset(torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 5]), n_classes=2), ValueError, "GroupDataset: y has labels in [0, 5]"),
    (lambda: D.GroupDataset(torch.rand(3, 2), torch.tensor([0, 1, 1]), n_classes=2, class_names=["a"]), ValueError, "class_names has 1 names"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc) as e:
        call()
    assert msg in str(e.value)
