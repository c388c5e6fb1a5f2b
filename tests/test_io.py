"""Tests of dip_uq.io: the readers on the real files in data/, written files of every format,
the preprocessing, the centre of rotation, the NXtomo round trip and the error messages.

Synthetic sinograms are exact line integrals of balls (discs in 2D) computed here from the
geometry's vectors, independently of any projector, so a geometry that a reader or
``preprocess`` gets wrong (a sign, a shift, a pitch) shows up as a mismatch with them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile
import torch

from dip_uq.projector.analytic import fbp
from dip_uq.geometry import ConeBeam, FanBeam, Geometry, ParallelBeam, VectorGeometry, Volume
from dip_uq.io import (
    Scan,
    default_volume,
    describe,
    detect_format,
    estimate_rotation_center,
    load_geometry,
    preprocess,
    read_scan,
    write_nxtomo,
)
from dip_uq.io.scan import axis_column

DATA = Path(__file__).resolve().parents[1] / "data"
TOOTH = DATA / "aps_tooth.h5"
HTC = DATA / "htc2022_ta_30deg.mat"
K11 = DATA / "diamond_k11" / "k11-18014.nxs"

# balls: (centre (x, y, z), radius, attenuation)
BALLS = [((6.0, -4.0, 0.5), 9.0, 0.02), ((-9.0, 7.0, -1.0), 4.0, 0.05)]


def ball_sinogram(geometry: Geometry, balls=BALLS) -> np.ndarray:
    """Exact line integrals through balls (2D: discs in z = 0) for every detector pixel."""
    f = geometry.frames_3d()
    rows = geometry.det_shape[0] if geometry.ndim == 3 else 1
    cols = geometry.det_shape[-1]
    i = np.arange(cols) - (cols - 1) / 2
    j = np.arange(rows) - (rows - 1) / 2
    pix = (
        f["center"][:, None, None]
        + i[None, None, :, None] * f["u"][:, None, None]
        + j[None, :, None, None] * f["v"][:, None, None]
    )  # (angles, rows, cols, 3)
    if geometry.kind == "parallel":
        start = pix
        direction = np.broadcast_to(f["ray"][:, None, None], pix.shape)
    else:
        start = np.broadcast_to(f["source"][:, None, None], pix.shape)
        direction = pix - start
    direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    sino = np.zeros(pix.shape[:3])
    for centre, radius, mu in balls:
        c = np.array(centre) if geometry.ndim == 3 else np.array([*centre[:2], 0.0])
        rel = c - start
        along = np.sum(rel * direction, -1)
        dist2 = np.sum(rel * rel, -1) - along**2
        sino += mu * 2 * np.sqrt(np.clip(radius**2 - dist2, 0, None))
    return sino.astype(np.float32) if geometry.ndim == 3 else sino[:, 0].astype(np.float32)


def ball_image(volume: Volume, balls=BALLS) -> np.ndarray:
    axes = volume.coordinates()
    if volume.ndim == 2:
        y, x = np.meshgrid(*axes, indexing="ij")
        z = np.zeros_like(x)
    else:
        z, y, x = np.meshgrid(*axes, indexing="ij")
    image = np.zeros(volume.shape)
    for (cx, cy, cz), radius, mu in balls:
        cz = cz if volume.ndim == 3 else 0.0
        image += mu * (((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) <= radius**2)
    return image


def parallel_2d(n_angles=60, cols=64, offset=0.0, full=False) -> ParallelBeam:
    angles = np.linspace(0, 2 * np.pi if full else np.pi, n_angles, endpoint=False)
    return ParallelBeam(angles, (cols,), 0.75, offset)


# --------------------------------------------------------------------------------------------
# the real files
# --------------------------------------------------------------------------------------------
def test_aps_tooth_data_exchange():
    scan = read_scan(TOOTH)
    assert detect_format(TOOTH) == "dxchange" and scan.source_format == "aps-dxchange"
    assert scan.sinogram.shape == (181, 2, 640) and scan.sinogram.dtype == np.float32
    assert isinstance(scan.geometry, ParallelBeam) and scan.geometry.det_shape == (2, 640)
    assert scan.n_flats == 10 and scan.n_darks == 10 and scan.units == "px"
    assert scan.angles_deg[0] == 0 and 178.9 < scan.angles_deg[-1] < 179.1
    assert np.allclose(np.rad2deg(scan.geometry.angles), scan.angles_deg)
    sino = scan.sinogram
    assert np.isfinite(sino).all()
    inside = sino[:, :, 270:330]  # the tooth crosses these columns in every projection
    assert (inside > 0).mean() > 0.99 and inside.mean() > 0.5
    assert abs(sino[:, :, :20].mean()) < 0.02 and abs(sino[:, :, -20:].mean()) < 0.02
    assert scan.metadata["sample"] == "Tooth"
    assert any("10 flats and 10 darks" in n for n in scan.notes)


def test_aps_tooth_one_row_is_a_2d_scan():
    full = read_scan(TOOTH)
    row = read_scan(TOOTH, rows=1)
    assert row.sinogram.shape == (181, 640) and row.geometry.ndim == 2
    np.testing.assert_allclose(row.sinogram, full.sinogram[:, 1], rtol=1e-6)
    assert row.geometry == preprocess(full, rows=1).geometry


def test_tooth_centre_of_rotation_and_fbp():
    scan = read_scan(TOOTH, rows=0)
    column = estimate_rotation_center(scan)
    assert abs(column - 295.5) <= 2.0  # the README: 295-296; measured 296.2
    fixed = preprocess(scan, center_offset="auto", binning=2)
    # det_offset = (detector centre - axis column) * spacing, in the binned detector too
    assert fixed.geometry.det_offset[0] == pytest.approx(319.5 - column, abs=1e-6)
    assert axis_column(fixed.geometry) == pytest.approx((column - 0.5) / 2, abs=1e-6)
    assert "estimated the rotation axis at column 296." in fixed.notes[-2]

    # the corrected reconstruction is sharper: far less negative attenuation (ring/crescent
    # artefacts of a wrong centre), measured 1.9 vs 12.7 (binned 2, Hann)
    wrong = preprocess(scan, binning=2)
    volume = default_volume(fixed)
    assert volume.voxel_size[0] == 2.0 and volume.shape[0] >= 320
    images = [
        fbp(torch.from_numpy(s.sinogram), volume, s.geometry, filter="hann").numpy()
        for s in (fixed, wrong)
    ]
    negative = [-np.clip(img, None, 0).sum() for img in images]
    assert negative[0] < 0.5 * negative[1]
    tooth = images[0] > 0.5 * images[0].max()
    assert 0.02 < tooth.mean() < 0.3  # a compact object (7.6% of the grid), not streaks


def test_htc2022_mat_v5_fan_beam():
    scan = read_scan(HTC)
    assert detect_format(HTC) == "mat" and scan.source_format == "htc2022-mat"
    assert scan.sinogram.shape == (61, 560) and scan.n_flats == scan.n_darks == 0
    g = scan.geometry
    assert isinstance(g, FanBeam) and g.det_shape == (560,) and g.det_spacing == (0.2,)
    assert g.src_origin == pytest.approx(410.66) and g.origin_det == pytest.approx(143.08)
    assert g.magnification == pytest.approx(1.348415, rel=1e-5)
    assert scan.angles_deg[0] == 269 and scan.angles_deg[-1] == 299
    assert np.allclose(np.diff(scan.angles_deg), 0.5)
    assert np.isfinite(scan.sinogram).all()
    assert (scan.sinogram > 0).mean() > 0.95 and scan.sinogram.mean() > 1.0  # the disc
    # field of view: the detector width over the magnification, in 0.1483 mm pixels
    volume = default_volume(scan)
    assert volume.voxel_size[0] == pytest.approx(0.148322, rel=1e-4)
    assert 550 <= volume.shape[0] <= 562


def test_diamond_k11_nexus_with_external_links():
    scan = read_scan(K11)
    assert detect_format(K11) == "nxtomo" and scan.source_format == "diamond-nexus"
    assert scan.sinogram.shape == (3001, 22, 26)
    assert scan.n_flats == 100 and scan.n_darks == 100
    assert isinstance(scan.geometry, ParallelBeam)
    assert 89.9 < scan.angles_deg[0] < 90.1 and 269.9 < scan.angles_deg[-1] < 270.1
    assert np.isfinite(scan.sinogram).all() and abs(scan.sinogram.mean()) < 0.5
    text = " ".join(scan.notes)
    assert "/entry/instrument/imaging/data" in text and "skipped /entry/instrument/EtherCAT" in text
    assert "gts_theta_value" in text


def test_diamond_external_links_work_from_a_copy(tmp_path, monkeypatch):
    shutil.copytree(DATA / "diamond_k11", tmp_path / "k11")
    monkeypatch.chdir(tmp_path.parent)  # links resolve next to the .nxs, not from the cwd
    scan = read_scan(tmp_path / "k11" / "k11-18014.nxs", rows=(3, 5))
    assert scan.sinogram.shape == (3001, 2, 26)
    np.testing.assert_allclose(scan.sinogram, read_scan(K11).sinogram[:, 3:5], rtol=1e-6)


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


# --------------------------------------------------------------------------------------------
# MATLAB v7.3, TIFF, NumPy
# --------------------------------------------------------------------------------------------
def _write_mat73(path: Path, variables: dict) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: a 512-byte text header, HDF5 after it, arrays
    stored transposed, structs as groups, strings as uint16 char arrays."""

    def put(group, name, value):
        if isinstance(value, dict):
            sub = group.create_group(name)
            sub.attrs["MATLAB_class"] = np.bytes_("struct")
            for k, v in value.items():
                put(sub, k, v)
        elif isinstance(value, str):
            ds = group.create_dataset(name, data=np.array([[ord(c) for c in value]], np.uint16).T)
            ds.attrs["MATLAB_class"] = np.bytes_("char")
        else:
            ds = group.create_dataset(name, data=np.atleast_2d(np.asarray(value, np.float64)).T)
            ds.attrs["MATLAB_class"] = np.bytes_("double")

    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in variables.items():
            put(f, k, v)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


def test_mat_v73_htc_struct_matches_v5(tmp_path):
    v5 = read_scan(HTC)
    raw = scipy.io.loadmat(HTC, simplify_cells=True)["CtDataLimited"]
    params = {
        k: v
        for k, v in raw["parameters"].items()
        if not isinstance(v, np.ndarray) or v.dtype.kind in "fiu"
    }
    params["angles"] = np.atleast_2d(raw["parameters"]["angles"])  # a 1 x 61 row vector
    params["distanceUnit"] = "mm"
    path = tmp_path / "htc_v73.mat"
    _write_mat73(
        path, {"CtDataLimited": {"type": "ta", "sinogram": raw["sinogram"], "parameters": params}}
    )
    with h5py.File(path) as f:  # really transposed on disk
        assert f["CtDataLimited/sinogram"].shape == (560, 61)
    v73 = read_scan(path)
    assert "v7.3" in v73.notes[0] and v73.source_format == "htc2022-mat"
    np.testing.assert_array_equal(v73.sinogram, v5.sinogram)
    assert v73.geometry == v5.geometry
    np.testing.assert_array_equal(v73.angles_deg, v5.angles_deg)


def test_mat_generic_array_needs_geometry(tmp_path):
    g = parallel_2d()
    sino = ball_sinogram(g)
    scipy.io.savemat(tmp_path / "s.mat", {"sinogram": sino.astype(np.float64)})
    with pytest.raises(ValueError, match="needs a geometry; pass --geometry"):
        read_scan(tmp_path / "s.mat")
    (tmp_path / "g.json").write_text(json.dumps(g.to_dict()))
    scan = read_scan(tmp_path / "s.mat", geometry=tmp_path / "g.json")
    np.testing.assert_allclose(scan.sinogram, sino)
    assert scan.geometry == g


@pytest.fixture
def cone_scan():
    g = ConeBeam(np.linspace(0, 2 * np.pi, 24, endpoint=False), (6, 40), 1.0, 60.0, 30.0)
    return g, ball_sinogram(g)


def test_tiff_folder_and_multipage_with_geometry_json(tmp_path, cone_scan):
    g, sino = cone_scan
    (tmp_path / "geom.json").write_text(json.dumps(g.to_dict()))
    folder = tmp_path / "proj"
    folder.mkdir()
    for k, image in enumerate(sino):  # names sort naturally: p_2 before p_10
        tifffile.imwrite(folder / f"p_{k}.tif", image)
    tifffile.imwrite(tmp_path / "stack.tiff", sino)
    for path in (folder, tmp_path / "stack.tiff"):
        assert detect_format(path) == "tiff"
        with pytest.raises(ValueError, match=r"needs a geometry; pass --geometry geom\.json"):
            read_scan(path)
        scan = read_scan(path, geometry=tmp_path / "geom.json")
        assert scan.geometry == g and scan.source_format == "tiff"
        np.testing.assert_array_equal(scan.sinogram, sino)


def test_tiff_intensities_with_flats_and_darks(tmp_path, cone_scan):
    g, sino = cone_scan
    rng = np.random.default_rng(0)
    gain = 1000 + 200 * rng.random((5, 6, 40))  # per-pixel flats, 5 frames
    dark = 50 + rng.random((3, 6, 40))
    counts = dark.mean(0) + gain.mean(0) * np.exp(-sino)  # flat - dark = gain
    tifffile.imwrite(tmp_path / "raw.tif", counts.astype(np.float32))
    tifffile.imwrite(tmp_path / "flats.tif", (gain + dark.mean(0)).astype(np.float32))
    tifffile.imwrite(tmp_path / "darks.tif", dark.astype(np.float32), photometric="minisblack")
    scan = read_scan(
        tmp_path / "raw.tif", geometry=g, flats=tmp_path / "flats.tif", darks=tmp_path / "darks.tif"
    )
    assert scan.n_flats == 5 and scan.n_darks == 3
    np.testing.assert_allclose(scan.sinogram, sino, atol=2e-4)
    tifffile.imwrite(tmp_path / "raw16.tif", counts.astype(np.uint16))
    with pytest.raises(ValueError, match="raw counts; pass flat fields"):
        read_scan(tmp_path / "raw16.tif", geometry=g)


def test_npy_with_astra_vector_files(tmp_path, cone_scan):
    g, sino = cone_scan
    np.save(tmp_path / "sino.npy", sino)
    np.savetxt(tmp_path / "cone.vec", g.vectors)  # ASTRA cone_vec, one line per projection
    scan = read_scan(tmp_path / "sino.npy", geometry=tmp_path / "cone.vec")
    assert isinstance(scan.geometry, VectorGeometry) and scan.geometry.kind == "cone"
    assert scan.geometry == g.to_vector_geometry()
    assert any("cone_vec, inferred" in n for n in scan.notes)
    np.testing.assert_array_equal(scan.sinogram, sino)
    np.testing.assert_allclose(scan.angles_deg, np.rad2deg(g.angles), atol=1e-9)

    # 2D: ASTRA's parallel_vec vectors are mirrored in y; the file round-trips our geometry
    g2 = parallel_2d(offset=2.0)
    np.save(tmp_path / "sino2.npy", ball_sinogram(g2))
    np.savetxt(tmp_path / "par.txt", g2.to_astra()["Vectors"], header="ray d u")
    scan2 = read_scan(tmp_path / "sino2.npy", geometry=tmp_path / "par.txt")
    assert scan2.geometry.kind == "parallel" and scan2.geometry == g2.to_vector_geometry()


def test_npz_carries_its_geometry(tmp_path):
    g = parallel_2d()
    sino = ball_sinogram(g)
    np.savez(tmp_path / "s.npz", sinogram=sino, geometry=json.dumps(g.to_dict()))
    scan = read_scan(tmp_path / "s.npz")
    assert scan.geometry == g and scan.source_format == "npz"


# --------------------------------------------------------------------------------------------
# write_nxtomo round trip
# --------------------------------------------------------------------------------------------
def test_write_nxtomo_round_trip_2d_with_truth(tmp_path):
    g = parallel_2d(offset=1.5)
    volume = Volume((48, 48), 1.0)
    truth = ball_image(volume)
    scan = Scan(ball_sinogram(g), g, notes=["simulated"])
    write_nxtomo(tmp_path / "sim.nx", scan, truth=torch.from_numpy(truth), volume=volume)
    back = read_scan(tmp_path / "sim.nx")
    assert back.source_format == "nxtomo" and back.geometry == g
    np.testing.assert_array_equal(back.sinogram, scan.sinogram)
    np.testing.assert_array_equal(back.truth, truth)
    assert back.volume == volume and default_volume(back) == volume
    np.testing.assert_allclose(back.angles_deg, scan.angles_deg)
    assert back.notes[0] == "simulated"
    with h5py.File(tmp_path / "sim.nx") as f:  # the NXtomo fields other readers look for
        assert f["entry/definition"][()] == b"NXtomo"
        assert f["entry/instrument/detector/data"].shape == (60, 1, 64)
        assert f["entry/instrument/detector/image_key"][()].tolist() == [0] * 60
        assert f["entry/sample/rotation_angle"].attrs["units"] == "degree"


def test_write_nxtomo_round_trip_cone_and_vector(tmp_path, cone_scan):
    g, sino = cone_scan
    for geometry in (g, g.to_vector_geometry()):
        scan = Scan(sino, geometry, distances={"source_origin": 60.0, "origin_detector": 30.0})
        write_nxtomo(tmp_path / "c.nx", scan)
        back = read_scan(tmp_path / "c.nx")
        assert type(back.geometry) is type(geometry) and back.geometry == geometry
        np.testing.assert_array_equal(back.sinogram, sino)
        assert back.distances == scan.distances and back.truth is None
        assert read_scan(tmp_path / "c.nx", rows=(1, 3)).sinogram.shape == (24, 2, 40)


def test_nxtomo_intensities_with_image_key(tmp_path):
    """A third-party NXtomo file: raw counts, flats/darks by image_key, angles in radians."""
    g = ParallelBeam(np.linspace(0, np.pi, 30, endpoint=False), (3, 64), (0.5, 0.75))
    sino = ball_sinogram(g)
    counts = 10 + 5000 * np.exp(-sino)
    frames = np.concatenate([np.full((4, 3, 64), 5010.0), np.full((2, 3, 64), 10.0), counts])
    keys = np.array([1] * 4 + [2] * 2 + [0] * 30)
    with h5py.File(tmp_path / "raw.nx", "w") as f:
        entry = f.create_group("entry0000")
        entry.attrs["NX_class"] = "NXentry"
        det = entry.create_group("instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        det["data"] = frames.astype(np.float32)
        det["image_key"] = keys
        det["x_pixel_size"] = 750.0
        det["x_pixel_size"].attrs["units"] = "um"
        det["y_pixel_size"] = 0.5e-3
        det["y_pixel_size"].attrs["units"] = "m"
        angles = np.concatenate([np.zeros(6), g.angles])
        entry["sample/rotation_angle"] = angles
        entry["sample/rotation_angle"].attrs["units"] = "rad"
    scan = read_scan(tmp_path / "raw.nx")
    assert scan.source_format == "nxtomo" and scan.n_flats == 4 and scan.n_darks == 2
    assert scan.geometry == g and scan.units == "mm" and scan.pixel_size == (0.5, 0.75)
    np.testing.assert_allclose(scan.sinogram, sino, atol=1e-4)


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------
def test_crop_bin_and_offset_keep_the_geometry_consistent():
    """Cropped/binned/shifted data must equal the line integrals of the new geometry."""
    g = ParallelBeam(np.linspace(0, np.pi, 20, endpoint=False), (4, 80), (0.5, 0.5), (0.3, 1.0))
    scan = Scan(ball_sinogram(g), g)
    out = preprocess(scan, rows=(0, 4), crop=(4, 65), binning=2, angle_step=3)
    assert out.sinogram.shape == (7, 2, 30) and out.geometry.det_spacing == (1.0, 1.0)
    # kept columns 4..63 (one dropped by the binning): centre 33.5 instead of 39.5
    assert out.geometry == ParallelBeam(g.angles[::3], (2, 30), 1.0, (0.3, 1.0 - 0.5 * 6))
    # bins average the chords, so only the mean error is small: measured 0.35% of the peak,
    # 2.8% with the detector one original pixel off
    expected = ball_sinogram(out.geometry)
    assert np.abs(out.sinogram - expected).mean() < 0.008 * expected.max()
    assert any("dropping 1 trailing columns" in n for n in out.notes)

    cone = ConeBeam(np.linspace(0, 2 * np.pi, 12, endpoint=False), (8, 60), 0.8, 50.0, 25.0)
    for geometry in (cone, cone.to_vector_geometry()):
        scan = Scan(ball_sinogram(geometry), geometry)
        out = preprocess(scan, rows=slice(2, 6), center_offset=-2.5, crop=(4, 56), binning=2)
        shifted = ConeBeam(cone.angles, (8, 60), 0.8, 50.0, 25.0, det_offset=(0.0, 2.0))
        reference = preprocess(
            Scan(ball_sinogram(shifted), shifted), rows=slice(2, 6), crop=(4, 56), binning=2
        )
        assert out.geometry == (
            reference.geometry if geometry is cone else reference.geometry.to_vector_geometry()
        )
        expected = ball_sinogram(out.geometry)
        assert out.sinogram.shape == (12, 2, 26)
        assert np.abs(reference.sinogram - expected).mean() < 0.008 * expected.max()  # 0.43%


def test_single_row_and_angle_subsampling():
    g = ParallelBeam(np.linspace(0, np.pi, 10, endpoint=False), (3, 32))
    scan = Scan(ball_sinogram(g), g)
    row = preprocess(scan, rows=2, angle_step=2)
    assert row.ndim == 2 and row.sinogram.shape == (5, 32)
    assert row.geometry == ParallelBeam(g.angles[::2], (32,))
    np.testing.assert_array_equal(row.angles_deg, scan.angles_deg[::2])
    cone = ConeBeam(g.angles, (3, 32), 1.0, 40.0, 20.0)
    one = preprocess(Scan(ball_sinogram(cone), cone), rows=1)
    assert one.ndim == 3 and one.sinogram.shape == (10, 1, 32)
    with pytest.raises(ValueError, match="3D scan"):
        preprocess(row, rows=0)


@pytest.mark.parametrize("full", [False, True], ids=["180deg-com", "360deg-mirror"])
def test_centre_estimate_recovers_a_known_shift(full):
    """Data of a detector whose centre is shifted by det_offset = +3.3 (4.4 px), read as if
    it were centred: the estimate finds the axis 4.4 px left of the centre, and the
    corrected geometry reconstructs the off-axis discs where they are."""
    true = parallel_2d(n_angles=90, cols=96, offset=3.3, full=full)
    scan = Scan(ball_sinogram(true), parallel_2d(n_angles=90, cols=96, full=full))
    column = estimate_rotation_center(scan, method="mirror" if full else "com")
    assert column == pytest.approx(47.5 - 3.3 / 0.75, abs=0.15)
    fixed = preprocess(scan, center_offset="auto")
    assert fixed.geometry.det_offset[0] == pytest.approx(3.3, abs=0.1)
    assert ("mirrored opposite" if full else "centre-of-mass") in fixed.notes[-1]

    volume = Volume((64, 64), 0.75)
    truth = ball_image(volume)
    errors = {}
    for name, geometry in (("fixed", fixed.geometry), ("flipped", parallel_2d(90, 96, -3.3, full))):
        image = fbp(torch.from_numpy(scan.sinogram), volume, geometry, filter="hann").numpy()
        errors[name] = np.abs(image - truth).mean()
    assert errors["fixed"] < 0.5 * errors["flipped"]  # a wrong sign blurs and moves the discs


def test_centre_estimate_refuses_what_it_cannot_do():
    cone = ConeBeam(np.linspace(0, 2 * np.pi, 8, endpoint=False), (2, 16), 1.0, 40.0, 20.0)
    with pytest.raises(ValueError, match="parallel beam only"):
        preprocess(Scan(ball_sinogram(cone), cone), center_offset="auto")
    narrow = ParallelBeam(np.linspace(0, 1.0, 20), (64,), 0.75)
    with pytest.raises(ValueError, match="too little to estimate"):
        estimate_rotation_center(Scan(ball_sinogram(narrow), narrow))


def test_default_volume_covers_the_field_of_view():
    g = ParallelBeam(np.zeros(2), (4, 100), (0.5, 0.5))
    assert default_volume(g) == Volume((4, 100, 100), 0.5)
    shifted = ParallelBeam(np.zeros(2), (100,), 0.5, 5.0)  # axis 10 px off the centre
    assert default_volume(shifted).shape == (120, 120)
    fan = FanBeam(np.zeros(2), (200,), 1.0, 100.0, 100.0)
    volume = default_volume(fan, size=64)
    r = 100 * np.sin(np.arctan(100 / 200))  # the fan's inscribed circle
    assert volume.shape == (64, 64) and volume.extent[0] == pytest.approx(2 * r)
    assert default_volume(fan, voxel_size=1.0).shape == (90, 90)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_missing_unknown_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_scan(tmp_path / "nope.h5")
    (tmp_path / "junk.dat").write_bytes(b"\x00\x01 not a scan at all")
    with pytest.raises(ValueError, match="unknown scan format") as error:
        read_scan(tmp_path / "junk.dat")
    _one_line(error)
    (tmp_path / "cut.h5").write_bytes(TOOTH.read_bytes()[:300_000])
    with pytest.raises(ValueError, match="truncated or damaged") as error:
        read_scan(tmp_path / "cut.h5")
    _one_line(error)
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran")
    with pytest.raises(ValueError, match=r"cannot read the \.npy"):
        read_scan(tmp_path / "cut.npy", geometry=parallel_2d())
    with pytest.raises(ValueError, match="unknown format 'zip'"):
        read_scan(TOOTH, format="zip")
    with pytest.raises(FileNotFoundError, match="no such geometry file"):
        read_scan(TOOTH, geometry=tmp_path / "missing.json")


def test_data_that_do_not_match_the_geometry(tmp_path):
    g = parallel_2d()
    np.save(tmp_path / "s.npy", np.zeros((59, 64), np.float32))
    with pytest.raises(ValueError, match=r"shape \(59, 64\) do not match the geometry") as error:
        read_scan(tmp_path / "s.npy", geometry=g)
    _one_line(error)
    np.savetxt(tmp_path / "bad.vec", np.zeros((60, 9)))
    with pytest.raises(ValueError, match="9 columns; an ASTRA vector file has 12"):
        read_scan(tmp_path / "s.npy", geometry=tmp_path / "bad.vec")
    (tmp_path / "vol.json").write_text(json.dumps(Volume((4, 4)).to_dict()))
    with pytest.raises(ValueError, match="describes a volume"):
        load_geometry(tmp_path / "vol.json")


def test_nan_in_the_data(tmp_path):
    sino = ball_sinogram(parallel_2d())
    sino[3, 7] = np.nan
    np.save(tmp_path / "s.npy", sino)
    with pytest.raises(ValueError, match=r"1 NaN and 0 Inf values \(first at index \(3, 7\)\)"):
        read_scan(tmp_path / "s.npy", geometry=parallel_2d())


def _dxchange(path: Path, data, white, dark, theta=None) -> None:
    with h5py.File(path, "w") as f:
        f["exchange/data"] = data
        f["exchange/data_white"] = white
        f["exchange/data_dark"] = dark
        f["exchange/theta"] = (
            np.linspace(0, 180, len(data), endpoint=False) if theta is None else theta
        )


def test_flat_field_problems(tmp_path):
    rng = np.random.default_rng(1)
    data = 100 + 900 * rng.random((10, 2, 32))
    white = np.full((3, 2, 32), 1000.0)
    dark = np.full((2, 2, 32), 100.0)
    _dxchange(tmp_path / "zero.h5", data, dark, dark)  # flats no brighter than the darks
    with pytest.raises(ValueError, match="flat minus dark is <= 0 at every detector pixel") as e:
        read_scan(tmp_path / "zero.h5")
    _one_line(e)
    region = white.copy()
    region[:, :, 5:15] = 100.0  # a dead region of the flats
    _dxchange(tmp_path / "region.h5", data, region, dark)
    with pytest.raises(ValueError, match=r"at 20 of 64 detector pixels \(rows 0-1, columns 5-14\)"):
        read_scan(tmp_path / "region.h5")

    big = 100 + 900 * rng.random((10, 4, 64))
    dead = np.full((3, 4, 64), 1000.0)
    dead[:, 1, 7] = 100.0  # one dead pixel (0.4%): filled in from its row neighbours, reported
    _dxchange(tmp_path / "dead.h5", big, dead, np.full((2, 4, 64), 100.0))
    scan = read_scan(tmp_path / "dead.h5")
    assert any(n.startswith("1 detector pixels with flat - dark <= 0") for n in scan.notes)
    neighbours = scan.sinogram[:, 1, [6, 8]].mean(1)
    np.testing.assert_allclose(scan.sinogram[:, 1, 7], neighbours, rtol=1e-5)
    with h5py.File(tmp_path / "dead.h5", "a") as f:
        del f["exchange/data_white"]
    with pytest.raises(ValueError, match=r"raw intensities .* no flat fields"):
        read_scan(tmp_path / "dead.h5")

    low = data.copy()
    low[2, 0, :12] = 90.0  # below the dark level: clipped, reported
    _dxchange(tmp_path / "low.h5", low, white, dark)
    scan = read_scan(tmp_path / "low.h5")
    assert np.isfinite(scan.sinogram).all()
    assert any(n.startswith("clipped 12 non-positive transmissions") for n in scan.notes)
    _dxchange(tmp_path / "dark.h5", np.full_like(data, 50.0), white, dark)
    with pytest.raises(ValueError, match="every projection value is at or below the dark"):
        read_scan(tmp_path / "dark.h5")
    bad = data.copy()
    bad[4, 1, 3] = np.inf
    _dxchange(tmp_path / "inf.h5", bad, white, dark)
    with pytest.raises(ValueError, match="0 NaN and 1 Inf"):
        read_scan(tmp_path / "inf.h5")


def test_preprocess_rejects_bad_options():
    g = ParallelBeam(np.linspace(0, np.pi, 10, endpoint=False), (3, 32))
    scan = Scan(ball_sinogram(g), g)
    with pytest.raises(ValueError, match="rows 5 is outside"):
        preprocess(scan, rows=5)
    with pytest.raises(ValueError, match="binning must be a positive integer"):
        preprocess(scan, binning=0)
    with pytest.raises(ValueError, match="center_offset must be a number of pixels or 'auto'"):
        preprocess(scan, center_offset="middle")
    with pytest.raises(ValueError, match="crop"):
        preprocess(scan, crop=(20, 10))
