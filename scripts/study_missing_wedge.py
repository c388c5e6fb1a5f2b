"""Why is the std map of a limited-angle scan uncalibrated? Shape or scale (issue 35, step 1).

For each simulated limited-arc scan (2D parallel beam, 32², Shepp-Logan) and each variant of
the prior (the g-prior with the cross-validated scale, the g-prior at the weights' scale, the
plain prior at the weights' scale, the plain prior cross-validated), one call of
:func:`dip_uq.reconstruct` with ``keep_samples=True``, and against the truth
(``error = mean - truth``):

* overall: 90 % and 50 % coverage (``|error| <= z std``), mean std / RMSE,
  Spearman(std, |error|);
* per region: ``air`` (truth 0, more than 2 px from the object), ``flat`` (inside the object,
  more than 1 px from any edge), ``edge-missing`` / ``edge-measured`` (edge pixels whose edge
  normal lies in the missing wedge of directions / in the measured arc): RMSE, mean std,
  their ratio and the 90 % coverage;
* per Fourier direction: the power of the error image and the mean power of the posterior
  samples' deviations, summed over the frequencies whose direction lies in the measured arc
  and over those in the missing wedge (DC left out), and their ratio (samples / error). A
  calibrated posterior has a ratio near 1 in both sectors.

Direction convention (dip_uq/geometry.py): the projection at angle θ sends its rays along
``(-sin θ, cos θ)`` and its detector columns along ``u = (cos θ, sin θ)``; by the Fourier
slice theorem it samples the Fourier line along ``u``. A frequency (or an edge normal) of
direction φ (``atan2(y, x)``, x along the columns, y along the rows) is measured when
``φ mod π`` lies in the scanned arc ``[0, arc)``, and missing otherwise. The script checks
this on the FBP: its error on the "missing" edges and in the "missing" Fourier sector should
be the larger, and is printed as ``fbp check``.

Usage (one thread; each run takes about a minute on a 2-core CPU)::

    PYTHONPATH=. python scripts/study_missing_wedge.py --out /tmp/wedge \
        [--cases arc60,arc90,arc120,arc180] [--variants gprior-cv,gprior-w,plain-w,plain-cv]
        [--runs arc90:gprior-cv,arc60:plain-w,...] [--budget 1800] [--resume]

writes ``study.json`` and ``study.md`` into ``--out``; ``--budget`` (seconds) stops starting
new runs once spent (cases outer, variants inner, in the order given).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, stats

import dip_uq as du

Z90, Z50 = 1.6448536, 0.6744898


def _case(arc_deg: float, geometry: str = "parallel") -> dict[str, Any]:
    # the same angular density (3.75° apart) at every arc: only the wedge changes
    return {
        "phantom": "shepp-logan",
        "dim": 2,
        "size": 32,
        "geometry": geometry,
        "angles": round(arc_deg / 3.75),
        "arc": math.radians(arc_deg),
        "noise": 0.02,
        "seed": 0,
    }


CASES: dict[str, dict[str, Any]] = {
    "arc60": _case(60),
    "arc90": _case(90),
    "arc120": _case(120),
    "arc180": _case(180),
    "fan-arc90": _case(90, "fan"),
}
VARIANTS: dict[str, dict[str, Any]] = {
    "gprior-cv": {},
    "gprior-w": {"prior_scale": "weights"},
    "plain-w": {"gprior": False, "prior_scale": "weights"},
    "plain-cv": {"gprior": False},
}
REGIONS = ("air", "flat", "edge-missing", "edge-measured")


def measured(phi: np.ndarray, arc: float, widen: float = 0.0) -> np.ndarray:
    """Whether directions ``phi`` (radians) lie in the measured arc ``[0, arc)`` mod π,
    widened by ``widen`` on both sides (a fan beam's rays fan out by its half-angle)."""
    if arc + 2 * widen >= math.pi:
        return np.ones_like(phi, dtype=bool)
    p = np.mod(phi + widen, math.pi)
    return p < arc + 2 * widen


def regions(truth: np.ndarray, arc: float, widen: float) -> dict[str, np.ndarray]:
    obj = truth > 0
    air = ~ndimage.binary_dilation(obj, iterations=2) & (truth == 0)
    # edge orientation from the truth smoothed a little (a 32² grid's central differences
    # give only a few angles)
    smooth = ndimage.gaussian_filter(truth.astype(np.float64), 1.0)
    gy, gx = np.gradient(smooth)
    mag = np.hypot(gx, gy)
    edge = mag > 0.1 * mag.max()
    normal = np.arctan2(gy, gx)
    meas = measured(normal, arc, widen)
    flat = obj & ~ndimage.binary_dilation(edge, iterations=1)
    return {
        "air": air,
        "flat": flat,
        "edge-missing": edge & ~meas,
        "edge-measured": edge & meas,
    }


def sectors(shape: tuple[int, int], arc: float, widen: float) -> dict[str, np.ndarray]:
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    phi = np.arctan2(ky + 0 * kx, kx + 0 * ky)
    nonzero = (kx != 0) | (ky != 0)
    meas = measured(phi, arc, widen)
    return {"measured": nonzero & meas, "missing": nonzero & ~meas}


def power(images: np.ndarray) -> np.ndarray:
    """Mean |FFT|² over a stack ``(n, y, x)`` (or one image)."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    return (np.abs(np.fft.fft2(images)) ** 2).mean(axis=0)


def region_scores(err: np.ndarray, std: np.ndarray | None, mask: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"pixels": int(mask.sum())}
    if not mask.any():
        return out
    e = err[mask]
    out["rmse"] = float(np.sqrt(np.mean(e**2)))
    if std is not None:
        s = std[mask]
        out["mean_std"] = float(s.mean())
        out["std_over_rmse"] = out["mean_std"] / out["rmse"]
        out["coverage90"] = float(np.mean(np.abs(e) <= Z90 * s))
    return out


def score(
    mean: np.ndarray,
    std: np.ndarray | None,
    truth: np.ndarray,
    samples: np.ndarray | None,
    arc: float,
    widen: float,
) -> dict[str, Any]:
    err = mean.astype(np.float64) - truth
    out: dict[str, Any] = {"rmse": float(np.sqrt(np.mean(err**2)))}
    masks = regions(truth, arc, widen)
    out["regions"] = {name: region_scores(err, std, masks[name]) for name in REGIONS}
    secs = sectors(truth.shape, arc, widen)
    pe = power(err)
    ps = None if samples is None else power(samples)
    fourier: dict[str, Any] = {}
    for name, sel in secs.items():
        f: dict[str, Any] = {"frequencies": int(sel.sum()), "error_power": float(pe[sel].sum())}
        if ps is not None:
            f["sample_power"] = float(ps[sel].sum())
            # a full arc has no missing sector
            f["ratio"] = f["sample_power"] / f["error_power"] if sel.any() else None
        fourier[name] = f
    total = sum(f["error_power"] for f in fourier.values())
    for f in fourier.values():
        f["error_share"] = f["error_power"] / total
        if ps is not None:
            f["sample_share"] = f["sample_power"] / sum(g["sample_power"] for g in fourier.values())
    out["fourier"] = fourier
    if std is not None:
        a = np.abs(err).ravel()
        s = std.astype(np.float64).ravel()
        out["coverage90"] = float(np.mean(a <= Z90 * s))
        out["coverage50"] = float(np.mean(a <= Z50 * s))
        out["std_over_rmse"] = float(s.mean() / out["rmse"])
        out["spearman"] = float(stats.spearmanr(s, a).statistic)
    return out


def run(
    name: str, case: dict[str, Any], variant: str, channels: int, samples: int, **extra: Any
) -> dict:
    scan = du.simulate_scan(**case)
    t0 = time.perf_counter()
    result = du.reconstruct(
        scan, channels=channels, samples=samples, keep_samples=True, **VARIANTS[variant], **extra
    )
    wall = time.perf_counter() - t0
    truth = np.asarray(result.truth, dtype=np.float64)
    dev = result.samples.detach().cpu().numpy().astype(np.float64)
    # a fan's rays leave the source within its half-angle over the object (radius size/2,
    # source 4·size before the axis): they measure directions that much beyond the arc
    widen = math.atan(0.5 / 4.0) if case["geometry"] == "fan" else 0.0
    arc = case["arc"]
    std = result.std.astype(np.float64)
    dip = score(result.mean, std, truth, dev, arc, widen)
    # the samples' own std against the map (are the samples what the map was made from?)
    dip["sample_std_vs_map"] = float(np.sqrt((dev**2).mean(axis=0)).mean() / std.mean())
    fbp = score(result.fbp, None, truth, None, arc, widen)
    search = result.hyperparameters.get("prior_scale_search") or {}
    hyper = {
        k: v
        for k, v in result.hyperparameters.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return {
        "case": name,
        "variant": variant,
        "options": VARIANTS[variant],
        "scan": {**case, "arc_deg": math.degrees(arc)},
        "widen_deg": math.degrees(widen),
        "wall_s": wall,
        "scores": {k: float(v) for k, v in result.scores.items()},
        "chosen_factor": search.get("chosen_factor"),
        "hyperparameters": hyper,
        "timings": result.timings,
        "dip": dip,
        "fbp": fbp,
    }


def _f(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict]) -> str:
    head = (
        "| case | variant | factor | PSNR | cov90 | cov50 | std/RMSE | Spearman "
        "| air std/RMSE (cov90) | flat std/RMSE (cov90) | edge-missing std/RMSE (cov90) "
        "| edge-measured std/RMSE (cov90) | RMSE edge-miss / edge-meas "
        "| Fourier ratio meas | Fourier ratio miss | error share miss | sample share miss |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        d = d_ = r["dip"]
        reg = d["regions"]

        def cell(name: str, reg: dict = reg) -> str:
            g = reg[name]
            if "std_over_rmse" not in g:
                return "–"
            return f"{g['std_over_rmse']:.2f} ({g['coverage90']:.2f})"

        em, ms = reg["edge-missing"].get("rmse"), reg["edge-measured"].get("rmse")
        rr = None if not em or not ms else em / ms
        fo = d_["fourier"]
        lines.append(
            f"| {r['case']} | {r['variant']} | {_f(r['chosen_factor'], 3)} "
            f"| {_f(r['scores'].get('psnr_dip_db'), 1)} "
            f"| {_f(d['coverage90'])} | {_f(d['coverage50'])} | {_f(d['std_over_rmse'])} "
            f"| {_f(d['spearman'])} | {cell('air')} | {cell('flat')} | {cell('edge-missing')} "
            f"| {cell('edge-measured')} | {_f(rr)} "
            f"| {_f(fo['measured'].get('ratio'), 3)} | {_f(fo['missing'].get('ratio'), 3)} "
            f"| {_f(fo['missing']['error_share'])} | {_f(fo['missing'].get('sample_share'))} |"
        )
    return "\n".join(lines)


def fbp_table(rows: list[dict]) -> str:
    lines = [
        "| case | FBP RMSE edge-missing | FBP RMSE edge-measured | FBP error share in missing "
        "sector | share of frequencies in missing sector |",
        "|---|---|---|---|---|",
    ]
    seen = set()
    for r in rows:
        if r["case"] in seen:
            continue
        seen.add(r["case"])
        f = r["fbp"]
        fo = f["fourier"]
        nmiss = fo["missing"]["frequencies"]
        share = nmiss / (nmiss + fo["measured"]["frequencies"])
        lines.append(
            f"| {r['case']} | {_f(f['regions']['edge-missing'].get('rmse'), 4)} "
            f"| {_f(f['regions']['edge-measured'].get('rmse'), 4)} "
            f"| {_f(fo['missing']['error_share'])} | {_f(share)} |"
        )
    return "\n".join(lines)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), "?"
        )
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "?"
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="missing-wedge-study")
    parser.add_argument("--cases", default="arc60,arc90,arc120,arc180")
    parser.add_argument("--variants", default="gprior-cv,gprior-w,plain-w,plain-cv")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--runs", default=None, help="case:variant,... in this order (instead of the product)"
    )
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds")
    parser.add_argument("--resume", action="store_true", help="keep the runs in --out")
    # smoke tests only: an under-fitted DIP makes the std overconfident
    parser.add_argument("--iterations", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.runs:
        pairs = [tuple(r.split(":")) for r in args.runs.split(",")]
    else:
        pairs = [(c, v) for c in args.cases.split(",") for v in args.variants.split(",")]
    start = time.perf_counter()
    rows: list[dict] = []
    if args.resume and (out / "study.json").exists():
        rows = json.loads((out / "study.json").read_text())["runs"]
    done = {(r["case"], r["variant"]) for r in rows}
    skipped: list[str] = []
    for name, variant in pairs:
        if (name, variant) in done:
            continue
        if time.perf_counter() - start > args.budget:
            skipped.append(f"{name}:{variant}")
            continue
        extra = {} if args.iterations is None else {"iterations": args.iterations}
        row = run(name, CASES[name], variant, args.channels, args.samples, **extra)
        rows.append(row)
        d = row["dip"]
        print(
            f"{name:10s} {variant:10s} {row['wall_s']:6.1f}s  cov90 {d['coverage90']:.2f}"
            f"  std/RMSE {d['std_over_rmse']:.2f}  rho {d['spearman']:+.2f}  Fourier "
            f"ratio meas {_f(d['fourier']['measured'].get('ratio'), 3)} "
            f"miss {_f(d['fourier']['missing'].get('ratio'), 3)}",
            flush=True,
        )
        meta = {
            "machine": machine(),
            "threads": args.threads,
            "channels": args.channels,
            "samples": args.samples,
            "iterations": args.iterations or "default",
            "torch": torch.__version__,
            "dip_uq": du.__version__,
            "wall_s_this_invocation": time.perf_counter() - start,
            "skipped": skipped,
        }
        (out / "study.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    md = table(rows) + "\n\nFBP direction check:\n\n" + fbp_table(rows) + "\n"
    if skipped:
        md += f"\nskipped (budget): {', '.join(skipped)}\n"
    (out / "study.md").write_text(md)
    print(md)
    print(f"total wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
