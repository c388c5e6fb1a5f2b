"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run every test on one thread: the test problems are tiny, and on a shared 2-core
    machine two OpenMP threads made a 64² DIP step 20x slower (0.33 s instead of 0.015 s)
    while one thread is as fast alone. Session-scoped, so module-scoped fixtures that fit
    networks run on one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
