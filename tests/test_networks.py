"""Tests of dip_uq.networks: shapes, seeding, the conv-weight list and torch.func Jacobians."""

import contextlib

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

from dip_uq import networks
from dip_uq.networks import Norm, UNet


def _narrow_unet(dim: int, norm: str = "group", seed: int = 0) -> UNet:
    """A 3-scale U-Net of 4, 8 and 8 channels, small enough for dense Jacobians."""
    return UNet(dim, scales=3, channels=(4, 8, 8), skip_channels=2, norm=norm, seed=seed)


@pytest.mark.parametrize(
    ("dim", "shape"),
    [(2, (16, 16)), (2, (50, 50)), (2, (33, 47)), (3, (16, 16, 16)), (3, (33, 33, 33))],
)
def test_output_shape_any_size(dim, shape):
    net = UNet(dim, scales=3, channels=4, in_channels=2, out_channels=3, seed=0)
    assert net(torch.randn(2, 2, *shape)).shape == (2, 3, *shape)


@pytest.mark.parametrize(("dim", "shape"), [(2, (50, 50)), (3, (33, 33, 33))])
def test_defaults(dim, shape):
    net = UNet(dim, seed=0)
    assert net.scales == (5 if dim == 2 else 4)
    assert net.skip_channels == (4, 4) + (0,) * (net.scales - 3)
    assert set(net.skip) == {"0", "1"}
    assert net(torch.randn(1, 1, *shape)).shape == (1, 1, *shape)


def test_seed_reproducible_and_global_rng_untouched():
    x = torch.randn(1, 1, 20, 20)
    state = torch.get_rng_state()
    a, b, c = _narrow_unet(2, seed=3), _narrow_unet(2, seed=3), _narrow_unet(2, seed=4)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(a(x), c(x))
    torch.manual_seed(0)
    d = _narrow_unet(2, seed=None)
    torch.manual_seed(0)
    assert torch.equal(d(x), _narrow_unet(2, seed=None)(x))


def test_conv_weights_cover_exactly_the_conv_weights():
    net = UNet(3, scales=4, channels=(4, 8, 8, 8), skip_channels=(2, 0, 3), norm="group")
    records = net.conv_weights()
    params = dict(net.named_parameters())
    expected = [
        f"{name}.weight" for name, module in net.named_modules() if isinstance(module, nn.Conv3d)
    ]
    assert [r.name for r in records] == expected == [n for n in params if n in expected]
    assert all("bias" not in r.name for r in records)
    norm_params = {
        f"{name}.{p}"
        for name, m in net.named_modules()
        if isinstance(m, nn.GroupNorm)
        for p, _ in m.named_parameters()
    }
    assert len(norm_params) == 2 * sum(isinstance(m, nn.GroupNorm) for m in net.modules())
    assert not norm_params & {r.name for r in records}
    for r in records:
        assert r.shape == tuple(params[r.name].shape)
        assert r.numel == params[r.name].numel()
        assert r.kernel_size == ((1, 1, 1) if r.block.startswith(("skip", "out")) else (3, 3, 3))
    blocks = list(dict.fromkeys(r.block for r in records))
    assert blocks == "down_0 down_1 down_2 down_3 skip_0 skip_2 up_0 up_1 up_2 out".split()


# torch's first forward-mode AD call scripts its decompositions and warns about torch.jit.
@pytest.mark.parametrize(("dim", "norm"), [(2, "group"), (2, "none"), (3, "group")])
def test_jvp_vjp_adjoint_and_finite_difference(dim, norm):
    net = _narrow_unet(dim, norm).double()
    shape = (16, 16) if dim == 2 else (13, 13, 13)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, *shape, generator=gen, dtype=torch.float64)
    params = dict(net.named_parameters())
    weights = {r.name: params[r.name].detach() for r in net.conv_weights()}

    def f(w):
        return functional_call(net, w, (x,))

    v = {
        k: torch.randn(w.shape, generator=gen, dtype=w.dtype) * w.std() for k, w in weights.items()
    }
    y, jv = jvp(f, (weights,), (v,))
    u = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    _, pullback = vjp(f, weights)
    (jtu,) = pullback(u)
    lhs = (jv * u).sum()
    rhs = sum((v[k] * jtu[k]).sum() for k in weights)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=0)

    # A small step: a pre-activation crossing a LeakyReLU kink spoils the difference quotient
    # (1e-6 already does at 13³ in 3D); the float64 round-off error at 1e-7 is ~1e-9.
    eps = 1e-7
    plus = f({k: w + eps * v[k] for k, w in weights.items()})
    minus = f({k: w - eps * v[k] for k, w in weights.items()})
    fd = (plus - minus) / (2 * eps)
    assert (fd - jv).norm() / jv.norm() < 1e-6
    assert torch.equal(y, net(x))  # functional_call left the module's own weights in place


def test_batched_jvp_vjp_under_vmap():
    net = _narrow_unet(2).double()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 16, 16, generator=gen, dtype=torch.float64)
    params = dict(net.named_parameters())
    weights = {r.name: params[r.name].detach() for r in net.conv_weights()}

    def f(w):
        return functional_call(net, w, (x,))

    tangents = {
        k: torch.randn(3, *w.shape, generator=gen, dtype=w.dtype) for k, w in weights.items()
    }
    batched = vmap(lambda t: jvp(f, (weights,), (t,))[1])(tangents)
    for i in range(3):
        single = jvp(f, (weights,), ({k: t[i] for k, t in tangents.items()},))[1]
        torch.testing.assert_close(batched[i], single)
    _, pullback = vjp(f, weights)
    cotangents = torch.randn(3, *x.shape, generator=gen, dtype=x.dtype)
    (batched,) = vmap(pullback)(cotangents)
    for i in range(3):
        (single,) = pullback(cotangents[i])
        for k in weights:
            torch.testing.assert_close(batched[k][i], single[k])


def test_norm_accepts_enum_and_rejects_unknown():
    assert UNet(2, scales=2, channels=4, norm=Norm.NONE).norm is Norm.NONE
    assert not any(isinstance(m, nn.GroupNorm) for m in UNet(2, scales=2, norm="none").modules())
    with pytest.raises(ValueError, match="norm must be one of 'group', 'none', got 'batch'"):
        UNet(2, norm="batch")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 4}, "dim must be 2 or 3, got 4"),
        ({"scales": 0}, "scales must be a positive integer, got 0"),
        ({"scales": 3, "channels": (8, 8)}, r"channels must be .* sequence of 3 .* got \(8, 8\)"),
        ({"scales": 3, "skip_channels": (4, 4, 4)}, "skip_channels must be .* sequence of 2"),
        ({"channels": 0}, "channels must be an integer >= 1"),
        ({"out_channels": 0}, "out_channels must be a positive integer, got 0"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)


def test_too_small_input_and_default_for():
    net = UNet(2, scales=5, channels=4)
    with pytest.raises(ValueError, match=r"too small .* 5 scales.*at most 3 scales"):
        net(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="input must be"):
        net(torch.randn(1, 16, 16))
    assert UNet.default_for((16, 16), channels=4).scales == 3
    assert UNet.default_for((501, 501), channels=4).scales == 5
    assert UNet.default_for((32, 32), scales=2, channels=4).scales == 2  # given: kept
    small = UNet.default_for((16, 20, 40), channels=4, seed=0)
    assert (small.dim, small.scales) == (3, 3)
    assert small(torch.randn(1, 1, 16, 20, 40)).shape == (1, 1, 16, 20, 40)
    with pytest.raises(ValueError, match="below 4 pixels"):
        UNet.default_for((3, 64))


@pytest.mark.parametrize(("dim", "shape"), [(2, (20, 20)), (3, (16, 16, 16))])
def test_dropout_adds_no_parameters_and_zero_changes_nothing(dim, shape):
    plain = _narrow_unet(dim, seed=3)
    zero = UNet(dim, scales=3, channels=(4, 8, 8), skip_channels=2, seed=3, dropout=0.0)
    drop = UNet(dim, scales=3, channels=(4, 8, 8), skip_channels=2, seed=3, dropout=0.3)
    assert str(zero) == str(plain)  # the same modules, repr included
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in zero.modules())
    layers = [m for m in drop.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    # after every convolution but the output one
    assert len(layers) == len(drop.conv_weights()) - 1
    assert all(type(m) is (nn.Dropout2d if dim == 2 else nn.Dropout3d) for m in layers)
    assert all(m.p == 0.3 for m in layers) and "dropout=0.3" in repr(drop)
    reference = plain.state_dict()
    for net in (zero, drop):  # same names, same seeded weights: state dicts load across rates
        state = net.state_dict()
        assert list(state) == list(reference)
        assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert drop.conv_weights() == plain.conv_weights()
    x = torch.randn(2, 1, *shape)
    assert torch.equal(zero(x), plain(x))
    torch.manual_seed(0)
    first, second = drop(x), drop(x)  # training mode: fresh masks every call
    assert not torch.equal(first, second)
    drop.eval()
    assert torch.equal(drop(x), plain(x))


@pytest.mark.parametrize("dropout", [-0.1, 1.0, True, "0.1"])
def test_invalid_dropout(dropout):
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
        UNet(2, scales=2, channels=4, dropout=dropout)


@pytest.mark.parametrize("stride,kernel,bias", [(1, 3, True), (1, 1, False), (2, 3, True)])
def test_onednn_convolution_matches_pytorch(stride, kernel, bias):
    """The oneDNN convolution of one image gives PyTorch's output and gradients."""
    gen = torch.Generator().manual_seed(0)
    conv = networks._Conv3d(5, 7, kernel, stride=stride, padding=kernel // 2, bias=bias)
    x = torch.randn(1, 5, 9, 10, 11, generator=gen, requires_grad=True)
    weights = torch.randn(conv(x).shape, generator=gen)
    results = []
    for fast in (False, True):
        x.grad, conv.weight.grad = None, None
        if bias:
            conv.bias.grad = None
        with networks.onednn_convolutions() if fast else contextlib.nullcontext():
            out = conv(x)
        (out * weights).sum().backward()
        grads = [x.grad, conv.weight.grad] + ([conv.bias.grad] if bias else [])
        results.append([out.detach(), *grads])
    for ref, got in zip(*results, strict=True):
        assert got.shape == ref.shape
        assert float((got - ref).norm() / ref.norm()) < 1e-5


def test_onednn_convolutions_run_in_the_unet_step_only_where_asked(monkeypatch):
    """Inside the block the 3D U-Net's single-image float32 convolutions take oneDNN and its
    step equals PyTorch's; outside it, in float64 and in 2D they do not take it."""
    calls = []
    apply = networks._OneDNNConv3d.apply
    monkeypatch.setattr(networks._OneDNNConv3d, "apply", lambda *a: calls.append(1) or apply(*a))

    def step(net, z, fast):
        net.zero_grad(set_to_none=True)
        with networks.onednn_convolutions() if fast else contextlib.nullcontext():
            out = net(z)
        out.square().mean().backward()
        return out.detach(), {n: p.grad for n, p in net.named_parameters()}

    net = UNet.default_for((16, 16, 16), channels=8, seed=3)
    z = torch.randn(1, net.in_channels, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = step(net, z, fast=False)
    assert not calls
    out, grads = step(net, z, fast=True)
    n_convs = sum(isinstance(m, nn.Conv3d) for m in net.modules())
    assert len(calls) == n_convs
    assert float((out - ref_out).norm() / ref_out.norm()) < 1e-5
    for name, grad in grads.items():
        assert float((grad - ref_grads[name]).norm() / ref_grads[name].norm()) < 1e-4, name
    calls.clear()
    step(net.double(), z.double(), fast=True)
    net2d = UNet.default_for((16, 16), channels=8, seed=3)
    step(net2d, torch.randn(1, net2d.in_channels, 16, 16), fast=True)
    assert not calls
