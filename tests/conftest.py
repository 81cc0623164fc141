"""Shared pytest fixtures. Tests make their own small data; nothing here downloads anything."""
import os

import pytest
import torch

# keep the 2-core CI machine responsive when pytest-xdist runs two workers
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


@pytest.fixture
def tmp_dir(tmp_path):
    return tmp_path


@pytest.fixture
def run_nb(tmp_path):
    """Run a notebook through papermill in `tmp_path` (rendered copy at tmp_path/out.ipynb); raises
    papermill's PapermillExecutionError when a cell fails."""
    pm = pytest.importorskip("papermill")

    def run(nb, **params):
        return pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters=params, kernel_name="python3",
                                   cwd=str(tmp_path), progress_bar=False)
    return run



@pytest.fixture
def run_bad_params(run_nb, tmp_path):
    """Run a notebook with parameters that must stop it (out_dir=tmp_path/"run"; data_root="EMPTY" becomes an
    empty folder) and return papermill's PapermillExecutionError; fails the test if the notebook runs through."""
    pm = pytest.importorskip("papermill")

    def run(nb, **params):
        if params.get("data_root") == "EMPTY":
            (tmp_path / "empty").mkdir()
            params = {**params, "data_root": str(tmp_path / "empty")}
        with pytest.raises(pm.PapermillExecutionError) as e:
            run_nb(nb, out_dir=str(tmp_path / "run"), **params)
        return e.value
    return run

@pytest.fixture
def run_paper_preset(run_nb, tmp_path):
    """Run an experiment notebook's `paper` preset on a data fixture in the real on-disk format, with a
    randomly initialised ResNet-50 saved to a local file standing in for the ImageNet weights, shrunk to CPU
    size (64 px, 1 epoch, 2 steps, 1 seed); returns the results.json and the output folder."""
    import json

    import torchvision

    def run(nb, data_root, **params):
        torch.manual_seed(0)
        weights = tmp_path / "resnet50.pth"
        torch.save(torchvision.models.resnet50().state_dict(), weights)
        out = tmp_path / "run"
        run_nb(nb, preset="paper", data_root=str(data_root), pretrained=str(weights), out_dir=str(out),
               epochs=1, steps=2, seeds=[0], image_size=64, device="cpu", num_threads=1, **params)
        return json.loads((out / "results.json").read_text()), out
    return run


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes tens of seconds (torchrun, paper presets on fixtures)")
