"""Tests of dip_uq.dip: the DIP reconstructor (2D regression, 3D smoke), seeding, checkpoints,
the fitted sinogram, input validation, the defaults it takes from the data and the after_step
hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import parallel_scan, small_unet

import dip_uq as du
from dip_uq.dip import DEFAULT_LR, DIP
from dip_uq.metrics import psnr
from dip_uq.noise import default_iterations, default_tv_weight, ray_transform_gain, relative_noise

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann", "hamming")


# ------------------------------------------------------------------------------------------
# reconstruction quality
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_regression_2d_dip_beats_fbp_by_3_db():
    """64x64 Shepp-Logan, 30 angles over 180°, 2 % noise. Measured on the shared 2-core CPU
    (torch 2.13, one thread): best FBP over five filters 19.34 dB (Shepp-Logan filter); DIP
    with the default γ and lr, U-Net (16, 32, 32, 32) with skips at every scale, 1000
    iterations: 23.53 dB (+4.2 dB), about 14 s. (The default budget for this scan would be
    3800 iterations, 29 dB.)"""
    A, x, y, _ = parallel_scan(64, 30)
    fbp_psnr = max(psnr(A.fbp(y, filter=f), x) for f in FILTERS)
    net = du.UNet(2, scales=4, channels=(16, 32, 32, 32), skip_channels=4, seed=0)
    rec = DIP(A, network=net, iterations=1000, progress=False, device="cpu")
    out = rec.fit(y)
    assert out.shape == (64, 64)
    assert psnr(out, x) >= fbp_psnr + 3.0


def test_3d_cone_beam_smoke():
    n = 32
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    A = du.RayTransform(
        du.Volume((n, n, n)), du.ConeBeam(angles, (n, 48), 1.5, 4.0 * n, 2.0 * n), "torch"
    )
    x = du.phantoms.shepp_logan((n, n, n))
    y = du.simulate(A, x, noise=0.02, seed=0)
    net = du.UNet(3, scales=3, channels=4, skip_channels=2, seed=0)
    rec = DIP(A, network=net, iterations=15, progress=False, device="cpu")
    out = rec.fit(y)
    assert out.shape == (n, n, n)
    assert bool(torch.isfinite(out).all())
    loss = rec.history["loss"]
    assert len(loss) == 15 and loss[-1] < 0.5 * loss[0]
    assert rec.tv_weight > 0 and rec.scale > 0


# ------------------------------------------------------------------------------------------
# determinism and checkpoints
# ------------------------------------------------------------------------------------------
def _fit(A, y, seed=0, **kwargs):
    rec = DIP(A, network=small_unet(seed=seed), seed=seed, progress=False, device="cpu", **kwargs)
    return rec, rec.fit(y)


def test_same_seed_same_result_and_global_rng_untouched():
    A, _, y, _ = parallel_scan(32, 16)
    state = torch.get_rng_state()
    rec_a, out_a = _fit(A, y, iterations=6, input="noise")
    rec_b, out_b = _fit(A, y, iterations=6, input="noise")
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(out_a, out_b)
    assert rec_a.history == rec_b.history
    _, out_c = _fit(A, y, seed=1, iterations=6, input="noise")
    assert not torch.equal(out_a, out_c)


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    A, _, y, _ = parallel_scan(32, 16)
    reference = DIP(A, network=small_unet(), iterations=12, progress=False, device="cpu")
    reference_out = reference.fit(y)

    path = tmp_path / "run" / "dip.pt"

    def interrupt(dip, iteration, record):
        if iteration == 7:  # after 8 iterations; the last checkpoint was at iteration 5
            raise KeyboardInterrupt

    first = DIP(A, small_unet(), iterations=12, checkpoint=path, checkpoint_every=5, progress=False)
    with pytest.raises(KeyboardInterrupt):
        first.fit(y, callback=interrupt)
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["dip.pt"]  # no temporary file left
    assert torch.load(path, weights_only=True)["iteration"] == 5

    resumed = DIP(
        A, small_unet(), iterations=12, checkpoint=path, checkpoint_every=5, progress=False
    )
    out = resumed.fit(y)
    assert torch.equal(out, reference_out)
    assert resumed.history == reference.history
    assert resumed.best_iteration == reference.best_iteration
    for name, value in reference.params_star.items():
        assert torch.equal(resumed.params_star[name], value), name
    for (name, a), b in zip(
        reference.network.state_dict().items(), resumed.network.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    final = torch.load(path, weights_only=True)
    assert final["iteration"] == 12

    # a finished checkpoint gives the same result without iterating again
    again = DIP(A, small_unet(), iterations=12, checkpoint=path, progress=False)
    assert torch.equal(again.fit(y), reference_out)

    # a checkpoint of other data is refused
    other = DIP(A, small_unet(), iterations=12, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="belongs to another run"):
        other.fit(y * 1.01)


# ------------------------------------------------------------------------------------------
# the θ -> image map used by the linearisation
# ------------------------------------------------------------------------------------------
def test_image_function_reproduces_the_reconstruction():
    A, _, y, _ = parallel_scan(32, 16)
    rec, out = _fit(A, y, iterations=5)
    assert torch.equal(rec.image(rec.params_star).detach(), out)
    assert torch.equal(rec.predict(), out)
    weights = {w.name: rec.params_star[w.name] for w in rec.network.conv_weights()}
    assert torch.equal(rec.image(weights).detach(), out)  # others taken from the network
    tangent = {k: torch.ones_like(v) for k, v in weights.items()}
    value, jvp_out = torch.func.jvp(rec.image, (weights,), (tangent,))
    assert value.shape == jvp_out.shape == (32, 32)
    assert torch.allclose(rec.scale * rec.network(rec.network_input)[0, 0], out)


# ------------------------------------------------------------------------------------------
# input validation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input": "fdk"}, "unknown input 'fdk'"),
        ({"iterations": 0}, "iterations must be a positive integer"),
        ({"iterations": -5}, "iterations must be a positive integer"),
        ({"iterations": 2.5}, "iterations must be a positive integer"),
        ({"lr": 0.0}, "lr must be"),
        ({"tv_weight": -1.0}, "tv_weight must be"),
        ({"seed": -1}, "seed must be"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"mixed_precision": True}, "mixed_precision=True needs a CUDA device"),
        ({"network": "unet"}, "network must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    A, _, _, _ = parallel_scan(16, 8)
    with pytest.raises(ValueError, match=message):
        DIP(A, device="cpu", **kwargs)


def test_bad_data():
    A, _, y, _ = parallel_scan(16, 8)
    rec = DIP(A, network=small_unet(), iterations=2, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"sinogram shape \(7, 16\) does not match"):
        rec.fit(y[:-1])
    with pytest.raises(ValueError, match="does not match"):
        rec.fit(y.T)
    for value in (float("nan"), float("inf")):
        bad = y.clone()
        bad[3, 4] = value
        with pytest.raises(ValueError, match="1 NaN/Inf values"):
            rec.fit(bad)
    with pytest.raises(ValueError, match="floating point"):
        rec.fit(y.long())
    with pytest.raises(ValueError, match=r"must be a dip_uq\.RayTransform"):
        DIP(object())


def test_defaults_are_set_by_fit_and_overrides_kept():
    A, _, y, sigma = parallel_scan(32, 16)
    rec = DIP(A, network=small_unet(), progress=False, device="cpu")
    assert rec.iterations is None
    rec._prepare(y)  # sets every default from the data, without fitting
    assert rec.iterations == default_iterations(relative_noise(y, rec.noise_sigma))
    assert rec.lr == DEFAULT_LR and not rec.pretrained
    assert rec.noise_sigma == pytest.approx(sigma, rel=0.15)
    assert rec.tv_weight == pytest.approx(
        default_tv_weight(rec.noise_sigma, ray_transform_gain(A), y.numel())
    )
    rec, _ = _fit(A, y, iterations=2, tv_weight=0.5, lr=3e-4, noise_sigma=1.0)
    assert (rec.tv_weight, rec.lr, rec.noise_sigma) == (0.5, 3e-4, 1.0)


def test_fit_keeps_the_checked_sinogram_on_its_device():
    A, _, y, _ = parallel_scan(16, 8)
    rec = DIP(A, network=small_unet(), iterations=2, progress=False, device="cpu")
    assert rec.y is None
    rec.fit(y.double().numpy())
    assert rec.y.dtype == torch.float32 and rec.y.device == rec.device
    assert rec.y.shape == tuple(A.geometry.sino_shape) and rec.y.is_contiguous()
    assert torch.equal(rec.y, y.float())


# ------------------------------------------------------------------------------------------
# the after_step hook (used by dip_uq.baselines.sgld)
# ------------------------------------------------------------------------------------------
def test_after_step_hook_runs_after_every_step_and_can_change_the_weights():
    A, _, y, _ = parallel_scan(16, 8)
    plain, reference = _fit(A, y, iterations=4)
    calls = []

    def record(dip, iteration):
        calls.append((iteration, len(dip.history["loss"])))

    _, out = _fit(A, y, iterations=4, after_step=record)
    assert calls == [(0, 1), (1, 2), (2, 3), (3, 4)]  # after the loss of each step
    assert torch.equal(out, reference)  # a hook that changes nothing changes nothing

    def shrink(dip, iteration):
        with torch.no_grad():
            dip.network.out.weight.mul_(0.5)

    rec, _ = _fit(A, y, iterations=4, after_step=shrink)
    assert rec.history["loss"][0] == plain.history["loss"][0]  # before the first step
    losses = zip(rec.history["loss"][1:], plain.history["loss"][1:], strict=True)
    assert all(a != b for a, b in losses)
    with pytest.raises(ValueError, match="after_step must be callable or None, got 3"):
        DIP(A, after_step=3)
