"""RayTransform with the pure-PyTorch backend: adjointness, analytic line integrals,
autograd/torch.func wiring, chunking and input validation."""

import math

import numpy as np
import pytest
import torch

import dip_uq as du
from dip_uq.projector.astra_backend import astra_importable

ANGLES = np.linspace(0, np.pi, 9, endpoint=False) + 0.1

CASES = {
    "parallel2d": (du.Volume((20, 24), 0.7, (1.0, -0.5)), du.ParallelBeam(ANGLES, (33,), 0.9, 0.3)),
    "fan": (du.Volume((20, 24), 0.7), du.FanBeam(2 * ANGLES, (40,), 1.1, 30.0, 20.0, 0.5)),
    "parallel3d": (
        du.Volume((10, 12, 14), (1.0, 0.8, 0.9)),
        du.ParallelBeam(ANGLES, (12, 20), (1.0, 1.2), (0.5, 0.3)),
    ),
    "cone": (du.Volume((10, 12, 14), 0.8), du.ConeBeam(2 * ANGLES, (14, 20), 1.3, 25.0, 15.0)),
    "cone-source-inside-box": (
        du.Volume((10, 12, 14), 0.8),
        du.ConeBeam(2 * ANGLES, (14, 20), 1.3, 5.0, 15.0),
    ),
    "vector2d": (
        du.Volume((16, 16)),
        du.VectorGeometry(
            [[0, -40, 0, 20, 1, 0], [40, 0, -20, 0, 0, 1.2], [-30, 30, 15, -15, 0.7, 0.7]],
            (24,),
            kind="fan",
        ),
    ),
}


def operator(name, **options):
    volume, geometry = CASES[name]
    return du.RayTransform(volume, geometry, backend="torch", **options)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_adjoint_identity(name, batch, dtype, tolerance):
    A = operator(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*batch, *A.domain_shape, generator=g, dtype=dtype)
    y = torch.randn(*batch, *A.range_shape, generator=g, dtype=dtype)
    ax, aty = A(x), A.adjoint(y)
    assert ax.shape == (*batch, *A.range_shape) and aty.shape == (*batch, *A.domain_shape)
    lhs, rhs = (ax * y).sum(), (x * aty).sum()
    assert abs(lhs - rhs) / abs(lhs) < tolerance


def gaussian(volume, center, width):
    """An isotropic Gaussian blob sampled at the voxel centres (array order)."""
    axes = np.meshgrid(*volume.coordinates(), indexing="ij")
    r2 = sum((a - c) ** 2 for a, c in zip(axes, center, strict=True))
    return torch.tensor(np.exp(-r2 / (2 * width**2)))


def gaussian_line_integrals(geometry, center_xyz, width):
    """Exact line integrals of the blob: sqrt(2π)·w·exp(-d²/2w²), d = distance ray–centre."""
    f = geometry.frames()
    det = geometry.det_shape
    cols = np.arange(det[-1]) - (det[-1] - 1) / 2
    pixels = f["center"][:, None, :] + cols[None, :, None] * f["u"][:, None, :]
    if geometry.ndim == 3:
        rows = np.arange(det[0]) - (det[0] - 1) / 2
        pixels = pixels[:, None] + rows[None, :, None, None] * f["v"][:, None, None, :]
    if geometry.kind == "parallel":
        direction = f["ray"].reshape(-1, *(1,) * (geometry.ndim - 1), geometry.ndim)
        direction = np.broadcast_to(direction, pixels.shape)
    else:
        direction = pixels - f["source"].reshape(-1, *(1,) * (geometry.ndim - 1), geometry.ndim)
    direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    offset = pixels - np.asarray(center_xyz)
    along = (offset * direction).sum(-1, keepdims=True)
    d2 = (np.linalg.norm(offset - along * direction, axis=-1)) ** 2
    return math.sqrt(2 * math.pi) * width * np.exp(-d2 / (2 * width**2))


@pytest.mark.parametrize(
    "volume, geometry",
    [
        (du.Volume((64, 64), 0.5), du.ParallelBeam(ANGLES, (48,), 0.9, 0.7)),
        (du.Volume((64, 64), 0.5), du.FanBeam(2 * ANGLES, (64,), 0.8, 40.0, 30.0, -1.0)),
        (du.Volume((36, 40, 40), 0.5), du.ParallelBeam(ANGLES, (30, 40), (0.7, 0.6), (0.5, 1))),
        (du.Volume((36, 40, 40), 0.5), du.ConeBeam(2 * ANGLES, (40, 48), 0.7, 30.0, 20.0)),
    ],
    ids=["parallel2d", "fan", "parallel3d", "cone"],
)
def test_forward_matches_exact_line_integrals_of_an_off_centre_blob(volume, geometry):
    """Checks units (physical lengths), orientation (y grows with the row index) and every
    detector convention at once: the blob sits off-centre in every axis."""
    center = (2.0, -3.0) if volume.ndim == 2 else (-1.5, 2.0, -3.0)  # array order
    width = 2.5
    x = gaussian(volume, center, width)
    expected = gaussian_line_integrals(geometry, center[::-1], width)
    result = du.RayTransform(volume, geometry, backend="torch", step=0.5)(x).numpy()
    error = np.linalg.norm(result - expected) / np.linalg.norm(expected)
    assert error < 1e-2, error  # measured 0.3% (2D), 0.6% (3D): the blob on the grid


def test_constant_image_gives_chord_lengths():
    A = du.RayTransform(du.Volume((8, 8)), du.ParallelBeam(np.zeros(1), (8,)), "torch")
    np.testing.assert_allclose(A(torch.ones(8, 8)).numpy(), 8.0, rtol=1e-6)


def test_chunking_and_cache_do_not_change_results():
    reference = operator("cone")
    x = torch.randn(3, *reference.domain_shape, dtype=torch.float64)
    y = torch.randn(3, *reference.range_shape, dtype=torch.float64)
    small = operator("cone", memory_budget=1, cache_budget=0)  # one projection per chunk
    assert small.impl._chunk == 1
    torch.testing.assert_close(small(x), reference(x))
    torch.testing.assert_close(small.adjoint(y), reference.adjoint(y))
    # a second call reuses the cached sample points and gives identical results
    torch.testing.assert_close(reference(x), reference(x), rtol=0, atol=0)


def test_autograd_and_torch_func_use_the_adjoint():
    A = operator("fan")
    x = torch.randn(A.domain_shape, dtype=torch.float64, requires_grad=True)
    y = torch.randn(A.range_shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad((A(x) * y).sum(), x)
    torch.testing.assert_close(grad, A.adjoint(y))
    _, vjp = torch.func.vjp(A, x.detach())
    torch.testing.assert_close(vjp(y)[0], A.adjoint(y))
    v = torch.randn_like(x)
    _, tangent = torch.func.jvp(A, (x.detach(),), (v,))
    torch.testing.assert_close(tangent, A(v))
    stack = torch.randn(4, *A.domain_shape, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(A)(stack), A(stack))
    torch.testing.assert_close(torch.func.vmap(A, in_dims=1)(stack.movedim(0, 1)), A(stack))


def test_gradcheck_first_and_second_order():
    A = du.RayTransform(du.Volume((5, 6)), du.FanBeam(ANGLES[:3], (7,), 1.0, 20.0, 10.0), "torch")
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: A(v) ** 2, (x,))
    assert torch.autograd.gradgradcheck(lambda v: A(v) ** 2, (x,))
    y = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(A.adjoint, (y,))


def test_backend_choice_is_visible():
    volume, geometry = CASES["parallel2d"]
    assert du.RayTransform(volume, geometry, backend="torch").backend == "torch"
    auto = du.RayTransform(volume, geometry, backend="auto")
    assert auto.backend in ("torch", "astra")
    if not torch.cuda.is_available():
        # 2D parallel beam: ASTRA's exact CPU pair where it imports; fan beam: torch
        assert auto.backend == ("astra" if astra_importable() else "torch")
        fan = du.FanBeam(ANGLES[:3], (7,), 1.0, 20.0, 10.0)
        assert du.RayTransform(du.Volume((5, 6)), fan, backend="auto").backend == "torch"
    assert "backend='torch'" in repr(du.RayTransform(volume, geometry, backend="torch"))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda A: A(torch.zeros(20, 25)), r"expected \(\.\.\., 20, 24\)"),
        (lambda A: A(torch.zeros(20, 24, dtype=torch.int64)), "float32 or float64"),
        (lambda A: A(torch.full((20, 24), math.nan)), "NaN or Inf"),
        (lambda A: A(np.zeros((20, 24), np.float32)), "torch.Tensor"),
        (lambda A: A.adjoint(torch.zeros(9, 34)), r"expected \(\.\.\., 9, 33\)"),
        (lambda A: A.adjoint(torch.full((9, 33), math.inf)), "NaN or Inf"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(operator("parallel2d"))


def test_bad_construction_raises_value_error():
    volume2d, geometry2d = CASES["parallel2d"]
    volume3d, _ = CASES["cone"]
    with pytest.raises(ValueError, match="needs a 3D geometry"):
        du.RayTransform(volume3d, geometry2d)
    with pytest.raises(ValueError, match="unknown backend 'gpu'; known backends"):
        du.RayTransform(volume2d, geometry2d, backend="gpu")
    with pytest.raises(ValueError, match="step"):
        du.RayTransform(volume2d, geometry2d, backend="torch", step=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["parallel2d", "cone"])
def test_cuda_matches_cpu(name):
    A = operator(name)
    x = torch.randn(2, *A.domain_shape)
    y = torch.randn(2, *A.range_shape)
    torch.testing.assert_close(A(x.cuda()).cpu(), A(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(A.adjoint(y.cuda()).cpu(), A.adjoint(y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["fan", "cone"])
def test_stored_matrix_is_the_ray_marched_operator(kind):
    """On the CPU the operator is stored as sparse A and Aᵀ; they must be ray marching's
    operator (to float64 rounding) and fall back to it when over the budget."""
    marched = operator(kind, matrix_budget=0)
    stored = operator(kind)
    x = torch.randn(3, *marched.domain_shape, dtype=torch.float64)
    y = torch.randn(3, *marched.range_shape, dtype=torch.float64)
    torch.testing.assert_close(stored(x), marched(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(stored.adjoint(y), marched.adjoint(y), rtol=1e-10, atol=1e-10)
    assert stored.impl._matrices[torch.float64] is not None
    assert marched.impl._matrices[torch.float64] is None
    over_budget = operator(kind, matrix_budget=1)
    torch.testing.assert_close(over_budget(x), marched(x))
    assert over_budget.impl._matrices[torch.float64] is None
