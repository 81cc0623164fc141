"""Shared pytest fixtures. Tests make their own small data; nothing here downloads anything."""
import os

import pytest
import torch

# keep the 2-core CI machine responsive when pytest-xdist runs two workers
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


@pytest.fixture
def tmp_dir(tmp_path):
    return tmp_path
