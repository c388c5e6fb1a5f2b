"""Does the held-out check track the image-space calibration? A table from an evaluation run.

Run a suite with held-out projections first, e.g.::

    dip-uq evaluate --suite small --holdout 5 \\
        --methods fbp laplace laplace-em laplace-holdout mc-dropout --out eval-holdout
    python scripts/holdout_tracking.py eval-holdout/results.csv

It prints, per case and method with a std, the image-space 90 % coverage (against the
truth) beside the held-out projections' 90 % coverage (no truth needed), the same for the
TLL, and over all rows Spearman's rank correlation between the two coverages and between
the two TLLs, and how often the check and the truth agree on the direction of the error
(both under or both over the nominal 90 %).
"""

from __future__ import annotations

import argparse
import csv
import math

from scipy.stats import spearmanr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.csv of dip-uq evaluate --holdout K")
    args = parser.parse_args()
    with open(args.results, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("holdout_tll") not in (None, "")]
    rows = [r for r in rows if not math.isnan(float(r["holdout_tll"]))]
    if not rows:
        raise SystemExit(f"{args.results} has no held-out scores: run the suite with --holdout K")
    print("| case | method | cov 90 % image | cov 90 % held-out | TLL image | TLL held-out |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['method']} | {float(r['coverage_0.9']):.2f} | "
            f"{float(r['holdout_coverage_0.9']):.2f} | {float(r['tll_1']):.2f} | "
            f"{float(r['holdout_tll']):.2f} |"
        )
    image = [float(r["coverage_0.9"]) for r in rows]
    held = [float(r["holdout_coverage_0.9"]) for r in rows]
    same_side = sum((a < 0.9) == (b < 0.9) for a, b in zip(image, held, strict=True))
    rho_cov = spearmanr(image, held).statistic
    rho_tll = spearmanr(
        [float(r["tll_1"]) for r in rows], [float(r["holdout_tll"]) for r in rows]
    ).statistic
    print(
        f"\n{len(rows)} rows: Spearman(coverage image, held-out) = {rho_cov:.2f}, "
        f"Spearman(TLL image, held-out) = {rho_tll:.2f}; the check is on the same side of "
        f"90 % as the truth in {same_side} of {len(rows)}"
    )


if __name__ == "__main__":
    main()
