"""The small Laplace problem most tests of this folder share (``laplace_problem``)."""

import pytest
from helpers import tiny_problem


@pytest.fixture(scope="module")
def laplace_problem():
    """``(parts, true noise variance)`` of :func:`helpers.tiny_problem`: a small linearised
    U-Net, 6 parallel-beam angles, 5 % noise."""
    return tiny_problem()
