"""The linearised network: its Jacobian products run in full float32."""

import torch

from dip_uq.laplace.linearised import LinearisedNetwork


def test_jacobian_products_run_convolutions_without_tf32(laplace_problem):
    """torch's default TF32 convolutions on GPUs (relative error ~1e-3) would stall the
    sampler's CG; the products switch them off and restore the setting afterwards."""
    parts, _ = laplace_problem
    conv = torch.backends.cudnn.conv
    saved, conv.fp32_precision = conv.fp32_precision, "tf32"  # torch's default
    seen = []

    def image_fn(p):
        seen.append(conv.fp32_precision)
        return parts["image_fn"](p)

    try:
        net = LinearisedNetwork(image_fn, parts["params"], parts["weights"])
        seen.clear()
        image = net.jvp(torch.ones(2, net.n_params))
        net.vjp(image)
        assert seen and set(seen) == {"ieee"}
        assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision = saved
