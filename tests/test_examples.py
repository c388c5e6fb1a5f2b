"""The example notebooks run from top to bottom and draw their figures.

Each notebook has one code cell tagged ``parameters`` with the defaults for a user (minutes
on a laptop). The test inserts a cell right after it that overrides them with tiny values,
the way papermill injects parameters, and executes the notebook with nbclient in a fresh
kernel started from this interpreter. The notebook files stay as committed (no outputs);
the executed copy is written to the test's temporary folder for inspection.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Tiny values: the whole notebook in well under a minute on one core. The results are not
# meaningful at this size; the test checks that every step runs and every figure is drawn.
FAST_PARAMETERS = {
    "real_scan_uncertainty.ipynb": {
        "BINNING": 8,
        "SIZE": 24,
        "CHANNELS": 4,
        "ITERATIONS": 20,
        "EM_STEPS": 1,
        "SAMPLES": 2,
        "CG_ITERATIONS": 5,
        "SIM_SIZE": 16,
        "SIM_ANGLES": 12,
    },
}


def with_parameters(nb, values: dict) -> None:
    """Insert a cell assigning ``values`` right after the cell tagged ``parameters``."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    defaults = nb.cells[tagged[0]].source
    missing = [name for name in values if f"\n{name} = " not in f"\n{defaults}"]
    assert not missing, f"not parameters of the notebook: {missing}"
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(tagged[0] + 1, cell)


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch):
    """A kernelspec ``python3`` running this interpreter, ahead of any user-installed one
    (``JUPYTER_PATH`` is searched first), so the notebook sees the dip_uq under test."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


def test_every_example_has_fast_parameters():
    assert sorted(p.name for p in EXAMPLES.glob("*.ipynb")) == sorted(FAST_PARAMETERS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAST_PARAMETERS))
def test_notebook_runs(name, tmp_path, python3_kernel):
    path = EXAMPLES / name
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{name} is committed with outputs; strip them"
            )
    with_parameters(nb, FAST_PARAMETERS[name])
    client = nbclient.NotebookClient(
        nb,
        kernel_name=python3_kernel,
        timeout=300,  # per cell
        resources={"metadata": {"path": str(EXAMPLES)}},  # run in examples/, as a user would
    )
    try:
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        nbformat.write(nb, tmp_path / name)
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) >= 2, f"expected the figures of {name}, got {len(figures)} PNG outputs"
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "nominal  90%  observed" in text  # the coverage table was printed
