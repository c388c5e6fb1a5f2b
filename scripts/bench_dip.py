"""Benchmark the deep image prior: reconstruction quality, speed per iteration, pretraining, peer.

Four parts (not timed tests; run by hand, results go to the terminal and optionally to a
Markdown and a JSON file):

* ``quality``: PSNR / SSIM of FBP (best of five filters), the TV-regularised PDHG baseline
  (:func:`dip_uq.tv.tv_reconstruct`, with the default γ rule and with the best γ of a small
  grid, an oracle that knows the truth) and DIP (default γ, lr and network unless given) on
  Shepp-Logan phantoms: 2D 128² parallel beam and 3D 64³ cone beam, sparse-view (30-60
  angles) and limited-angle (90°) scans at 1-5 % Gaussian noise.
* ``speed``: seconds per DIP iteration next to the raw cost of its parts measured in the same
  process: one U-Net forward+backward as the DIP runs it (inside
  :func:`dip_uq.networks.onednn_convolutions`), one forward projection (FP) and one
  back-projection (BP). ``overhead = DIP / (net + FP + BP) - 1`` (goal: <= 10 %). Beside it the
  same U-Net step with PyTorch's own choice of convolution (``net, torch's choice``) and the
  ratio of the two. CPU sizes: 2D 128², 3D 64³; ``--sizes laptop``: the 3D volumes of the demo
  and the suites (16³, 24³, 32³, cone beam); ``--sizes gpu``: 3D 128³ and 256³.
* ``pretrain``: DIP from scratch against DIP started from
  :func:`dip_uq.pretraining.pretrain` weights on the same scan: PSNR against iterations, and
  iterations/time to reach a target PSNR.
* ``peer``: dip-uq's default DIP against deepinv's ``DeepImagePrior`` (``ConvDecoder``
  generator, 64 channels, Adam lr 1e-2) on one simulated scan, through the same operator and
  data: PSNR against wall time under one time budget, the time to reach a target PSNR and the
  ratio of the two times. deepinv is a benchmark-only install (``pip install
  "torch==2.13.0" "torchvision==0.28.0" deepinv==0.5.0``, not a dependency); its torchvision
  needs ``shared/bench/tv_shim.py`` to import beside the CPU torch. Without either the part
  says so in one line and skips deepinv.

Usage::

    python scripts/bench_dip.py quality [--cases 2d|3d|all] [--iterations N] [--channels C]
    python scripts/bench_dip.py speed [--sizes cpu|laptop|gpu] [--device cpu|cuda] [--repeat N]
    python scripts/bench_dip.py pretrain [--size 64] [--n-images 512] [--epochs 8]
    python scripts/bench_dip.py peer [--budget 150] [--target 29.1] [--phantom ellipses]
                                     [--size 64] [--angles 30] [--noise 0.02] [--every 25]
                                     [--peer-scale fbp|phantom|none]

Common options: ``--device``, ``--backend``, ``--threads``, ``--markdown FILE``, ``--json FILE``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dip_uq as du
from dip_uq.dip import DIP, FBP_FILTER
from dip_uq.metrics import psnr, ssim
from dip_uq.networks import onednn_convolutions
from dip_uq.noise import default_tv_weight, estimate_noise_sigma, image_scale, ray_transform_gain
from dip_uq.pretraining import pretrain
from dip_uq.simulation import SCAN_ATTENUATION
from dip_uq.tv import tv_reconstruct

# deepinv's torchvision import helper, in the shared folder beside the repository
TV_SHIM = Path(__file__).resolve().parents[2] / "shared" / "bench" / "tv_shim.py"
FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann", "hamming")

# name: (shape, angles, arc in degrees, relative noise)
QUALITY_CASES = {
    "2d-128-sparse30-2%": ((128, 128), 30, 180, 0.02),
    "2d-128-sparse60-1%": ((128, 128), 60, 180, 0.01),
    "2d-128-sparse45-5%": ((128, 128), 45, 180, 0.05),
    "2d-128-limited90-2%": ((128, 128), 60, 90, 0.02),
    "3d-64-cone60-2%": ((64, 64, 64), 60, 360, 0.02),
    "3d-64-limited90-2%": ((64, 64, 64), 60, 90, 0.02),
}
SPEED_CASES = {
    "cpu": {"2d-128": ((128, 128), 60), "3d-64": ((64, 64, 64), 64)},
    "laptop": {"3d-16": ((16, 16, 16), 16), "3d-24": ((24, 24, 24), 24), "3d-32": ((32,) * 3, 32)},
    "gpu": {"3d-128": ((128, 128, 128), 128), "3d-256": ((256, 256, 256), 256)},
}


def make_operator(shape: tuple[int, ...], n_angles: int, arc_deg: float, backend: str):
    """2D: parallel beam, detector of 1.5 n pixels. 3D: cone beam, magnification 1.5."""
    n = shape[-1]
    if len(shape) == 2:
        angles = np.linspace(0, np.deg2rad(arc_deg), n_angles, endpoint=False)
        geometry = du.ParallelBeam(angles, (int(1.5 * n),))
    else:
        arc = np.deg2rad(arc_deg)
        angles = np.linspace(0, arc, n_angles, endpoint=arc_deg < 360)
        geometry = du.ConeBeam(angles, (n, int(1.5 * n)), 1.5, 4.0 * n, 2.0 * n)
    return du.RayTransform(du.Volume(shape), geometry, backend)


def network_for(shape: tuple[int, ...], channels: int | None, seed: int = 0) -> du.UNet | None:
    """The default U-Net (``None``) or one with ``channels`` at every scale and 4 skip
    channels at every scale but the coarsest."""
    if channels is None:
        return None
    default = du.UNet.default_for(shape)
    return du.UNet(
        len(shape),
        scales=default.scales,
        channels=channels,
        skip_channels=4,
        seed=seed,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
def run_quality(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    names = [k for k in QUALITY_CASES if args.cases == "all" or k.startswith(args.cases)]
    rows = []
    for name in names:
        shape, n_angles, arc, noise = QUALITY_CASES[name]
        A = make_operator(shape, n_angles, arc, args.backend)
        truth = du.phantoms.shepp_logan(shape, device=device)
        y, sigma = du.simulate(A, truth, noise=noise, seed=args.seed, return_sigma=True)
        row: dict[str, Any] = {"case": name, "sigma": float(sigma)}

        scores = {f: psnr(A.fbp(y, filter=f), truth) for f in FILTERS}
        best = max(scores, key=scores.get)
        fbp_image = A.fbp(y, filter=best)
        row["fbp"] = {"filter": best, "psnr": scores[best], "ssim": ssim(fbp_image, truth)}

        sigma_hat = estimate_noise_sigma(y, A.geometry)
        gain = ray_transform_gain(A, device=device)
        gamma_rule = default_tv_weight(sigma_hat, gain, y.numel())
        row["sigma_estimate_ratio"] = sigma_hat / float(sigma)
        started = time.perf_counter()
        tv_image = tv_reconstruct(A, y, gamma_rule, args.tv_iterations)
        row["tv_rule"] = {
            "gamma": gamma_rule,
            "psnr": psnr(tv_image, truth),
            "ssim": ssim(tv_image, truth),
            "seconds": time.perf_counter() - started,
        }
        if args.tv_oracle:
            grid = {}
            for factor in (1 / 9, 1 / 3, 3, 9):
                image = tv_reconstruct(A, y, gamma_rule * factor, args.tv_iterations)
                grid[factor] = (psnr(image, truth), ssim(image, truth))
            grid[1] = (row["tv_rule"]["psnr"], row["tv_rule"]["ssim"])
            factor = max(grid, key=lambda f: grid[f][0])
            row["tv_oracle"] = {
                "gamma": gamma_rule * factor,
                "factor": factor,
                "psnr": grid[factor][0],
                "ssim": grid[factor][1],
            }

        net = network_for(shape, args.channels, args.seed)
        rec = DIP(
            A,
            network=net,
            iterations=args.iterations,
            seed=args.seed,
            device=device,
            progress=args.progress,
        )
        curve = []

        def track(dip, k, record, curve=curve, truth=truth):
            if (k + 1) % args.every == 0:
                curve.append((k + 1, psnr(dip.image().detach(), truth)))

        started = time.perf_counter()
        dip_image = rec.fit(y, callback=track)
        row["dip"] = {
            "psnr": psnr(dip_image, truth),
            "ssim": ssim(dip_image, truth),
            "iterations": rec.iterations,
            "best_iteration": rec.best_iteration,
            "gamma": rec.tv_weight,
            "lr": rec.lr,
            "seconds": time.perf_counter() - started,
            "seconds_per_iteration": rec.timings["seconds_per_iteration"],
            "params": sum(p.numel() for p in rec.network.parameters()),
            "channels": list(rec.network.channels),
            "curve": curve,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def quality_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | FBP (filter) | TV, rule γ | TV, oracle γ | DIP | DIP iterations, s/it |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        oracle = r.get("tv_oracle")
        oracle_text = (
            f"{oracle['psnr']:.2f} / {oracle['ssim']:.3f} (×{oracle['factor']:.3g})"
            if oracle
            else "–"
        )
        d = r["dip"]
        lines.append(
            f"| {r['case']} | {r['fbp']['psnr']:.2f} / {r['fbp']['ssim']:.3f} "
            f"({r['fbp']['filter']}) | {r['tv_rule']['psnr']:.2f} / {r['tv_rule']['ssim']:.3f} "
            f"| {oracle_text} | {d['psnr']:.2f} / {d['ssim']:.3f} | {d['iterations']}, "
            f"{d['seconds_per_iteration']:.3f} |"
        )
    return "\n".join(lines) + "\n\nPSNR (dB) / SSIM against the phantom.\n"


# --------------------------------------------------------------------------------------------
def median_time(fn, repeat: int, device: torch.device) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    rows = []
    for name, (shape, n_angles) in SPEED_CASES[args.sizes].items():
        arc = 180 if len(shape) == 2 else 360
        A = make_operator(shape, n_angles, arc, args.backend)
        truth = du.phantoms.shepp_logan(shape, device=device)
        y = du.simulate(A, truth, noise=0.02, seed=0)
        net = network_for(shape, args.channels) or du.UNet.default_for(shape, seed=0)
        rec = DIP(
            A,
            network=net,
            iterations=args.repeat + 2,
            device=device,
            progress=False,
            mixed_precision=args.bf16,
        )
        stamps: list[float] = []

        def stamp(dip, k, record, stamps=stamps):
            sync(device)
            stamps.append(time.perf_counter())

        rec.fit(y, callback=stamp)
        per_iteration = statistics.median(np.diff(stamps[1:]))  # skip the first (warm-up)

        net = rec.network
        z = rec.network_input
        x = truth.float()
        weights = torch.randn(z.shape, generator=torch.Generator().manual_seed(0)).to(device)

        def net_step(net=net, z=z, weights=weights):
            net.zero_grad(set_to_none=True)
            if args.bf16:
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    out = net(z).float()
            else:
                out = net(z)
            (out * weights).sum().backward()

        def dip_net_step(net_step=net_step):
            with onednn_convolutions():
                net_step()

        with torch.no_grad():
            t_fp = median_time(lambda A=A, x=x: A(x), args.repeat, device)
            t_bp = median_time(lambda A=A, y=y: A.adjoint(y), args.repeat, device)
        t_torch = median_time(net_step, args.repeat, device)
        t_net = median_time(dip_net_step, args.repeat, device)
        raw = t_net + t_fp + t_bp
        row = {
            "case": name,
            "device": str(device),
            "backend": A.backend,
            "bf16": args.bf16,
            "params": sum(p.numel() for p in net.parameters()),
            "dip_s_per_it": per_iteration,
            "net_fwd_bwd_s": t_net,
            "net_torch_choice_s": t_torch,
            "fp_s": t_fp,
            "bp_s": t_bp,
            "raw_s": raw,
            "overhead": per_iteration / raw - 1,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def speed_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | device, backend | params | DIP s/it | net fwd+bwd | FP | BP | raw sum | "
        "overhead | net, torch's choice | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['device']}, {r['backend']}{' bf16' if r['bf16'] else ''} | "
            f"{r['params']:,} | {r['dip_s_per_it']:.3f} | {r['net_fwd_bwd_s']:.3f} | "
            f"{r['fp_s']:.3f} | {r['bp_s']:.3f} | {r['raw_s']:.3f} | "
            f"{100 * r['overhead']:+.1f} % | {r['net_torch_choice_s']:.3f} | "
            f"{r['net_torch_choice_s'] / r['net_fwd_bwd_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
def run_pretrain(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    shape = (args.size, args.size)
    A = make_operator(shape, 30, 180, args.backend)
    truth = du.phantoms.shepp_logan(shape, device=device)
    y = du.simulate(A, truth, noise=0.02, seed=args.seed)
    fbp_psnr = max(psnr(A.fbp(y, filter=f), truth) for f in FILTERS)
    rows = []

    started = time.perf_counter()
    net = pretrain(
        A,
        n_images=args.n_images,
        epochs=args.epochs,
        network=network_for(shape, args.channels, args.seed),
        seed=args.seed + 1,
        device=device,
        progress=args.progress,
    )
    pretrain_s = time.perf_counter() - started
    with torch.no_grad():
        z = A.fbp(y, filter=FBP_FILTER)
        c = image_scale(z)
        direct = c * net.to(device)(z[None, None] / c)[0, 0]
    print(f"pretraining: {pretrain_s:.0f} s, loss {net.pretraining['final_loss']:.4g}")

    for label, start in (
        ("scratch", network_for(shape, args.channels, args.seed)),
        ("pretrained", net),
    ):
        rec = DIP(
            A,
            network=start,
            iterations=args.iterations,
            seed=args.seed,
            device=device,
            progress=args.progress,
        )
        curve = []

        def track(dip, k, record, curve=curve):
            if (k + 1) % args.every == 0:
                curve.append((k + 1, psnr(dip.image().detach(), truth)))

        started = time.perf_counter()
        out = rec.fit(y, callback=track)
        rows.append(
            {
                "start": label,
                "lr": rec.lr,
                "iterations": rec.iterations,
                "psnr": psnr(out, truth),
                "ssim": ssim(out, truth),
                "seconds": time.perf_counter() - started,
                "curve": curve,
                "fbp_psnr": fbp_psnr,
                "pretrain_s": pretrain_s if label == "pretrained" else 0.0,
                "pretrained_net_only_psnr": psnr(direct, truth) if label == "pretrained" else None,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def pretrain_markdown(rows: list[dict[str, Any]]) -> str:
    scratch = dict(rows[0]["curve"])
    target = max(scratch.values())
    lines = [
        f"FBP (best filter) {rows[0]['fbp_psnr']:.2f} dB; target = best PSNR of the scratch run "
        f"({target:.2f} dB)",
        "",
        "| start | lr | PSNR after 100 / 300 / 1000 / last | iterations to target | "
        "pretraining s | DIP s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        curve = dict(r["curve"])
        at = [curve.get(k, float("nan")) for k in (100, 300, 1000)] + [r["curve"][-1][1]]
        reach = next((k for k, v in r["curve"] if v >= target - 1e-9), None)
        lines.append(
            f"| {r['start']} | {r['lr']:g} | {' / '.join(f'{v:.2f}' for v in at)} | "
            f"{reach if reach is not None else '> ' + str(r['iterations'])} | "
            f"{r['pretrain_s']:.0f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
class _BudgetSpent(Exception):
    """Raised from a fit's callback when the wall-time budget is used up (aborts the fit)."""


class _Clock:
    """Wall time since :meth:`start`, less the time spent in :meth:`paused` blocks (the PSNR
    evaluations), so both methods are timed on their optimisation alone."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = 0.0
        self.excluded = 0.0

    def start(self) -> None:
        sync(self.device)
        self.started, self.excluded = time.perf_counter(), 0.0

    def seconds(self) -> float:
        sync(self.device)
        return time.perf_counter() - self.started - self.excluded

    def paused(self, fn: Callable[[], float]) -> float:
        """Run ``fn()`` off the clock and return its value."""
        sync(self.device)
        begin = time.perf_counter()
        try:
            return fn()
        finally:
            sync(self.device)
            self.excluded += time.perf_counter() - begin


def _curve_summary(
    curve: list[tuple[float, int, float]], target: float, budget: float
) -> dict[str, Any]:
    """Best PSNR, the first point at or above ``target`` (``None``: not reached) and the PSNR
    at a quarter and half of the budget (the last point at or before that time) and at its end
    (the last point, which may lie a step past the budget)."""
    best = max(curve, key=lambda p: p[2]) if curve else (float("nan"), 0, float("nan"))
    reach = next((p for p in curve if p[2] >= target), None)
    at = {}
    for fraction in (0.25, 0.5, 1.0):
        before = [p for p in curve if p[0] <= fraction * budget or fraction == 1.0]
        at[str(fraction)] = before[-1][2] if before else None
    return {
        "best_psnr": best[2],
        "best_at_s": best[0],
        "best_at_iteration": best[1],
        "target_s": None if reach is None else reach[0],
        "target_iteration": None if reach is None else reach[1],
        "psnr_at_budget_fraction": at,
        "iterations_run": curve[-1][1] if curve else 0,
        "seconds_run": curve[-1][0] if curve else 0.0,
    }


def _import_deepinv(shim: Path) -> Any:
    """``deepinv`` imported behind the torchvision shim, or ``None`` after printing why not."""
    if importlib.util.find_spec("deepinv") is None:
        print(
            'peer: deepinv is not installed (pip install "torch==2.13.0" '
            '"torchvision==0.28.0" deepinv==0.5.0); skipping the deepinv part'
        )
        return None
    if not shim.is_file():
        print(f"peer: torchvision shim {shim} not found (--shim); skipping the deepinv part")
        return None
    try:
        if "tv_shim" not in sys.modules:  # kept there: its torch.library must stay alive
            spec = importlib.util.spec_from_file_location("tv_shim", shim)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules["tv_shim"] = module
        import deepinv
    except Exception as error:  # any import failure: skip the peer
        print(f"peer: deepinv does not import ({type(error).__name__}: {error}); skipping it")
        return None
    return deepinv


def run_peer(args: argparse.Namespace) -> list[dict[str, Any]]:
    """dip-uq's default DIP and deepinv's DIP on the same scan, operator and data, each for
    ``--budget`` seconds, PSNR against the truth every ``--every`` iterations.

    * dip-uq: ``DIP(A, seed=seed)`` with every library default (``UNet.default_for``,
      iterations from the noise level, lr, γ, clipping); the clock starts right before
      :meth:`DIP.fit` (so its set-up, FBP input and γ rule, counts). The callback evaluates
      ``dip.image()`` under ``torch.no_grad()`` (the current weights, the same forward pass as
      :meth:`DIP.predict`, no RNG use) and raises :class:`_BudgetSpent` at the budget.
    * deepinv: ``DeepImagePrior(ConvDecoder(channels=64), learning_rate=1e-2)`` with
      ``LinearPhysics(A=A, A_adjoint=A.adjoint)`` on ``(1, 1, N, N) <-> (1, 1, angles, cols)``
      tensors. ``DeepImagePrior.forward`` runs all its iterations in one call, so its loop is
      replicated step for step from deepinv 0.5.0 (``models/dip.py``): the same generator,
      ``z = randn(img_size)`` fixed, ``Adam(generator.parameters(), lr)``, the model's own
      loss ``MCLoss`` (``mean((A G(z) - y)²)``), recording ``G(z)`` under ``torch.no_grad()``
      after every ``--every``-th step (train mode, what its ``forward`` returns). The global
      RNG is seeded with ``--seed`` before the generator is built. No iteration cap unless
      ``--peer-iterations`` (deepinv's default is 2500): the budget ends it.
    * deepinv's image unit ``s`` (``--peer-scale``): the physics is ``u -> A(s u)`` (adjoint
      ``s Aᵀ``) and the reconstruction ``s G(z)``, the same forward model of the attenuation
      image. ``fbp`` (default): ``s = image_scale(FBP)``, the unit dip-uq's DIP gives its
      U-Net; ``phantom``: the phantom's attenuation per unit value (images in [0, 1],
      deepinv's convention; uses the truth's scale); ``none``: ``s = 1``, attenuation in 1/mm
      (~0.02), far below the decoder's O(1) start (a smoke run climbed from -16 to +2 dB in
      20 s).

    Both clocks leave out the PSNR evaluations; each curve also gets the point where the
    budget (or the iteration count) stopped it.
    """
    device = torch.device(args.device)
    scan = du.simulate_scan(
        args.phantom, dim=2, size=args.size, angles=args.angles, noise=args.noise, seed=args.seed
    )
    A = du.RayTransform(scan.volume, scan.geometry, args.backend)
    truth = torch.as_tensor(scan.truth, dtype=torch.float32, device=device)
    y = torch.as_tensor(scan.sinogram, dtype=torch.float32, device=device)
    case = (
        f"{args.phantom} {args.size}², {args.angles} angles, {100 * args.noise:g} % noise, "
        f"seed {args.seed}, {A.backend}"
    )
    fbp_psnr = max(psnr(A.fbp(y, filter=f), truth) for f in FILTERS)
    common = {"case": case, "budget_s": args.budget, "target_psnr": args.target}
    rows = []

    # dip-uq ---------------------------------------------------------------------------------
    clock = _Clock(device)
    curve: list[tuple[float, int, float]] = []

    def measure_dip(dip: DIP) -> float:
        with torch.no_grad():
            return psnr(dip.image(), truth)

    def track(dip: DIP, k: int, record: dict[str, float]) -> None:
        seconds = clock.seconds()
        spent = seconds >= args.budget
        if (k + 1) % args.every == 0 or spent or k + 1 == dip.iterations:
            curve.append((seconds, k + 1, clock.paused(lambda: measure_dip(dip))))
        if spent:
            raise _BudgetSpent

    rec = DIP(A, seed=args.seed, device=device, progress=args.progress)
    clock.start()
    try:
        rec.fit(y, callback=track)
        stopped = "iterations"
    except _BudgetSpent:
        stopped = "budget"
    rows.append(
        {
            "method": "dip-uq DIP",
            **common,
            "network": f"UNet.default_for, channels {list(rec.network.channels)}",
            "params": sum(p.numel() for p in rec.network.parameters()),
            "lr": rec.lr,
            "iterations_planned": rec.iterations,
            "stopped_by": stopped,
            "fbp_psnr": fbp_psnr,
            **_curve_summary(curve, args.target, args.budget),
            "curve": curve,
        }
    )
    print(json.dumps(rows[-1]), flush=True)

    # deepinv --------------------------------------------------------------------------------
    dinv = _import_deepinv(Path(args.shim))
    if dinv is None:
        return rows
    n, sino_shape = args.size, tuple(A.geometry.sino_shape)
    unit = {
        "fbp": lambda: image_scale(A.fbp(y, filter=FBP_FILTER)),
        "phantom": lambda: SCAN_ATTENUATION,
        "none": lambda: 1.0,
    }[args.peer_scale]()

    def forward_op(u: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return A(unit * u)  # (1, 1, n, n) -> (1, 1, angles, cols): A takes leading batch axes

    def adjoint_op(s: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return unit * A.adjoint(s)

    physics = dinv.physics.LinearPhysics(
        A=forward_op, A_adjoint=adjoint_op, img_size=(1, n, n), device=device
    )
    y4 = y.reshape(1, 1, *sino_shape)
    torch.manual_seed(args.seed)
    generator = dinv.models.ConvDecoder(
        img_size=(1, n, n), in_size=(4, 4), channels=args.peer_channels
    ).to(device)
    model = dinv.models.DeepImagePrior(
        generator,
        img_size=[args.peer_channels, 4, 4],
        iterations=args.peer_iterations or 10**9,
        learning_rate=args.peer_lr,
    )
    curve = []

    def measure_peer(z: torch.Tensor) -> float:
        with torch.no_grad():
            return psnr(unit * model.generator(z).reshape(n, n), truth)

    clock.start()
    stopped = "iterations"
    with torch.enable_grad():  # deepinv 0.5.0 DeepImagePrior.forward, with recording
        model.generator.requires_grad_(True)
        z = torch.randn(model.img_size, device=y4.device).unsqueeze(0)
        optimizer = torch.optim.Adam(model.generator.parameters(), lr=model.lr)
        for it in range(model.max_iter):
            x = model.generator(z)
            error = model.loss(y=y4, x_net=x, physics=physics)
            optimizer.zero_grad()
            error.backward()
            optimizer.step()
            seconds = clock.seconds()
            spent = seconds >= args.budget
            if (it + 1) % args.every == 0 or spent or it + 1 == model.max_iter:
                curve.append((seconds, it + 1, clock.paused(lambda z=z: measure_peer(z))))
            if spent:
                stopped = "budget"
                break
    rows.append(
        {
            "method": f"deepinv {dinv.__version__} DIP",
            **common,
            "network": f"ConvDecoder, {args.peer_channels} channels, in_size 4×4, 7 layers, "
            f"unit {args.peer_scale} {unit:.4g}",
            "image_unit": unit,
            "params": sum(p.numel() for p in model.generator.parameters()),
            "lr": model.lr,
            "iterations_planned": args.peer_iterations,
            "stopped_by": stopped,
            "fbp_psnr": fbp_psnr,
            **_curve_summary(curve, args.target, args.budget),
            "curve": curve,
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    ours, theirs = rows[0]["target_s"], rows[1]["target_s"]
    rows[0]["target_time_ratio"] = None if ours is None or theirs is None else ours / theirs
    return rows


def peer_markdown(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    lines = [
        f"{first['case']}; FBP (best filter) {first['fbp_psnr']:.2f} dB; budget "
        f"{first['budget_s']:g} s; target {first['target_psnr']:g} dB",
        "",
        "| method | network (params) | lr | iterations, s/it | PSNR at ¼ / ½ / all of budget | "
        "best PSNR (s, it) | to target: s (it) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        at = " / ".join(
            "–" if v is None else f"{v:.2f}" for v in r["psnr_at_budget_fraction"].values()
        )
        per_it = r["seconds_run"] / max(r["iterations_run"], 1)
        reach = (
            "not reached"
            if r["target_s"] is None
            else f"{r['target_s']:.1f} ({r['target_iteration']})"
        )
        lines.append(
            f"| {r['method']} | {r['network']} ({r['params']:,}) | {r['lr']:g} | "
            f"{r['iterations_run']}, {per_it:.3f} | {at} | {r['best_psnr']:.2f} "
            f"({r['best_at_s']:.1f}, {r['best_at_iteration']}) | {reach} |"
        )
    if len(rows) > 1:
        ratio = first.get("target_time_ratio")
        lines += [
            "",
            "time to target, dip-uq / deepinv: "
            + ("n/a (a method did not reach it)" if ratio is None else f"{ratio:.2f}"),
        ]
    lines.append(
        "\nPSNR (dB) of the current iterate against the truth; seconds exclude the "
        "PSNR evaluations."
    )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["quality", "speed", "pretrain", "peer"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "astra"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cases", default="all", choices=["2d", "3d", "all"])
    parser.add_argument("--sizes", default="cpu", choices=list(SPEED_CASES))
    parser.add_argument("--iterations", type=int, default=None, help="DIP iterations")
    parser.add_argument("--channels", type=int, default=None, help="U-Net channels per scale")
    parser.add_argument("--tv-iterations", type=int, default=1000)
    parser.add_argument("--tv-oracle", action="store_true", help="also tune TV's γ on a grid")
    parser.add_argument(
        "--every", type=int, default=None, help="PSNR curve spacing (100; peer: 25)"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="speed: bf16 autocast (CUDA)")
    parser.add_argument("--size", type=int, default=64, help="pretrain, peer: image side")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--phantom", default="ellipses", choices=["ellipses", "shepp-logan"])
    parser.add_argument("--angles", type=int, default=30, help="peer: projections")
    parser.add_argument("--noise", type=float, default=0.02, help="peer: relative noise")
    parser.add_argument("--budget", type=float, default=150.0, help="peer: seconds per method")
    parser.add_argument("--target", type=float, default=29.1, help="peer: target PSNR (dB)")
    parser.add_argument("--peer-channels", type=int, default=64, help="deepinv ConvDecoder")
    parser.add_argument("--peer-lr", type=float, default=1e-2, help="deepinv Adam lr")
    parser.add_argument(
        "--peer-scale",
        default="fbp",
        choices=["fbp", "phantom", "none"],
        help="deepinv: unit of the generator's image",
    )
    parser.add_argument(
        "--peer-iterations", type=int, default=None, help="deepinv cap (none: the budget)"
    )
    parser.add_argument("--shim", default=str(TV_SHIM), help="peer: torchvision shim file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.every is None:
        args.every = 25 if args.part == "peer" else 100
    if args.threads:
        torch.set_num_threads(args.threads)
    header = (
        f"{args.part} on {args.device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})"
    )
    print(header)
    run, render = {
        "quality": (run_quality, quality_markdown),
        "speed": (run_speed, speed_markdown),
        "pretrain": (run_pretrain, pretrain_markdown),
        "peer": (run_peer, peer_markdown),
    }[args.part]
    rows = run(args)
    table = render(rows)
    print(table)
    if args.markdown:
        with open(args.markdown, "a") as handle:
            handle.write(f"\n### {header}\n\n{table}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"header": header, "args": vars(args), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
