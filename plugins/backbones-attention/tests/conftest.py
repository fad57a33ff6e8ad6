"""Fixtures shared by the attention plugin's tests."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # Inputs here are tiny: one thread per process is as fast, and the suite runs two
    # processes (pytest-xdist) to use both cores without oversubscribing.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
