"""Fixtures of the io tests."""

from __future__ import annotations

import numpy as np
import pytest
from io_helpers import ball_sinogram

from dip_uq.geometry import ConeBeam


@pytest.fixture
def cone_scan():
    """A small cone-beam geometry ``(24 angles, 6 x 40 detector)`` and its exact sinogram."""
    g = ConeBeam(np.linspace(0, 2 * np.pi, 24, endpoint=False), (6, 40), 1.0, 60.0, 30.0)
    return g, ball_sinogram(g)
