"""Moments merged exactly, and accumulated over checkpointed batches that resume."""

import pytest
import torch

from dip_uq.laplace import LinearisedLaplace, Moments, SolverConfig


def test_moments_merge_exactly():
    g = torch.Generator().manual_seed(0)
    samples = 0.1 + torch.randn(11, 3, 4, generator=g, dtype=torch.float64)
    merged = Moments.of(samples[:2]).merge(Moments.of(samples[2:7])).merge(Moments.of(samples[7:]))
    direct = Moments.of(samples)
    assert merged.count == 11
    torch.testing.assert_close(merged.mean, samples.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.m2, direct.m2, rtol=1e-12, atol=1e-12)
    # the variance is the second moment about 0, the samples' known mean
    torch.testing.assert_close(merged.variance, samples.square().mean(0), rtol=1e-12, atol=0)
    zeros = torch.zeros(3, 4, dtype=torch.float64)
    empty = Moments(0, zeros, zeros)
    assert empty.merge(direct) is direct and direct.merge(empty) is direct


def _counting(lap, fail_at=None):
    """Record the ``start`` of every ``lap.sample_weights`` call; raise once, on call number
    ``fail_at`` (a crash)."""
    calls = []
    original = lap.sample_weights

    def wrapped(*args, **kwargs):
        nonlocal fail_at
        calls.append(kwargs.get("start"))
        if len(calls) == fail_at:
            fail_at = None
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    lap.sample_weights = wrapped
    return calls


def test_moments_in_batches_resume_from_a_checkpoint(laplace_problem, tmp_path):
    parts, noise_variance = laplace_problem
    lap = LinearisedLaplace(
        **parts,
        noise_variance=100 * noise_variance,
        solver=SolverConfig(iterations=300, tolerance=1e-3),
    )
    folder = tmp_path / "batches"
    calls = _counting(lap, fail_at=2)
    with pytest.raises(KeyboardInterrupt):  # stopped while solving the second batch
        lap.moments(4, batch=2, checkpoint=folder, keep_samples=True)
    assert [p.name for p in folder.iterdir()] == ["moments-0000000-0000002.pt"]
    calls.clear()
    resumed = lap.moments(4, batch=2, checkpoint=folder, keep_samples=True)
    assert calls == [2]  # only the unfinished batch
    assert resumed.count == 4 and resumed.indices == range(4)
    # the same moments as a run without interruption, and the same as its own samples'
    uninterrupted = lap.moments(4, batch=2)
    torch.testing.assert_close(resumed.mean, uninterrupted.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(resumed.m2, uninterrupted.m2, rtol=1e-12, atol=0)
    torch.testing.assert_close(resumed.std, Moments.of(resumed.samples).std)
    # a finished run is read back, not solved again
    calls.clear()
    std = lap.std(4, batch=2, checkpoint=folder)
    assert not calls and torch.equal(std, resumed.std.float())
    # one batch of 4 gives the same samples, bit for bit (see dip_uq.laplace.posterior)
    assert torch.equal(resumed.samples, lap.sample(4))
    # checkpoints of other hyperparameters are refused, not mixed in
    lap.noise_variance *= 2
    with pytest.raises(ValueError, match=r"belongs to another run \(noise_variance: "):
        lap.moments(4, batch=2, checkpoint=folder)
