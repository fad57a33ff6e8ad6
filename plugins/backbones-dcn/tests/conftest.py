"""Settings for the plugin's tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Inputs here are small: one intra-op thread per process is as fast, and leaves
    # the other cores to pytest-xdist's workers.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
