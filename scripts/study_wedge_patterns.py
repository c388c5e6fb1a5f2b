"""Could any map made from the reconstruction alone point at a limited arc's error? (issue 35)

On the APS tooth's limited arcs the std does not follow the error over the tooth (Spearman
0.00–0.19, ``tooth_check.py``). This study asks whether that is the linearised posterior's
fault or the data's: it scores maps a model could put variance on, all computed from the
sparse run's DIP image without the reference, by Spearman(map, |mean − reference|) over the
tooth (``tooth_check.support_of``). A map that does not reach the issue's 0.3 here cannot
lead a std map there, whatever its scale.

Maps: the run's std; the DIP image's gradient magnitude (Sobel), raw and blurred by 2
voxels; the envelope (|·| blurred by 2 voxels) of the image's part in the missing wedge's
Fourier directions, and of its part in the measured ones; minus the distance to the DIP
image's object boundary (its 10 %-of-maximum level).

Usage: ``python scripts/study_wedge_patterns.py tooth-check`` after ``tooth_check.py --step 2
--arc 60 90 120 --out tooth-check`` (reads its ``tooth_check-<ARC>deg.npz`` and the missing
wedge its ``.json`` recorded; seconds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage, stats
from tooth_check import support_of

from dip_uq import directions


def wedge_part(image: np.ndarray, wedge: tuple[float, float], inside: bool) -> np.ndarray:
    """``image``'s part whose Fourier directions lie in (or, ``inside=False``, outside) the
    wedge ``(start, width)`` in degrees; the DC term goes with neither."""
    keep = directions.wedge_frequencies(image.shape, wedge).numpy()
    if not inside:
        keep = ~keep
        keep[0, 0] = False
    return np.real(np.fft.ifft2(np.fft.fft2(image) * keep))


def patterns(mean: np.ndarray, std: np.ndarray, wedge: tuple[float, float]) -> dict:
    """The candidate maps, each of ``mean``'s shape (rows, columns)."""
    gradient = np.hypot(ndimage.sobel(mean, 0), ndimage.sobel(mean, 1))
    outline = mean > 0.1 * mean.max()
    distance = ndimage.distance_transform_edt(~outline) + ndimage.distance_transform_edt(outline)
    return {
        "std": std,
        "gradient": gradient,
        "gradient, blurred 2": ndimage.gaussian_filter(gradient, 2),
        "wedge part's envelope": ndimage.gaussian_filter(np.abs(wedge_part(mean, wedge, True)), 2),
        "measured part's envelope": ndimage.gaussian_filter(
            np.abs(wedge_part(mean, wedge, False)), 2
        ),
        "minus distance to the outline": -distance,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="tooth_check.py's --out")
    args = parser.parse_args()
    table = {}
    found = {
        float(path.stem.removeprefix("tooth_check-").removesuffix("deg")): path
        for path in Path(args.folder).glob("tooth_check-*deg.npz")
    }
    for arc, path in sorted(found.items()):
        spread = json.loads(path.with_suffix(".json").read_text()).get("directions")
        if spread is None:  # not a limited arc
            continue
        wedge = tuple(spread["missing_wedge_deg"])
        maps = np.load(path)
        error = np.abs(maps["mean"] - maps["reference"])
        support = support_of(maps["reference"])
        table[f"{arc:g}"] = {
            name: float(stats.spearmanr(m[support], error[support]).statistic)
            for name, m in patterns(maps["mean"], maps["std"], wedge).items()
        }
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
