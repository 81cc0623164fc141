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
