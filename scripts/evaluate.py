"""Run an evaluation suite of :mod:`dip_uq.evaluate` and write its tables and plots.

Usage::

    python scripts/evaluate.py --suite small --out results/small      # ~15 min on 2 CPU cores
    python scripts/evaluate.py --suite full --out results/full --device cuda
    python scripts/evaluate.py --suite tiny --out /tmp/tiny --methods fbp laplace laplace-em

Writes ``results.csv``, ``results.md`` and ``calibration_<case>.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from dip_uq.evaluate import METHODS, SUITES, markdown_table, run_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="small", choices=list(SUITES))
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if any)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "astra"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cases", nargs="+", default=None, help="case names (default all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = run_suite(
        args.suite,
        args.out,
        device=args.device,
        backend=args.backend,
        methods=args.methods,
        cases=args.cases,
        progress=args.progress,
    )
    print(markdown_table(rows, SUITES[args.suite].settings.tll_patch))
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"{len(rows)} rows in {time.perf_counter() - started:.0f} s (load {load}); see {args.out}"
    )


if __name__ == "__main__":
    main()
