"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    # Inputs here are tiny: one thread per process is as fast, and `make test`
    # runs two processes (pytest-xdist) to use both cores without oversubscribing.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
