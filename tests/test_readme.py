"""README.md's Python examples run as written, one after the other in one namespace (the
later blocks use the names of the earlier ones), from the repository root as a user would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    """The fenced ``python`` blocks of README.md, in order."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_has_its_examples():
    blocks = python_blocks()
    assert len(blocks) >= 4
    assert any("du.LinearisedLaplace(rec)" in block for block in blocks)


@pytest.mark.slow
def test_the_readme_examples_run(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the real-scan example reads data/
    namespace: dict = {"__name__": "readme"}
    for number, block in enumerate(python_blocks(), 1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:
            pytest.fail(f"README python block {number} failed: {error!r}\n{block}")
    printed = capsys.readouterr().out
    assert "psnr_dip_db" in printed  # the pipeline's scores were printed
    psnr = namespace["du"].metrics.psnr
    x, dip, fbp = namespace["x"], namespace["mean"], namespace["reconstruction"]
    assert psnr(dip, x) > psnr(fbp, x) + 3  # the DIP example does what it says
    assert namespace["std"].shape == x.shape and bool((namespace["std"] > 0).all())
