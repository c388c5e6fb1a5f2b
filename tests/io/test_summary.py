"""Tests of dip_uq.io.summary: what ``dip-uq info`` prints for the files in data/."""

from __future__ import annotations

from io_helpers import HTC, TOOTH

from dip_uq.io import describe, read_scan


def test_describe_summarises_a_scan():
    text = describe(read_scan(TOOTH))
    for part in (
        "aps-dxchange",
        "(181, 2, 640)",
        "181 from 0° to 179.006°",
        "10 flat fields",
        "ParallelBeam",
        "axis at detector column 319.50",
        "lengths in px",
        "notes",
    ):
        assert part in text
    text = describe(read_scan(HTC))
    assert "FanBeam" in text and "source-origin 410.66 mm" in text and "magnification" in text
