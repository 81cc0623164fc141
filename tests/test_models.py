"""cfx_nb.models: published parameter counts, shapes on every image size the project uses,
normalization inside the model, weight loading for ResNet-50, and clear errors on bad input."""
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

from cfx_nb import models as M


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# --- parameter counts against the published architectures -------------------------------------

def test_small_cnn_matches_kumano_convnet_count():
    # 16/128/128/256/256 channels, 3x3 kernels, linear 256->10 (Kumano et al.'s ConvNet)
    expected = (1 * 16 * 9 + 16) + (16 * 128 * 9 + 128) + (128 * 128 * 9 + 128) \
        + (128 * 256 * 9 + 256) + (256 * 256 * 9 + 256) + (256 * 10 + 10)
    assert n_params(M.SmallCNN()) == expected == 1_054_122


def test_wrn_28_10_is_36_5M():
    m = M.WideResNet(28, 10)
    assert n_params(m) == 36_479_194           # reference WRN-28-10 (Zagoruyko & Komodakis; RobustBench)
    assert round(n_params(m) / 1e6, 1) == 36.5  # the number in the WRN paper
    # Kumano et al.'s port adds conv biases: 16 + 2*4*(160+320+640) + (160+320+640) more parameters
    assert n_params(M.WideResNet(28, 10, bias=True)) == 36_479_194 + 16 + 8 * 1120 + 1120


@pytest.mark.parametrize("depth, k, published_m", [(40, 4, 8.9), (16, 8, 11.0), (16, 4, 2.7), (40, 2, 2.2)])
def test_wrn_family_counts(depth, k, published_m):
    assert round(n_params(M.WideResNet(depth, k)) / 1e6, 1) == published_m


def test_resnet50_head_count(tmp_path):
    ref = torchvision.models.resnet50(weights=None)
    assert n_params(ref) == 25_557_032
    f = tmp_path / "r50.pth"
    torch.save(ref.state_dict(), f)
    m = M.resnet50(2, weights=f)
    assert n_params(m) == 25_557_032 - 2048 * 1000 - 1000 + 2048 * 2 + 2
    assert torch.equal(m.net.layer3[2].conv2.weight, ref.layer3[2].conv2.weight)
    assert M.target_layer(m) is m.net.layer4[-1]


def test_one_hidden_layer_count_and_fixed_output_weights():
    m = M.OneHiddenLayerNet(100, hidden=1000)
    assert n_params(m) == 100 * 1000                      # only the first layer is trained
    assert m.linear.bias is None
    assert torch.allclose(m.a.abs(), torch.full((1000,), 1000 ** -0.5))
    assert (m.a > 0).sum() == 500 and (m.a < 0).sum() == 500


# --- shapes, normalization, gradients ----------------------------------------------------------

@pytest.mark.parametrize("c, s", [(1, 28), (1, 8), (1, 16), (3, 32), (3, 10), (3, 64)])
def test_small_cnn_runs_on_every_size(c, s):
    m = M.SmallCNN(c, 4, s)
    assert m(torch.rand(3, c, s, s)).shape == (3, 4)


def test_wrn_small_forward_and_dropout_train_eval():
    torch.manual_seed(0)
    m = M.WideResNet(10, 1, n_classes=3, dropout=0.5)
    x = torch.rand(4, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        a, b = m(x), m(x)
    assert a.shape == (4, 3) and torch.equal(a, b)  # eval: deterministic


def test_normalization_lives_inside_the_model():
    mean, std = M.DATASET_STATS["mnist"]
    m = M.SmallCNN(mean=mean, std=std).eval()
    bare = M.SmallCNN().eval()
    bare.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("normalize.")})
    x = torch.rand(5, 1, 28, 28, requires_grad=True)
    assert torch.allclose(m(x), bare((x - mean[0]) / std[0]), atol=1e-5)
    m(x).sum().backward()
    assert x.grad.abs().sum() > 0
    assert "normalize.mean" in m.state_dict()  # saved with the model, not trained
    assert all(not n.startswith("normalize") for n, _ in m.named_parameters())


def test_one_hidden_two_class_logits_match_scalar_and_logistic_loss():
    torch.manual_seed(0)
    m = M.OneHiddenLayerNet(20, hidden=10, two_class=True)
    x = torch.randn(32, 20)
    f = m.f(x)
    logits = m(x)
    assert torch.equal(logits[:, 0], torch.zeros(32)) and torch.equal(logits[:, 1], f)
    y_pm = torch.where(torch.rand(32) > 0.5, 1, -1)
    ce = F.cross_entropy(logits, (y_pm > 0).long())
    assert torch.allclose(ce, F.softplus(-y_pm * f).mean(), atol=1e-6)


def test_make_model_dispatch():
    assert isinstance(M.make_model("small_cnn", 2, 3, 32), M.SmallCNN)
    w = M.make_model("WRN-40-2", 10, 3, 32)
    assert (w.depth, w.widen_factor) == (40, 2)
    assert M.make_model("one_hidden", 1, d=7)(torch.rand(2, 7)).shape == (2,)
    assert M.make_model("one_hidden", 2, 1, 4).d == 16


# --- ResNet-50 weights --------------------------------------------------------------------------

def test_resnet50_offline_without_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in torchvision's cache") as e:
        M.resnet50(2)
    assert "resnet50-0676ba61.pth" in str(e.value) and "allow_random_init=True" in str(e.value)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = M.resnet50(3, allow_random_init=True)
    assert any("RANDOM" in str(x.message) for x in w)
    assert m.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 3)


def test_resnet50_reads_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    ref = torchvision.models.resnet50(weights=None)
    (tmp_path / "checkpoints").mkdir()
    torch.save(ref.state_dict(), tmp_path / "checkpoints" / "resnet50-0676ba61.pth")
    m = M.resnet50(2, weights="imagenet")
    assert torch.equal(m.net.conv1.weight, ref.conv1.weight)
    assert torch.allclose(m.normalize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_resnet50_rejects_mismatched_file(tmp_path):
    f = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, f)
    with pytest.raises(ValueError, match="bad.pth.* do not fit a ResNet-50"):
        M.resnet50(2, weights=f)


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("call, exc, msg", [
    (lambda: M.Normalize((0.5,), (0.0,)), ValueError, "Normalize: std=(0.0,) must be > 0"),
    (lambda: M.Normalize((0.5, 0.4), (0.2,)), ValueError, "mean has 2 values but std has 1"),
    (lambda: M.SmallCNN(image_size=2), ValueError, "SmallCNN: image_size=2 must be an integer >= 3"),
    (lambda: M.SmallCNN(in_channels=0), ValueError, "SmallCNN: in_channels=0"),
    (lambda: M.SmallCNN(mean=(0.1,)), ValueError, "give both mean and std"),
    (lambda: M.WideResNet(depth=30), ValueError, "WideResNet: depth=30 must be 6N+4"),
    (lambda: M.WideResNet(widen_factor=0), ValueError, "WideResNet: widen_factor=0"),
    (lambda: M.WideResNet(dropout=-0.1), ValueError, "WideResNet: dropout=-0.1"),
    (lambda: M.OneHiddenLayerNet(0), ValueError, "OneHiddenLayerNet: d=0 must be an integer >= 1"),
    (lambda: M.OneHiddenLayerNet(-3), ValueError, "OneHiddenLayerNet: d=-3"),
    (lambda: M.OneHiddenLayerNet(5, hidden=7), ValueError, "hidden=7 must be even"),
    (lambda: M.OneHiddenLayerNet(5, negative_slope=2.0), ValueError, "negative_slope=2.0"),
    (lambda: M.resnet50(0, weights=None), ValueError, "resnet50: n_classes=0"),
    (lambda: M.resnet50(2, weights="/nope/r50.pth"), FileNotFoundError, "no such file exists"),
    (lambda: M.resnet50(2, weights=1.5), ValueError, "resnet50: weights=1.5 is not one of"),
    (lambda: M.make_model("vgg"), ValueError, "make_model: name='vgg' is not one of 'small_cnn'"),
    (lambda: M.make_model(None), ValueError, "make_model: name=None"),
    (lambda: M.make_model("resnet50", 2, 1, 224, weights=None), ValueError, "in_channels=1"),
    (lambda: M.make_model("one_hidden", 3), ValueError, "binary model"),
    (lambda: M.target_layer(torch.nn.Linear(2, 2)), ValueError, "target_layer: no known Grad-CAM layer"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc) as e:
        call()
    assert msg in str(e.value)
