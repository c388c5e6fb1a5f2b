"""Tests of dip_uq.io.mrc: electron-tomography tilt series in MRC, written here with mrcfile
from exact line integrals of balls (a 3D phantom), in modes 1, 2 and 6, with IMOD tilt files
and FEI / SerialEM extended headers; orientation, units and the bad inputs."""

from __future__ import annotations

import hashlib

import h5py
import mrcfile
import numpy as np
import pytest
import torch
from io_helpers import ball_sinogram, one_line

from dip_uq.cli import main
from dip_uq.geometry import ParallelBeam
from dip_uq.io import detect_format, read_scan
from dip_uq.io.preprocess import axis_column
from dip_uq.projector import RayTransform
from dip_uq.scan import default_volume

TILTS = np.arange(-60.0, 61.0, 4.0)  # degrees, 31 tilts
PIXEL_A = 2.5  # Å
PIXEL_NM = PIXEL_A / 10
# an off-centre ball (x, y, z in nm), radius 1.2 nm: where the reconstruction must put it
BALL = [((1.5, -0.75, 0.75), 1.2, 1.0)]


def tilt_series(rows: int = 20, cols: int = 28) -> tuple[ParallelBeam, np.ndarray]:
    """The geometry the reader should build and the exact line integrals ``(tilts, rows, cols)``."""
    g = ParallelBeam(np.deg2rad(TILTS), (rows, cols), PIXEL_NM)
    return g, ball_sinogram(g, BALL)


def write_mrc(path, stack: np.ndarray, voxel: float = PIXEL_A, mode_dtype=np.float32) -> None:
    with mrcfile.new(path, stack.astype(mode_dtype), overwrite=True) as mrc:
        mrc.voxel_size = voxel
        mrc.set_image_stack()


def write_tlt(path, angles) -> None:
    path.write_text("".join(f"{a:.2f}\n" for a in angles))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("mode", "dtype", "scale"),
    [(1, np.int16, 1000.0), (2, np.float32, 1.0), (6, np.uint16, 1000.0)],
)
def test_tilt_series_in_modes_1_2_6_with_a_rawtlt_file(tmp_path, mode, dtype, scale):
    g, sino = tilt_series()
    counts = np.round(sino * scale) if scale != 1 else sino
    write_mrc(tmp_path / "ts.st", counts, mode_dtype=dtype)
    write_tlt(tmp_path / "ts.rawtlt", TILTS)
    with mrcfile.open(tmp_path / "ts.st") as mrc:
        assert int(mrc.header.mode) == mode
    assert detect_format(tmp_path / "ts.st") == "mrc"
    scan = read_scan(tmp_path / "ts.st")
    assert scan.source_format == "mrc" and scan.units == "nm"
    assert scan.geometry == g  # angles, detector (rows = image y), pitch 0.25 nm
    np.testing.assert_allclose(scan.angles_deg, TILTS)
    assert scan.pixel_size == pytest.approx((PIXEL_NM, PIXEL_NM))
    np.testing.assert_array_equal(scan.sinogram, counts.astype(np.float32))  # no -log
    text = " | ".join(scan.notes)
    assert f"MRC mode {mode}" in text and "angles from ts.rawtlt, in degrees" in text
    assert "without -log" in text and "alignment is the user's" in text
    assert "2.5 x 2.5 Å" in text and "lengths in nm" in text


@pytest.mark.parametrize("axis", ["y", "x"])
def test_an_off_centre_ball_reconstructs_where_it_was(tmp_path, axis):
    _, sino = tilt_series()
    stack = sino if axis == "y" else sino.transpose(0, 2, 1)  # axis along x: images transposed
    write_mrc(tmp_path / "ts.mrc", stack)
    write_tlt(tmp_path / "ts.tlt", TILTS)
    scan = read_scan(tmp_path / "ts.mrc", tilt_axis=None if axis == "y" else "x")
    np.testing.assert_allclose(scan.sinogram, sino, atol=1e-6)
    assert f"tilt axis along the image's {axis}" in " ".join(scan.notes)
    volume = default_volume(scan)
    image = RayTransform(volume, scan.geometry, backend="torch").fbp(
        torch.as_tensor(scan.sinogram), filter="hann"
    )
    image = np.clip(image.numpy(), 0, None)
    grids = np.meshgrid(*volume.coordinates(), indexing="ij")  # z, y, x
    centre = [float((grid * image).sum() / image.sum()) for grid in grids]
    (x, y, z), _, _ = BALL[0]
    # within a pixel (0.25 nm) across the beam; ±60° tilts leave the depth y less sharp
    assert centre[0] == pytest.approx(z, abs=0.25) and centre[2] == pytest.approx(x, abs=0.25)
    assert centre[1] == pytest.approx(y, abs=0.5)


def _with_seri_header(path, tilts) -> None:
    """Add a SerialEM/IMOD extended header: 2 bytes per image, flag 1 (tilt × 100 as int16)."""
    with mrcfile.open(path, "r+") as mrc:
        mrc.set_extended_header(np.round(np.asarray(tilts) * 100).astype("<i2").view("V2"))
        mrc.header.exttyp = b"SERI"
    raw = bytearray(path.read_bytes())
    raw[128:132] = np.array([2, 1], "<i2").tobytes()  # nint = 2 bytes, nreal = flag 1
    path.write_bytes(bytes(raw))


def _with_fei_header(path, tilts) -> None:
    dtype = mrcfile.dtypes.get_ext_header_dtype(b"FEI1", "<")
    ext = np.zeros(len(tilts), dtype=dtype)
    ext["Metadata size"] = dtype.itemsize
    ext["Alpha tilt"] = tilts
    ext["Tilt axis angle"] = 86.5
    with mrcfile.open(path, "r+") as mrc:
        mrc.set_extended_header(ext)
        mrc.header.exttyp = b"FEI1"


@pytest.mark.parametrize(
    ("add", "source"), [(_with_seri_header, "SerialEM/IMOD (SERI)"), (_with_fei_header, "FEI")]
)
def test_tilt_angles_from_the_extended_header(tmp_path, add, source):
    g, sino = tilt_series()
    write_mrc(tmp_path / "ts.mrc", sino)
    add(tmp_path / "ts.mrc", TILTS)
    scan = read_scan(tmp_path / "ts.mrc")
    np.testing.assert_allclose(scan.angles_deg, TILTS)
    assert scan.geometry == g
    text = " | ".join(scan.notes)
    assert f"from the {source}" in text and "extended header" in text
    if source == "FEI":
        assert "tilt-axis angle of 86.5°" in text  # reported, not applied


def test_angles_option_log_and_tilt_axis_offset(tmp_path):
    _, sino = tilt_series()
    bright = 5000.0 * np.exp(-sino)  # a bright-field image: I = I0 exp(-line integral)
    write_mrc(tmp_path / "bf.ali", bright)
    write_tlt(tmp_path / "bf.tlt", TILTS + 1)  # refined angles, overridden below
    scan = read_scan(tmp_path / "bf.ali", angles="-60:64:31deg", log=True, tilt_axis_offset=1.5)
    np.testing.assert_allclose(scan.angles_deg, TILTS)
    np.testing.assert_allclose(scan.sinogram, sino, atol=1e-4)  # -log(I / I0), I0 = 5000
    assert axis_column(scan.geometry) == pytest.approx((28 - 1) / 2 + 1.5)
    text = " | ".join(scan.notes)
    assert "I0 = 5000" in text and "the range -60:64:31deg" in text and "+1.50 px" in text


def test_a_header_without_pixel_size_gives_lengths_in_pixels(tmp_path):
    _, sino = tilt_series()
    write_mrc(tmp_path / "ts.mrc", sino, voxel=0.0)
    write_tlt(tmp_path / "ts.rawtlt", TILTS)
    scan = read_scan(tmp_path / "ts.mrc")
    assert scan.units == "px" and scan.pixel_size is None
    assert scan.geometry.det_spacing == (1.0, 1.0)


def test_bad_tilt_series_end_in_one_line_and_touch_nothing(tmp_path):
    _, sino = tilt_series()
    path = tmp_path / "ts.mrc"
    write_mrc(path, sino)
    before = digest(path)
    with pytest.raises(ValueError, match=r"no tilt angles .*pass --angles FILE") as error:
        read_scan(path)
    one_line(error)
    write_tlt(tmp_path / "ts.rawtlt", TILTS[:-1])
    with pytest.raises(ValueError, match=r"ts.rawtlt gives 30 angles but ts.mrc holds 31") as error:
        read_scan(path)
    one_line(error)
    with pytest.raises(ValueError, match=r"tilt_axis must be 'x' or 'y'"):
        read_scan(path, angles="-60:64:31deg", tilt_axis="z")
    with pytest.raises(ValueError, match=r"--pixel-size do not apply to an MRC tilt series"):
        read_scan(path, angles="-60:64:31deg", pixel_size=0.1)
    assert digest(path) == before and path.with_suffix(".rawtlt").read_text().count("\n") == 30

    raw = path.read_bytes()
    (tmp_path / "cut.mrc").write_bytes(raw[: len(raw) - 700])
    with pytest.raises(ValueError, match=r"cut.mrc: the MRC file is truncated") as error:
        read_scan(tmp_path / "cut.mrc", angles="-60:64:31deg")
    one_line(error)
    for mode, kind in ((7, "an unknown mode"), (4, "complex")):
        bad = bytearray(raw)
        bad[12:16] = np.int32(mode).tobytes()
        (tmp_path / f"mode{mode}.mrc").write_bytes(bytes(bad))
        with pytest.raises(ValueError, match=rf"MRC mode {mode} is {kind}.*newstack") as error:
            read_scan(tmp_path / f"mode{mode}.mrc", angles="-60:64:31deg")
        one_line(error)
    write_mrc(tmp_path / "one.mrc", sino[:1])
    with pytest.raises(ValueError, match=r"holds one image"):
        read_scan(tmp_path / "one.mrc", angles="0:1:1deg")


def test_info_and_the_command_line_errors(tmp_path, capsys):
    _, sino = tilt_series()
    write_mrc(tmp_path / "ts.mrc", sino)
    write_tlt(tmp_path / "ts.rawtlt", TILTS)
    assert main(["info", str(tmp_path / "ts.mrc")]) == 0
    out = capsys.readouterr().out
    assert ": mrc" in out and "31 from -60° to 60°" in out and "lengths in nm" in out
    assert "tilt axis along the image's y" in out
    assert main(["info", str(tmp_path / "ts.mrc"), "--angles", "0:180:30deg"]) == 2
    err = capsys.readouterr().err
    assert "gives 30 angles but ts.mrc holds 31 projections" in err and err.count("\n") == 1


def test_reconstruct_a_simulated_tilt_series_to_a_3d_std_map(tmp_path, capsys):
    """The real-data path end to end: MRC + tilt file -> DIP -> linearised Laplace -> 3D std."""
    _, sino = tilt_series(rows=8, cols=16)
    write_mrc(tmp_path / "ts.mrc", sino)
    write_tlt(tmp_path / "ts.rawtlt", TILTS)
    out = tmp_path / "out"
    args = ["reconstruct", str(tmp_path / "ts.mrc"), "--out", str(out), "--quiet"]
    args += ["--iterations", "40", "--channels", "4", "--scales", "2", "--samples", "2"]
    assert main(args) == 0
    with h5py.File(out / "reconstruction.h5") as f:
        mean, std = f["mean"][()], f["std"][()]
    assert mean.ndim == 3 and std.shape == mean.shape and mean.shape[1:] == (16, 16)
    assert np.isfinite(std).all() and (std > 0).all()
    assert (out / "std.tif").is_file()
