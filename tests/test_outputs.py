"""dip_uq.outputs: the files of a run hold what the pipeline returned, and say how it ran."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile

from dip_uq import pipeline
from dip_uq.outputs import OUTPUTS, write_results
from dip_uq.simulation import simulate_scan


@pytest.mark.parametrize("with_std", [True, False])
def test_write_results_writes_every_output_with_its_record(tmp_path, with_std):
    scan = simulate_scan(size=16, angles=8, noise=0.02)
    settings = pipeline.Settings(method="fbp")
    result = pipeline.reconstruct(scan, settings)
    if with_std:  # as a DIP run with a std map and a cross-validated prior scale would return it
        result.std = np.full_like(result.mean, 0.01)
        search = {"factors": [0.1, 1.0, 10.0], "tll_per_pixel": [3.0, 4.0, 3.5]}
        result.hyperparameters["prior_scale_search"] = {**search, "chosen_factor": 1.3}
    written = write_results(
        tmp_path / "out",
        result,
        scan,
        scan.volume,
        settings,
        title="test run",
        parameters={"angles": 8},
        run_info={"command": ["dip-uq", "test"], "device": "cpu"},
    )
    names = [p.name for p in written]
    assert names == [n for n in OUTPUTS if with_std or n != "std.tif"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)  # nothing else
    with h5py.File(tmp_path / "out" / "reconstruction.h5") as f:
        assert set(f) == {"mean", "fbp", "truth"} | ({"std"} if with_std else set())
        np.testing.assert_array_equal(f["mean"][()], result.mean)
        assert json.loads(f.attrs["settings"])["method"] == "fbp"
        assert json.loads(f.attrs["volume"])["shape"] == [16, 16]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "mean.tif"), result.mean)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["command"] == ["dip-uq", "test"] and record["parameters"] == {"angles": 8}
    assert record["scores"] == pytest.approx(result.scores)
    assert list(record)[:2] == ["command", "device"]  # how it ran, first
    png = (tmp_path / "out" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
