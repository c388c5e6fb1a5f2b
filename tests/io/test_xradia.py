"""Tests of dip_uq.io.xradia on small TXRM files written here in the Xradia OLE layout
(tests/io/ole_writer.py; no vendor data): cone and parallel beam, the reference image, units,
orientation, and the bad inputs."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from io_helpers import ball_sinogram, one_line
from ole_writer import write_ole

from dip_uq.geometry import ConeBeam, ParallelBeam
from dip_uq.io import detect_format, read_scan
from dip_uq.projector import RayTransform
from dip_uq.scan import default_volume

ANGLES = np.linspace(0.0, 360.0, 36, endpoint=False)  # degrees
PIXEL_UM = 50.0  # at the rotation axis
BALL = [((1.2, -0.8, 0.4), 0.6, 0.5)]  # x, y, z in mm; radius 0.6 mm; 0.5 / mm


def txrm_streams(projections: np.ndarray, **extra: bytes) -> dict[str, bytes]:
    """The streams of an Xradia projection file holding ``projections`` (n, height, width)."""
    n, height, width = projections.shape
    code = {np.dtype(np.uint16): 5, np.dtype(np.float32): 10}[projections.dtype]
    streams = {
        "ImageInfo/ImagesTaken": np.uint32(n).tobytes(),
        "ImageInfo/ImageWidth": np.uint32(width).tobytes(),
        "ImageInfo/ImageHeight": np.uint32(height).tobytes(),
        "ImageInfo/DataType": np.uint32(code).tobytes(),
        "ImageInfo/Angles": ANGLES[:n].astype("<f4").tobytes(),
        "ImageInfo/PixelSize": np.float32(PIXEL_UM).tobytes(),
    }
    little = projections.astype(projections.dtype.newbyteorder("<"))
    for i, image in enumerate(little):
        streams[f"ImageData{i // 100 + 1}/Image{i + 1}"] = image.tobytes()
    return {**streams, **extra}


def cone_scan(rows: int = 12, cols: int = 24) -> tuple[ConeBeam, np.ndarray]:
    """The geometry the reader should build (source-axis 40 mm, axis-detector 60 mm) and the
    exact line integrals."""
    magnification = 100 / 40
    g = ConeBeam(np.deg2rad(ANGLES), (rows, cols), PIXEL_UM * 1e-3 * magnification, 40.0, 60.0)
    return g, ball_sinogram(g, BALL)


def distances(source_axis: float, axis_detector: float) -> dict[str, bytes]:
    n = ANGLES.size
    return {  # Xradia records the source side as negative
        "ImageInfo/StoRADistance": np.full(n, -source_axis, "<f4").tobytes(),
        "ImageInfo/DtoRADistance": np.full(n, axis_detector, "<f4").tobytes(),
    }


def test_cone_beam_txrm_with_reference_image(tmp_path):
    g, line = cone_scan()
    flat = np.full(line.shape[1:], 50000.0)
    flat[:, :3] = 40000.0  # a detector with uneven response
    counts = np.round(flat * np.exp(-line)).astype(np.uint16)
    reference = {
        "ReferenceData/Image": flat.astype("<f4").tobytes(),
        "ReferenceData/DataType": np.uint32(10).tobytes(),
    }
    write_ole(tmp_path / "scan.txrm", txrm_streams(counts, **distances(40, 60), **reference))
    assert detect_format(tmp_path / "scan.txrm") == "txrm"
    scan = read_scan(tmp_path / "scan.txrm")
    assert scan.source_format == "xradia" and scan.units == "mm" and scan.n_flats == 1
    assert scan.geometry == g  # 50 µm at the axis x magnification 2.5 on the detector
    assert scan.distances == {"source_origin": 40.0, "origin_detector": 60.0}
    np.testing.assert_allclose(scan.angles_deg, ANGLES)
    np.testing.assert_allclose(scan.sinogram, line, atol=2e-4)  # uint16 rounding
    text = " | ".join(scan.notes)
    assert "cone beam: source-axis 40 mm, axis-detector 60 mm" in text
    assert "ReferenceData/Image" in text and "magnification 2.5" in text


def test_parallel_beam_normalised_txrm_reconstructs_the_ball_where_it_was(tmp_path):
    g = ParallelBeam(np.deg2rad(ANGLES / 2), (24, 64), PIXEL_UM * 1e-3 * 2)
    line = ball_sinogram(g, BALL)
    streams = txrm_streams(np.exp(-line).astype(np.float32))
    streams["ImageInfo/Angles"] = (ANGLES / 2).astype("<f4").tobytes()
    streams["ImageInfo/PixelSize"] = np.float32(2 * PIXEL_UM).tobytes()
    write_ole(tmp_path / "scan.txm", streams)
    scan = read_scan(tmp_path / "scan.txm")
    assert scan.geometry == g and scan.n_flats == 0
    assert "parallel beam (no source/detector distances" in " ".join(scan.notes)
    volume = default_volume(scan)
    image = RayTransform(volume, scan.geometry, backend="torch").fbp(
        torch.as_tensor(scan.sinogram), filter="hann"
    )
    image = image.numpy()
    ball = image > image.max() / 2  # the voxels of the ball, without the FBP's streaks
    grids = np.meshgrid(*volume.coordinates(), indexing="ij")  # z, y, x
    centre = [float(grid[ball].mean()) for grid in grids]
    (x, y, z), _, _ = BALL[0]
    assert centre == pytest.approx([z, y, x], abs=0.05)  # half a pixel (0.1 mm)


def test_rows_are_read_alone(tmp_path):
    _, line = cone_scan()
    write_ole(
        tmp_path / "scan.txrm", txrm_streams(np.exp(-line).astype(np.float32), **distances(40, 60))
    )
    scan = read_scan(tmp_path / "scan.txrm", rows=(4, 8))
    np.testing.assert_allclose(scan.sinogram, line[:, 4:8], atol=1e-5)
    assert scan.geometry.det_shape == (4, 24)


def test_bad_xradia_files_end_in_one_line_and_touch_nothing(tmp_path):
    _, line = cone_scan()
    counts = np.round(5e4 * np.exp(-line)).astype(np.uint16)
    streams = txrm_streams(counts, **distances(40, 60))
    path = tmp_path / "raw.txrm"
    write_ole(path, streams)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"no reference image \(ReferenceData/Image") as error:
        read_scan(path)
    one_line(error)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before

    floats = txrm_streams(np.exp(-line).astype(np.float32))
    for missing in ("ImageInfo/Angles", "ImageInfo/PixelSize", "ImageInfo/DataType"):
        write_ole(tmp_path / "gap.txrm", {k: v for k, v in floats.items() if k != missing})
        with pytest.raises(ValueError, match=rf"no {missing} stream; .*export the scan") as error:
            read_scan(tmp_path / "gap.txrm")
        one_line(error)
    short = {**floats, "ImageInfo/Angles": ANGLES[:30].astype("<f4").tobytes()}
    write_ole(tmp_path / "short.txrm", short)
    with pytest.raises(ValueError, match=r"ImageInfo/Angles holds 120 bytes, fewer than the 36"):
        read_scan(tmp_path / "short.txrm")
    write_ole(tmp_path / "other.txrm", {"SummaryInformation": b"\x00" * 48, "Doc/Text": b"hi"})
    with pytest.raises(ValueError, match=r"without Xradia image streams") as error:
        read_scan(tmp_path / "other.txrm")
    one_line(error)
    raw = (tmp_path / "gap.txrm").read_bytes()
    (tmp_path / "cut.txrm").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=r"cut.txrm: .*truncated") as error:
        read_scan(tmp_path / "cut.txrm")
    one_line(error)
    with pytest.raises(ValueError, match=r"--angles do not apply to txrm files"):
        read_scan(path, angles="0:360:36deg")


def test_txrm_without_reference_is_described_and_takes_a_flat_from_elsewhere(tmp_path, capsys):
    """A small test scan of 7 projections without ReferenceData/Image: ``info`` describes it,
    ``reconstruct`` refuses it in one line naming --flat and --normalised, and both work."""
    from dip_uq.cli import main

    g, line = cone_scan()
    flat = np.full(line.shape[1:], 50000.0)
    counts = np.round(flat * np.exp(-line[:7])).astype(np.uint16)
    path = tmp_path / "seven.txrm"
    write_ole(path, txrm_streams(counts, **distances(40, 60)))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stored values (not line integrals)" in out and "(7, 12, 24)" in out
    assert "angles     7 from 0° to 60°" in out and "ConeBeam" in out
    assert "missing    the frames hold raw intensities (uint16" in out
    assert "no reference image (ReferenceData/Image" in out and "--flat FILE" in out
    assert main(["reconstruct", str(path), "--method", "fbp", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--flat FILE" in err and "--normalised" in err
    assert not (tmp_path / "o").exists()

    np.save(tmp_path / "flat.npy", flat.astype(np.float32))  # one frame (rows, cols)
    scan = read_scan(path, flats=tmp_path / "flat.npy")
    assert scan.n_flats == 1 and scan.geometry == g[:7]
    np.testing.assert_allclose(scan.sinogram, line[:7], atol=1e-4)
    with_reference = txrm_streams(
        counts,
        **{"ReferenceData/Image": flat.astype("<f4").tobytes()},
        **{"ReferenceData/DataType": np.uint32(10).tobytes()},
    )
    write_ole(tmp_path / "other.txrm", with_reference)  # its reference serves as the flat
    scan = read_scan(path, flats=tmp_path / "other.txrm", rows=(4, 8))
    np.testing.assert_allclose(scan.sinogram, line[:7, 4:8], atol=1e-4)
    assert main(["info", str(path), "--flat", str(tmp_path / "other.txrm")]) == 0
    assert "1 flat fields, 0 dark frames" in capsys.readouterr().out

    normalised = tmp_path / "normalised.txrm"  # divided by the flat, stored as uint16
    stored = np.round(65535 * np.exp(-line[:7])).astype(np.uint16)
    write_ole(normalised, txrm_streams(stored, **distances(40, 60)))
    with pytest.raises(ValueError, match=r"--normalised, but the values reach 6.5\d+e\+04"):
        read_scan(normalised, normalised=True)
    scan = read_scan(normalised, normalised=True, scale=1 / 65535)
    np.testing.assert_allclose(scan.sinogram, line[:7], atol=1e-3)
