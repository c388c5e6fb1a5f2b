"""Volumes and geometries: conventions, round trips, subsets and input validation."""

import json

import numpy as np
import pytest

import dip_uq as du

ANGLES = np.linspace(0, np.pi, 7, endpoint=False)

GEOMETRIES = {
    "parallel2d": du.ParallelBeam(ANGLES, (16,), 0.8, 0.3),
    "parallel3d": du.ParallelBeam(ANGLES, (6, 16), (0.5, 0.8), (0.1, 0.3)),
    "fan": du.FanBeam(2 * ANGLES, (16,), 1.2, 40.0, 20.0, -0.2),
    "cone": du.ConeBeam(2 * ANGLES, (6, 16), 1.2, 40.0, 20.0),
    "vector3d": du.ConeBeam(2 * ANGLES, (6, 16), 1.2, 40.0, 20.0).to_vector_geometry(),
    "vector2d": du.VectorGeometry(np.tile([0, -30.0, 0, 10.0, 1.0, 0], (3, 1)), (16,), "fan"),
}


@pytest.mark.parametrize("name", GEOMETRIES)
def test_dict_round_trip_through_json(name):
    g = GEOMETRIES[name]
    restored = du.geometry_from_dict(json.loads(json.dumps(g.to_dict())))
    assert type(restored) is type(g)
    assert restored == g
    np.testing.assert_allclose(restored.vectors, g.vectors)


def test_volume_round_trip_and_coordinates():
    vol = du.Volume((4, 6, 8), voxel_size=(1.0, 0.5, 0.25), center=(0.0, 1.0, -2.0))
    assert du.geometry_from_dict(json.loads(json.dumps(vol.to_dict()))) == vol
    _, y, x = vol.coordinates()
    np.testing.assert_allclose(x, -2.0 + (np.arange(8) - 3.5) * 0.25)
    np.testing.assert_allclose(y, 1.0 + (np.arange(6) - 2.5) * 0.5)
    assert vol.extent == (4.0, 3.0, 2.0)
    assert vol != du.Volume((4, 6, 8))


def test_parametric_conventions_match_module_docstring():
    theta = 0.3
    g = du.ConeBeam([theta], (3, 5), (0.5, 2.0), src_origin=10.0, origin_det=4.0, det_offset=1.5)
    f = {k: v[0] for k, v in g.frames().items()}
    s, c = np.sin(theta), np.cos(theta)
    np.testing.assert_allclose(f["source"], 10 * np.array([s, -c, 0]))
    np.testing.assert_allclose(f["center"], 4 * np.array([-s, c, 0]) + 1.5 * np.array([c, s, 0]))
    np.testing.assert_allclose(f["u"], 2.0 * np.array([c, s, 0]))
    np.testing.assert_allclose(f["v"], [0, 0, 0.5])
    assert g.magnification == pytest.approx(1.4)
    p = du.ParallelBeam([theta], (5,))
    np.testing.assert_allclose(p.frames()["ray"][0], [-s, c])


def test_subsets_of_angles():
    g = GEOMETRIES["fan"]
    sub = g[::2]
    assert isinstance(sub, du.FanBeam) and sub.n_angles == 4
    np.testing.assert_allclose(sub.vectors, g.vectors[::2])
    assert g[3].n_angles == 1
    np.testing.assert_allclose(g[np.array([1, 5])].angles, g.angles[[1, 5]])
    assert GEOMETRIES["vector3d"][1:3] == GEOMETRIES["cone"][1:3]
    with pytest.raises(ValueError, match="selects no projection"):
        g[5:2]


def test_equality_tolerance_and_repr():
    g = GEOMETRIES["cone"]
    g2 = du.ConeBeam(2 * ANGLES + 1e-13, (6, 16), 1.2, 40.0, 20.0)
    assert g == g2
    assert g != du.ConeBeam(2 * ANGLES + 1e-3, (6, 16), 1.2, 40.0, 20.0)
    assert "ConeBeam(" in repr(g) and "src_origin=40.0" in repr(g)
    assert repr(du.Volume((3, 4), 0.5)) == "Volume(shape=(3, 4), voxel_size=0.5)"


def test_astra_dict_round_trip_including_2d_mirroring():
    for name in ("parallel3d", "cone", "fan", "parallel2d"):
        g = GEOMETRIES[name]
        back = du.geometry_from_astra(g.to_astra())
        assert back == g.to_vector_geometry(), name
    assert GEOMETRIES["fan"].to_astra()["type"] == "fanflat_vec"
    # ASTRA's parametric 3D cone equals ours with the same numbers
    astra_cone = {
        "type": "cone",
        "DetectorSpacingX": 1.2,
        "DetectorSpacingY": 1.2,
        "DetectorRowCount": 6,
        "DetectorColCount": 16,
        "ProjectionAngles": 2 * ANGLES,
        "DistanceOriginSource": 40.0,
        "DistanceOriginDetector": 20.0,
    }
    assert du.geometry_from_astra(astra_cone) == GEOMETRIES["cone"].to_vector_geometry()
    vol = du.Volume((4, 6, 8), 0.5).to_astra()
    assert (vol["GridSliceCount"], vol["GridRowCount"], vol["GridColCount"]) == (4, 6, 8)
    assert vol["option"]["WindowMinX"] == -2.0
    with pytest.raises(ValueError, match="unsupported ASTRA geometry type"):
        du.geometry_from_astra({"type": "cone_helix"})


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: du.ParallelBeam([], (8,)), "non-empty"),
        (lambda: du.ParallelBeam([0.0, np.nan], (8,)), "NaN"),
        (lambda: du.ParallelBeam([0.0], (0,)), "det_shape"),
        (lambda: du.ParallelBeam([0.0], (8,), det_spacing=-1), "det_spacing"),
        (lambda: du.ParallelBeam([0.0], (2, 3, 4)), "det_shape"),
        (lambda: du.FanBeam([0.0], (8,), 1.0, src_origin=0.0, origin_det=1.0), "src_origin"),
        (lambda: du.FanBeam([0.0], (8,), 1.0, src_origin=5.0, origin_det=-6.0), "beyond"),
        (lambda: du.ConeBeam([0.0], (8,), 1.0, 5.0, 5.0), "det_shape"),
        (lambda: du.Volume((8, -2)), "Volume shape"),
        (lambda: du.Volume((8, 2.5)), "Volume shape"),
        (lambda: du.Volume((8, 8), voxel_size=0), "voxel_size"),
        (lambda: du.Volume((8,)), "Volume shape"),
        (lambda: du.VectorGeometry(np.zeros((2, 5)), (8,)), "vectors must have shape"),
        (lambda: du.VectorGeometry(np.ones((2, 6)), (8,), kind="helix"), "kind"),
        (lambda: du.geometry_from_dict({"type": "spiral"}), "unknown geometry type"),
        (lambda: du.geometry_from_dict({"type": "parallel"}), "lacks"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(build, message):
    with pytest.raises(ValueError, match=message):
        build()
