"""Tests of dip_uq.io.hyperspy on HyperSpy/etspy ``.hspy`` tilt series written here with h5py
in HyperSpy's layout (no HyperSpy needed): tilts from etspy's metadata or the navigation axis,
pixel size and units, the tilt axis, and the bad inputs."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from io_helpers import ball_sinogram, one_line

from dip_uq.cli import main
from dip_uq.geometry import ParallelBeam
from dip_uq.io import detect_format, read_scan

TILTS = np.arange(-70.0, 71.0, 5.0)  # degrees, 29 tilts
PIXEL_NM = 0.5
BALL = [((1.5, -0.75, 1.0), 2.0, 1.0)]  # x, y, z in nm


def write_hspy(path, stack, *, tilts=None, axis0=None, units="nm", tilt_units="degrees"):
    """A Signal2D stack ``(n, ny, nx)`` in HyperSpy's HDF5 layout, as etspy saves a TomoStack."""
    with h5py.File(path, "w") as f:
        f.attrs["file_format"] = "HyperSpy"
        f.attrs["file_format_version"] = "3.3"
        group = f.create_group("Experiments/tilt series")
        group["data"] = stack
        start, step = axis0 if axis0 is not None else (0.0, 1.0)
        names = [("Tilt", tilt_units, step, start, True), ("y", units, PIXEL_NM, 0.0, False)]
        names.append(("x", units, PIXEL_NM, 0.0, False))
        for k, (name, unit, scale, offset, nav) in enumerate(names):
            axis = group.create_group(f"axis-{k}")
            axis.attrs.update(
                name=name, units=unit, scale=scale, offset=offset, size=stack.shape[k], navigate=nav
            )
        metadata = group.create_group("metadata/Tomography")
        if tilts is not None:
            metadata["tilts"] = tilts
        group["metadata/General"] = h5py.Empty("f")


def etspy_stack(rows: int = 16, cols: int = 24) -> tuple[ParallelBeam, np.ndarray, np.ndarray]:
    """The geometry the reader should build with the tilt axis along the image's x, its exact
    line integrals ``(tilts, rows = image x, cols = image y)``, and the images ``(n, y, x)``."""
    g = ParallelBeam(np.deg2rad(TILTS), (rows, cols), PIXEL_NM)
    sino = ball_sinogram(g, BALL)
    return g, sino, np.ascontiguousarray(sino.transpose(0, 2, 1))


def test_an_etspy_tilt_series_with_its_tilts(tmp_path, capsys):
    g, sino, images = etspy_stack()
    path = tmp_path / "ts.hspy"
    write_hspy(path, images.astype(np.float32), tilts=TILTS)
    assert detect_format(path) == "hspy"
    scan = read_scan(path)
    assert scan.source_format == "hspy" and scan.units == "nm"
    assert scan.geometry == g and scan.pixel_size == (PIXEL_NM, PIXEL_NM)
    np.testing.assert_allclose(scan.angles_deg, TILTS)
    np.testing.assert_allclose(scan.sinogram, sino, atol=1e-6)
    text = " ".join(scan.notes)
    assert "metadata/Tomography/tilts (etspy)" in text and "image's x" in text
    assert "etspy's convention" in text and "without -log" in text
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hspy" in out and "29 from -70° to 70°" in out and "lengths in nm" in out

    # IMOD-aligned: the axis along y, given; the transposed images give the same scan
    write_hspy(tmp_path / "y.hspy", sino.astype(np.float32), tilts=TILTS)
    scan = read_scan(tmp_path / "y.hspy", tilt_axis="y")
    np.testing.assert_allclose(scan.sinogram, sino, atol=1e-6)


def test_tilts_from_the_navigation_axis_units_and_log(tmp_path):
    _, sino, images = etspy_stack()
    bright = np.round(20000 * np.exp(-images)).astype(np.uint16)  # bright field, counts
    path = tmp_path / "bf.hspy"
    write_hspy(path, bright, tilts=np.zeros(29), axis0=(-70.0, 5.0), units="Å")
    scan = read_scan(path, log=True)
    np.testing.assert_allclose(scan.angles_deg, TILTS)
    assert scan.pixel_size == pytest.approx((PIXEL_NM / 10,) * 2)  # 0.5 Å = 0.05 nm
    np.testing.assert_allclose(scan.sinogram, sino, atol=2e-3)
    assert "navigation axis 'Tilt'" in " ".join(scan.notes)
    write_hspy(tmp_path / "px.hspy", images, axis0=(-70.0, 5.0), units="<undefined>")
    scan = read_scan(tmp_path / "px.hspy")
    assert scan.units == "px" and scan.pixel_size is None


def test_bad_hspy_files_end_in_one_line(tmp_path, capsys):
    _, _, images = etspy_stack()
    write_hspy(tmp_path / "none.hspy", images, tilt_units="<undefined>")  # HyperSpy's default
    with pytest.raises(ValueError, match=r"no tilt angles .*not calibrated.*--angles") as error:
        read_scan(tmp_path / "none.hspy")
    one_line(error)
    write_hspy(tmp_path / "zero.hspy", images, tilts=np.zeros(29), axis0=(0.0, 0.0))
    with pytest.raises(ValueError, match=r"no tilt angles"):
        read_scan(tmp_path / "zero.hspy")
    scan = read_scan(tmp_path / "none.hspy", angles="-70:75:29deg")
    np.testing.assert_allclose(scan.angles_deg, TILTS)
    write_hspy(tmp_path / "one.hspy", images[:1])
    with pytest.raises(ValueError, match=r"a tilt series is a stack of images") as error:
        read_scan(tmp_path / "one.hspy")
    one_line(error)
    assert main(["info", str(tmp_path / "none.hspy"), "--pixel-size", "0.1"]) == 2
    assert "--pixel-size do not apply to a HyperSpy tilt series" in capsys.readouterr().err
