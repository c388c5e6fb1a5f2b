"""Tests of dip_uq.io.values (what stored values are, for every format) and of a single-TIFF
uint16 sinogram without flats, as a neutron beamline writes one: ``info`` describes it, the
refusal names the option that fits, ``--log`` and ``--scale`` convert it."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from io_helpers import ball_sinogram, one_line, parallel_2d

from dip_uq.cli import main
from dip_uq.io import read_scan
from dip_uq.io.values import Conversion, NeedsConversion, to_line_integrals

ANGLES = "0:360:120deg"  # a 360° scan


@pytest.fixture
def sino():
    """Exact line integrals ``(120, 64)`` of a 360° parallel-beam scan of balls."""
    return ball_sinogram(parallel_2d(120, 64, full=True))


def test_every_option_in_its_order(sino):
    frames = sino[:, None, :]
    counts = 40000 * np.exp(-frames)
    flat = np.full((1, 1, 64), 40000.0)
    c = to_line_integrals(counts, Conversion(flats=flat), "x", default="frames")
    np.testing.assert_allclose(c.values, frames, atol=1e-4)
    assert c.n_flats == 1 and "(--flat)" in c.notes[0]
    c = to_line_integrals(counts / 40000, Conversion(normalised=True), "x", default="frames")
    np.testing.assert_allclose(c.values, frames, atol=1e-4)
    stored = np.round(65535 * np.exp(-frames)).astype(np.uint16)  # I / I0 times 65535
    normalised = Conversion(normalised=True, scale=1 / 65535)
    c = to_line_integrals(stored, normalised, "x", default="arrays")
    np.testing.assert_allclose(c.values, frames, atol=1e-3)
    c = to_line_integrals(stored, Conversion(log=True), "x", default="arrays")
    np.testing.assert_allclose(c.values, frames, atol=1e-3)  # I0: the empty beam, 65535
    assert "99.9th percentile" in c.notes[0]
    thousand = np.round(1000 * frames).astype(np.uint16)
    c = to_line_integrals(thousand, Conversion(scale=1e-3), "x", default="arrays")
    np.testing.assert_allclose(c.values, frames, atol=1e-3)
    # the file's own flats win over the defaults, and options then conflict with them
    c = to_line_integrals(counts, Conversion(), "x", default="frames", flats=flat)
    np.testing.assert_allclose(c.values, frames, atol=1e-4)
    with pytest.raises(ValueError, match=r"has its own flat fields .* leave out --log") as error:
        to_line_integrals(counts, Conversion(log=True), "x", default="frames", flats=flat)
    one_line(error)


def test_refusals_name_the_option_that_fits(sino):
    frames = sino[:, None, :]
    intensities = np.round(50000 * np.exp(-frames)).astype(np.uint16)
    with pytest.raises(NeedsConversion, match=r"look like intensities .* pass --log") as error:
        to_line_integrals(intensities, Conversion(), "s.tif", default="arrays")
    one_line(error)
    scaled = np.round(1000 * frames).astype(np.uint16)
    with pytest.raises(NeedsConversion, match=r"look like scaled line integrals .*--scale S"):
        to_line_integrals(scaled, Conversion(), "s.tif", default="arrays")
    with pytest.raises(NeedsConversion, match=r"--flat FILE .*--normalised .*--log"):
        to_line_integrals(intensities, Conversion(), "s.txrm", default="frames")
    with pytest.raises(ValueError, match=r"--normalised, but the values reach 5e\+04.*--scale"):
        to_line_integrals(intensities, Conversion(normalised=True), "s", default="frames")
    # describe: nothing refused, the values kept, what is missing said
    kept = to_line_integrals(intensities, Conversion(describe=True), "s", default="arrays")
    np.testing.assert_array_equal(kept.values, intensities.astype(np.float32))
    assert "--log" in kept.missing and kept.fields()["metadata"]["values"] == kept.missing
    for options, message in [
        ({"log": True, "normalised": True}, "exclude each other"),
        ({"log": True, "scale": 2.0}, "--scale does not change"),
        ({"scale": 0.0}, "positive number"),
        ({"darks": np.zeros((1, 2))}, "--dark needs --flat"),
        ({"flats": np.ones((1, 2)), "log": True}, "--flat and --log"),
    ]:
        with pytest.raises(ValueError, match=message):
            Conversion(**options)


def test_a_uint16_tiff_sinogram_without_flats(tmp_path, sino, capsys):
    path = tmp_path / "neutrons.tif"
    tifffile.imwrite(path, np.round(60000 * np.exp(-sino)).astype(np.uint16))
    assert main(["info", str(path), "--angles", ANGLES]) == 0
    out = capsys.readouterr().out
    assert "stored values (not line integrals)" in out and "(120, 64)" in out
    assert "missing    holds integer values (uint16" in out and "pass --log" in out
    assert "120 from 0° to 357°" in out
    args = ["reconstruct", str(path), "--angles", ANGLES, "--method", "fbp"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "look like intensities" in err and "--log" in err
    assert not (tmp_path / "out").exists()
    scan = read_scan(path, angles=ANGLES, log=True)
    np.testing.assert_allclose(scan.sinogram, sino, atol=1e-3)
    assert scan.angles_deg[-1] == pytest.approx(357.0)
    assert main(["info", str(path), "--angles", ANGLES, "--log"]) == 0
    assert "line integrals in [" in capsys.readouterr().out

    scaled = tmp_path / "scaled.tif"  # line integrals times 1000, as integers
    tifffile.imwrite(scaled, np.round(1000 * sino).astype(np.uint16))
    assert main(["reconstruct", str(scaled), "--angles", ANGLES, "--out", str(tmp_path)]) == 2
    assert "--scale S" in capsys.readouterr().err
    scan = read_scan(scaled, angles=ANGLES, scale=1e-3)
    np.testing.assert_allclose(scan.sinogram, sino, atol=1e-3)
    assert scan.notes[-1].startswith("line integrals: the stored values times 0.001 (--scale)")


def test_info_describes_bare_arrays_without_a_geometry(tmp_path, sino, capsys):
    np.save(tmp_path / "sino.npy", sino)
    assert main(["info", str(tmp_path / "sino.npy")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'sino.npy'}: npy")
    assert "found      array float32 (120, 64), values 0" in out
    assert "missing    a .npy sinogram needs a geometry" in out and "--angles" in out
    assert main(["reconstruct", str(tmp_path / "sino.npy"), "--out", str(tmp_path)]) == 2
    assert "needs a geometry" in capsys.readouterr().err
