"""Tests of dip_uq.simulation: Gaussian and Poisson noise, reproducibility, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dip_uq.geometry import ConeBeam, ParallelBeam, Volume
from dip_uq.phantoms import shepp_logan
from dip_uq.projector import RayTransform
from dip_uq.simulation import DEFAULT_NOISE, noise_sigma, simulate

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def parallel_2d(n: int = 64, n_angles: int = 128, device: str = "cpu") -> RayTransform:
    """Torch-backend ray transform of a [-1, 1]^2 image, detector 1.5x as wide as the image."""
    volume = Volume((n, n), voxel_size=2 / n)
    angles = np.linspace(0, np.pi, n_angles, endpoint=False)
    det = 3 * n // 2
    return RayTransform(volume, ParallelBeam(angles, (det,), det_spacing=2 / n), "torch").to(device)


class Constant(torch.nn.Module):
    """A stand-in operator whose sinogram is ``value`` in every bin (ignores the image)."""

    def __init__(self, value: float, sino_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.value, self.sino_shape = value, sino_shape
        self.volume = Volume((4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-2]
        return torch.full((*lead, *self.sino_shape), self.value, dtype=x.dtype, device=x.device)


@pytest.fixture(scope="module")
def A() -> RayTransform:
    return parallel_2d()


@pytest.fixture(scope="module")
def phantom() -> torch.Tensor:
    return shepp_logan((64, 64))


# --------------------------------------------------------------------------------------------
# Gaussian mode
# --------------------------------------------------------------------------------------------
def test_gaussian_noise_has_the_stated_std(A: RayTransform, phantom: torch.Tensor) -> None:
    clean = A(phantom)
    y, sigma = simulate(A, phantom, 0.05, seed=1, return_sigma=True)
    assert y.shape == clean.shape == (128, 96) and y.dtype == clean.dtype
    assert sigma.shape == () and float(sigma) > 0
    assert float(sigma) == pytest.approx(0.05 * float(clean.abs().mean()), rel=1e-6)
    assert float(sigma) == pytest.approx(float(noise_sigma(clean, 0.05)), rel=1e-6)
    residual = (y - clean).double()
    m = residual.numel()
    assert float(residual.std()) == pytest.approx(float(sigma), rel=0.03)
    assert abs(float(residual.mean())) < 4 * float(sigma) / math.sqrt(m)
    # residuals are white: neighbouring bins uncorrelated
    r = residual / residual.std()
    assert abs(float((r[:, 1:] * r[:, :-1]).mean())) < 0.05


def test_default_noise_level(A: RayTransform, phantom: torch.Tensor) -> None:
    _, sigma = simulate(A, phantom, return_sigma=True)
    assert float(sigma) == pytest.approx(DEFAULT_NOISE * float(A(phantom).abs().mean()), rel=1e-6)


def test_zero_noise_returns_the_clean_sinogram(A: RayTransform, phantom: torch.Tensor) -> None:
    torch.testing.assert_close(simulate(A, phantom, 0.0), A(phantom), rtol=0, atol=0)


def test_same_seed_same_data_other_seed_other_data(A: RayTransform, phantom: torch.Tensor) -> None:
    y1 = simulate(A, phantom, seed=3)
    assert torch.equal(y1, simulate(A, phantom, seed=3))
    y2 = simulate(A, phantom, seed=4)
    assert not torch.equal(y1, y2)
    clean = A(phantom)
    corr = torch.corrcoef(torch.stack([(y1 - clean).flatten(), (y2 - clean).flatten()]))[0, 1]
    assert abs(float(corr)) < 0.05
    p1 = simulate(A, phantom, photons=1e4, seed=3)
    assert torch.equal(p1, simulate(A, phantom, photons=1e4, seed=3))
    assert not torch.equal(p1, simulate(A, phantom, photons=1e4, seed=4))


def test_global_rng_untouched(A: RayTransform, phantom: torch.Tensor) -> None:
    state = torch.get_rng_state()
    simulate(A, phantom, seed=5)
    simulate(A, phantom, photons=100.0, seed=5)
    assert torch.equal(state, torch.get_rng_state())


def test_batches_get_their_own_sigma(A: RayTransform, phantom: torch.Tensor) -> None:
    scale = torch.tensor([1.0, 2.0, 4.0])
    x = phantom * scale[:, None, None]
    y, sigma = simulate(A, x, 0.1, seed=2, return_sigma=True)
    clean = A(x)
    assert y.shape == (3, 128, 96) and sigma.shape == (3,)
    torch.testing.assert_close(sigma, 0.1 * clean.abs().mean(dim=(1, 2)))
    torch.testing.assert_close(sigma / sigma[0], scale)
    residual = y - clean
    torch.testing.assert_close(residual.std(dim=(1, 2)), sigma, rtol=0.03, atol=0)
    # independent noise per batch item
    assert not torch.allclose(residual[0] / sigma[0], residual[1] / sigma[1])
    # two batch axes
    y4 = simulate(A, x.reshape(3, 1, 64, 64).expand(3, 2, 64, 64), 0.1)
    assert y4.shape == (3, 2, 128, 96)


def test_gradients_are_not_tracked(A: RayTransform, phantom: torch.Tensor) -> None:
    x = phantom.clone().requires_grad_(True)
    y = simulate(A, x)
    assert not y.requires_grad


def test_3d_cone_beam() -> None:
    volume = Volume((12, 12, 12), voxel_size=2 / 12)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    A3 = RayTransform(volume, ConeBeam(angles, (10, 16), 0.3, 4.0, 2.0), "torch")
    x = shepp_logan((12, 12, 12))
    y, sigma = simulate(A3, x, 0.1, seed=0, return_sigma=True)
    assert y.shape == (16, 10, 16)
    assert float(sigma) == pytest.approx(0.1 * float(A3(x).abs().mean()), rel=1e-6)
    yp = simulate(A3, x, photons=500.0, seed=0)
    assert yp.shape == (16, 10, 16) and bool(torch.isfinite(yp).all())


def test_noise_sigma_function() -> None:
    clean = torch.tensor([[1.0, -3.0], [2.0, 2.0]])
    torch.testing.assert_close(noise_sigma(clean, 0.5), torch.tensor(1.0))
    torch.testing.assert_close(noise_sigma(clean, 0.5, sino_ndim=1), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="noise"):
        noise_sigma(clean, -1.0)
    with pytest.raises(ValueError, match="sino_ndim"):
        noise_sigma(clean, 0.1, sino_ndim=3)


# --------------------------------------------------------------------------------------------
# Poisson mode
# --------------------------------------------------------------------------------------------
def test_poisson_variance_on_a_constant_sinogram() -> None:
    line, photons = 1.5, 1000.0
    op = Constant(line, (200, 500))
    y, std = simulate(op, torch.zeros(4, 4), photons=photons, seed=0, return_sigma=True)
    expected_var = math.exp(line) / photons  # counts ~ Poisson(I0 e^{-Ax}), Var ≈ e^{Ax}/I0
    assert float(y.double().var()) == pytest.approx(expected_var, rel=0.03)
    assert float(y.double().mean()) == pytest.approx(line, abs=0.01)  # bias ~ 1/(2 I0 e^{-Ax})
    torch.testing.assert_close(std, torch.full((200, 500), math.sqrt(expected_var)))
    # counts are integers: y takes only values -log(k / I0)
    counts = photons * torch.exp(-y.double())
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-3)


def test_poisson_variance_per_bin_with_the_ray_transform() -> None:
    A = parallel_2d(16, 8)
    x = 0.5 * shepp_logan((16, 16))
    photons = 2000.0
    clean = A(x)
    y = simulate(A, x.expand(200, 16, 16), photons=photons, seed=1)
    ratio = y.double().var(dim=0) / (torch.exp(clean.double()) / photons)
    assert float(ratio.mean()) == pytest.approx(1.0, rel=0.05)
    torch.testing.assert_close(y.double().mean(dim=0), clean.double(), rtol=0, atol=0.01)


def test_poisson_zero_counts_are_clipped_to_one_photon() -> None:
    photons = 100.0
    y = simulate(Constant(30.0, (50, 20)), torch.zeros(4, 4), photons=photons, seed=0)
    # e^{-30} * 100 ~ 1e-11 expected photons: every bin counts 0, clipped to 1 photon
    assert bool(torch.isfinite(y).all())
    torch.testing.assert_close(y, torch.full((50, 20), math.log(photons)))


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise": -0.1}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"noise": "0.1"}, "noise"),
        ({"photons": 0.0}, "photons"),
        ({"photons": -10.0}, "photons"),
        ({"photons": float("inf")}, "photons"),
        ({"noise": 0.05, "photons": 100.0}, "not both"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments(A: RayTransform, phantom: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        simulate(A, phantom, **kwargs)


def test_bad_images(A: RayTransform, phantom: torch.Tensor) -> None:
    bad = phantom.clone()
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        simulate(A, bad)
    bad[3, 4] = float("inf")
    with pytest.raises(ValueError, match="Inf"):
        simulate(A, bad)
    with pytest.raises(ValueError, match=r"torch\.Tensor"):
        simulate(A, phantom.numpy())
    with pytest.raises(ValueError, match="floating-point"):
        simulate(A, torch.ones(64, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        simulate(A, torch.ones(32, 64))


@pytest.mark.gpu
@cuda
def test_simulate_on_cuda() -> None:
    A = parallel_2d(device="cuda")
    x = shepp_logan((64, 64), device="cuda")
    y, sigma = simulate(A, x, 0.05, seed=1, return_sigma=True)
    assert y.device.type == "cuda" and sigma.device.type == "cuda"
    assert torch.equal(y, simulate(A, x, 0.05, seed=1))
    assert not torch.equal(y, simulate(A, x, 0.05, seed=2))
    assert float((y - A(x)).std()) == pytest.approx(float(sigma), rel=0.03)
    yp = simulate(A, x, photons=1e3, seed=1)
    assert yp.device.type == "cuda" and torch.equal(yp, simulate(A, x, photons=1e3, seed=1))
