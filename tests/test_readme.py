"""README.md's Python quickstart runs as written, from the repository root as a user would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    """The fenced ``python`` blocks of README.md, in order."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_has_its_quickstart():
    blocks = python_blocks()
    assert blocks and any("du.reconstruct(" in block for block in blocks)


@pytest.mark.slow
def test_the_readme_quickstart_runs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "readme"}
    for number, block in enumerate(python_blocks(), 1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:
            pytest.fail(f"README python block {number} failed: {error!r}\n{block}")
    assert "psnr_dip_db" in capsys.readouterr().out  # the scores were printed
    result, scan = namespace["result"], namespace["scan"]
    scores = result.scores
    assert scores["psnr_dip_db"] > scores["psnr_fbp_db"] + 1  # the DIP does what it says
    assert 0.5 < scores["coverage_90"] <= 1
    std = namespace["std"]
    assert std.shape == scan.truth.shape and bool((std > 0).all())
