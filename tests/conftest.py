"""Shared test settings, and tests/helpers.py on ``sys.path`` for every test folder."""

import sys
from pathlib import Path

import pytest
import torch

# the test folders are not packages: ``from helpers import ...`` (the small problems the test
# files share) finds tests/helpers.py through this entry, from tests/ and every subfolder
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


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
