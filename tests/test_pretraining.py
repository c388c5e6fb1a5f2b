"""Tests of dip_uq.pretraining: pretraining the U-Net for the DIP."""

from __future__ import annotations

import pytest
import torch
from helpers import parallel_scan, small_unet

import dip_uq as du
from dip_uq.dip import DEFAULT_LR, DIP
from dip_uq.pretraining import pretrain


def test_pretrain_returns_a_network_dip_starts_from():
    A, _, y, _ = parallel_scan(16, 8)
    start = small_unet()
    net = pretrain(A, n_images=4, epochs=2, network=start, batch_size=2, progress=False)
    assert isinstance(net, du.UNet)
    assert net.pretraining["n_images"] == 4
    assert not torch.equal(net.out.weight, start.out.weight)  # trained, and the input kept
    assert getattr(start, "pretraining", None) is None
    rec = DIP(A, network=net, progress=False, device="cpu")
    assert rec.pretrained and rec.lr == DEFAULT_LR
    rec = DIP(A, network=net, iterations=2, progress=False, device="cpu")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rec.fit(y)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # not modified


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_images": 0}, "n_images must be a positive integer"),
        ({"epochs": 1.5}, "epochs must be a positive integer"),
        ({"batch_size": -2}, "batch_size must be a positive integer"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"noise": -0.1}, "noise must be a finite number >= 0"),
        ({"noise": (0.05, 0.01)}, r"noise range must satisfy 0 <= low <= high"),
        ({"noise": "low"}, r"noise must be a number or \(low, high\)"),
    ],
)
def test_pretrain_bad_arguments(kwargs, message):
    A, _, _, _ = parallel_scan(16, 8)
    with pytest.raises(ValueError, match=message):
        pretrain(A, progress=False, **kwargs)
