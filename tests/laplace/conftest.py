"""The small Laplace problem most tests of this folder share (``tiny``)."""

import pytest
from test_posterior import tiny_problem


@pytest.fixture(scope="module")
def tiny():
    """``(parts, true noise variance)`` of :func:`test_posterior.tiny_problem`."""
    return tiny_problem()
