"""When has the DIP fitted the scan? Trajectories of the data misfit, the PSNR and ES-WMV.

For each simulated scan the DIP (its defaults: network, lr, TV weight) runs a fixed number of
iterations and records, per iteration ``k`` (the weights before step ``k``):

* the data misfit ``‖A x_k - y‖² / m`` in units of the true noise variance ``σ²`` and of the
  estimate ``σ̂²`` (:func:`dip_uq.noise.estimate_noise_sigma`);
* the PSNR of ``x_k`` against the truth;
* ES-WMV's windowed moving variance of the iterates (Wang et al., "Early stopping for deep
  image prior", arXiv 2112.06074): ``VAR_k = mean_w ‖x_{k-w} - mean_j x_{k-j}‖² / N`` over
  the last ``W`` iterates; ES-WMV picks the iterate where ``VAR`` is lowest and stops once it
  has not fallen for ``P`` (patience) iterations.

From them: the first iteration where the misfit (raw, and its running median over 100 iterations)
is at most ``τ σ̂²`` (and ``τ σ²``), where
ES-WMV selects and where it stops, and where the PSNR peaks, with the PSNR at each. Written
as JSON (summary and the trajectories thinned to every ``--every``-th iteration).

Usage (one thread; each case takes minutes on a 2-core CPU)::

    PYTHONPATH=. python scripts/study_dip_stopping.py --json /tmp/study.json [--cases a,b]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from typing import Any

import numpy as np
import torch

import dip_uq as du
from dip_uq.dip import DIP
from dip_uq.metrics import psnr
from dip_uq.noise import default_iterations, estimate_noise_sigma, relative_noise

# name: simulate_scan arguments
CASES: dict[str, dict[str, Any]] = {
    "sl-2%": {"phantom": "shepp-logan", "noise": 0.02, "seed": 0},
    "sl-1%": {"phantom": "shepp-logan", "noise": 0.01, "seed": 0},
    "sl-5%": {"phantom": "shepp-logan", "noise": 0.05, "seed": 0},
    "sl-2%-seed1": {"phantom": "shepp-logan", "noise": 0.02, "seed": 1},
    "ellipses-2%": {"phantom": "ellipses", "noise": 0.02, "seed": 0},
    "sl-2%-arc90": {"phantom": "shepp-logan", "noise": 0.02, "seed": 0, "arc": np.pi / 2},
    "sl-noiseless": {"phantom": "shepp-logan", "noise": 0.0, "seed": 0},
    "sl-2%-fan": {"phantom": "shepp-logan", "noise": 0.02, "seed": 0, "geometry": "fan"},
    "sl-noiseless-fan": {"phantom": "shepp-logan", "noise": 0.0, "seed": 0, "geometry": "fan"},
    # the 3D demo's scan (run with --size 24 --angles 24 --channels 16)
    "3d-cone-2%": {"phantom": "shepp-logan", "noise": 0.02, "dim": 3, "geometry": "cone"},
}
TAUS = (1.0, 1.1, 1.2)


class _Recording(DIP):
    """A DIP that keeps the network output of the step it is in (no extra forward pass)."""

    last: torch.Tensor | None = None

    def _forward(self, network, z):
        out = super()._forward(network, z)
        self.last = out.detach()
        return out


def _first(values: np.ndarray, bound: float) -> int | None:
    hits = np.flatnonzero(values <= bound)
    return int(hits[0]) if hits.size else None


def _running_median(values: np.ndarray, window: int) -> np.ndarray:
    """The lower median of the last ``window`` values at each index (fewer at the start),
    as :class:`dip_uq.DIP`'s discrepancy stop reads the misfit."""
    out = np.empty(len(values))
    for k in range(len(values)):
        recent = np.sort(values[max(k + 1 - window, 0) : k + 1])
        out[k] = recent[(len(recent) - 1) // 2]
    return out


def run_case(name: str, options: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    options = {"dim": 2, "size": args.size, "angles": args.angles, "seed": 0, **options}
    scan = du.simulate_scan(**options)
    A = du.RayTransform(scan.volume, scan.geometry)
    y = torch.from_numpy(scan.sinogram)
    truth = torch.from_numpy(scan.truth)
    with torch.no_grad():
        clean = A(truth)
    sigma = options["noise"] * float(clean.abs().mean())
    sigma_hat = estimate_noise_sigma(y, A.geometry)
    cap = default_iterations(relative_noise(y, sigma_hat))
    n_iter = args.iterations or min(int(math.ceil(args.factor * cap / 100) * 100), args.max)

    W, P = args.window, args.patience
    window: list[torch.Tensor] = []
    psnrs: list[float] = []
    wmv: list[float] = []
    started = time.perf_counter()

    def track(dip: _Recording, k: int, record: dict[str, float]) -> None:
        x = (dip.scale * dip.last).reshape(truth.shape)
        psnrs.append(psnr(x, truth))
        window.append(x.clone())
        if len(window) > W:
            window.pop(0)
        if len(window) == W:
            stack = torch.stack(window)
            wmv.append(float((stack - stack.mean(0)).square().mean()))
        else:
            wmv.append(math.nan)

    network = None
    if args.channels is not None:
        network = du.UNet.default_for(tuple(A.volume.shape), channels=args.channels, seed=0)
    rec = _Recording(A, network, iterations=n_iter, seed=0, device="cpu", progress=False)
    rec.fit(y, callback=track)
    seconds = time.perf_counter() - started
    misfit = np.asarray(rec.history["data_fit"])
    psnrs_a, wmv_a = np.asarray(psnrs), np.asarray(wmv)

    # ES-WMV: the running minimum of VAR; stop when it has not fallen for P iterations
    es_select = es_stop = None
    best, best_k = math.inf, None
    for k, v in enumerate(wmv_a):
        if math.isnan(v):
            continue
        if v < best:
            best, best_k = v, k
        elif k - best_k >= P:
            es_select, es_stop = best_k, k
            break

    def at(k: int | None) -> float | None:
        return None if k is None else float(psnrs_a[k])

    peak = int(np.argmax(psnrs_a))
    out: dict[str, Any] = {
        "case": name,
        "options": options,
        "size": args.size,
        "channels": args.channels,
        "angles": args.angles,
        "sigma_true": sigma,
        "sigma_hat": sigma_hat,
        "sigma_hat_over_true": sigma_hat / sigma if sigma > 0 else None,
        "relative_noise_hat": relative_noise(y, sigma_hat),
        "default_iterations": cap,
        "iterations_run": len(misfit),
        "seconds": seconds,
        "seconds_per_iteration": seconds / len(misfit),
        "tv_weight": rec.tv_weight,
        "psnr_peak": {"iteration": peak, "psnr": float(psnrs_a[peak])},
        "psnr_at_cap": at(min(cap, len(misfit)) - 1),
        "psnr_final": float(psnrs_a[-1]),
        "misfit_over_sigma2_final": float(misfit[-1] / sigma**2) if sigma > 0 else None,
        "es_wmv": {
            "window": W,
            "patience": P,
            "select": es_select,
            "stop": es_stop,
            "psnr_select": at(es_select),
            "var_min_iteration": best_k,
        },
        "discrepancy": {},
    }
    median = _running_median(misfit, args.median_window)
    for tau in TAUS:
        for ref, s, values in (
            ("hat", sigma_hat, misfit),
            ("true", sigma, misfit),
            ("hat_median", sigma_hat, median),
        ):
            k = _first(values, tau * s**2) if s > 0 else None
            entry = {"iteration": k, "psnr": at(k)}
            for m in (0.25, 0.5, 1.0):
                km = None if k is None else max(math.ceil(k * (1 + m)), k + 1) - 1
                if km is not None and km < len(misfit):
                    entry[f"margin_{m:g}"] = {
                        "iteration": km,
                        "psnr": at(km),
                        "misfit_over_sigma2": float(misfit[km] / sigma**2) if sigma > 0 else None,
                        "median_misfit_over_sigma_hat2": float(median[km] / sigma_hat**2),
                    }
            out["discrepancy"][f"tau_{tau:g}_{ref}"] = entry
    e = args.every
    out["trajectory"] = {
        "iteration": list(range(0, len(misfit), e)),
        "misfit_over_sigma2": [float(v / sigma**2) if sigma > 0 else None for v in misfit[::e]],
        "misfit_over_sigma_hat2": [float(v / sigma_hat**2) for v in misfit[::e]],
        "median_misfit_over_sigma_hat2": [float(v / sigma_hat**2) for v in median[::e]],
        "psnr": [float(v) for v in psnrs_a[::e]],
        "wmv": [None if math.isnan(v) else float(v) for v in wmv_a[::e]],
    }
    return out


def _median_k(r: dict[str, Any], tau: float = 1.0) -> int | None:
    """k_disc of the running-median rule: exact when the run recorded it, else from the
    thinned trajectory (a median over ``window / every`` samples, to the nearest ``every``)."""
    entry = r["discrepancy"].get(f"tau_{tau:g}_hat_median")
    if entry is not None:
        return entry["iteration"]
    t = r["trajectory"]
    values = np.asarray(t["misfit_over_sigma_hat2"])
    n = max(1, 100 // (t["iteration"][1] - t["iteration"][0]))
    median = _running_median(values, n)
    hits = np.flatnonzero(median <= tau)
    return int(t["iteration"][hits[0]]) if hits.size else None


def summarize(paths: list[str]) -> str:
    """A Markdown table of the cases in the JSON files ``paths``."""
    rows = [
        "| case | σ̂/σ | cap | k_disc (raw) | k_disc (median) | 2·k_disc | ES-WMV select / stop "
        "| PSNR peak | PSNR at k_disc (median) / 2·k_disc / cap / peak (dB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        for r in json.load(open(path))["results"]:
            t = r["trajectory"]
            psnr_at = dict(zip(t["iteration"], t["psnr"], strict=True))
            every = t["iteration"][1] - t["iteration"][0]

            def near(k: int | None, psnr_at=psnr_at, every=every) -> str:
                if k is None:
                    return "–"
                key = (k // every) * every
                return f"{psnr_at[key]:.2f}" if key in psnr_at else "beyond run"

            raw = r["discrepancy"]["tau_1_hat"]["iteration"]
            med = _median_k(r)
            twice = None if med is None else 2 * med
            cap = r["default_iterations"]
            es = r["es_wmv"]
            ratio = r["sigma_hat_over_true"]
            rows.append(
                f"| {r['case']} | {'–' if ratio is None else f'{ratio:.2f}'} | {cap} | {raw} | "
                f"{med} | {twice} | {es['select']} / {es['stop']} | "
                f"{r['psnr_peak']['iteration']} of {r['iterations_run']} | "
                f"{near(med)} / {near(twice)} / {near(min(cap, r['iterations_run']) - 1)} / "
                f"{r['psnr_peak']['psnr']:.2f} |"
            )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--angles", type=int, default=30)
    p.add_argument("--iterations", type=int, default=None, help="default: factor × the cap")
    p.add_argument("--channels", type=int, default=None, help="U-Net channels (default 32)")
    p.add_argument("--factor", type=float, default=1.3, help="iterations / default_iterations")
    p.add_argument("--max", type=int, default=8000, help="the most iterations per case")
    p.add_argument("--window", type=int, default=100, help="ES-WMV window W")
    p.add_argument("--patience", type=int, default=1000, help="ES-WMV patience P")
    p.add_argument("--median-window", type=int, default=100, help="the DIP rule's window")
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--summarize", nargs="+", help="print a table of these JSON files and exit")
    args = p.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    torch.set_num_threads(args.threads)
    results = []
    for name in args.cases.split(","):
        r = run_case(name, CASES[name], args)
        d = r["discrepancy"]["tau_1_hat"]
        print(
            f"{name}: σ̂/σ {r['sigma_hat_over_true'] or 0:.3f}, cap {r['default_iterations']}, "
            f"disc(τ=1,σ̂) {d['iteration']} ({d['psnr'] or 0:.2f} dB), ES-WMV select "
            f"{r['es_wmv']['select']} stop {r['es_wmv']['stop']} "
            f"({r['es_wmv']['psnr_select'] or 0:.2f} dB), peak {r['psnr_peak']['iteration']} "
            f"({r['psnr_peak']['psnr']:.2f} dB), cap PSNR {r['psnr_at_cap']:.2f}, "
            f"{r['seconds_per_iteration'] * 1e3:.1f} ms/it",
            flush=True,
        )
        results.append(r)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "machine": platform.processor() or platform.machine(),
                        "torch": torch.__version__,
                        "threads": args.threads,
                        "results": results,
                    },
                    f,
                )


if __name__ == "__main__":
    main()
