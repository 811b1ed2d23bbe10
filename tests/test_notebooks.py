"""The analysis notebooks run top to bottom (shrunk to a few rounds) and are committed clean.

Each notebook reads its knobs from ``DRIFTSCOPE_NB_*`` environment variables in its first code cell
(rounds, probe size, where run files go) and prints a ``[driftscope-nb] NN done: ...`` line computed
from its data at the end; the tests check that line and that the plots rendered.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NB_DIR = Path(__file__).resolve().parents[1] / "analysis_notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
SHRINK = {
    "DRIFTSCOPE_NB_ROUNDS": "3",
    "DRIFTSCOPE_NB_PROBE_SIZE": "64",
    # one torch thread per kernel: on a small shared machine OpenMP's default (all cores) makes a
    # training round 10-20x slower as soon as other processes compete for the cores
    "OMP_NUM_THREADS": "1",
}
CELL_TIMEOUT = 240  # seconds per cell; a whole notebook takes ~10-30 s on 2 cores at test size

# what each notebook's final line must say (beyond "[driftscope-nb] NN done:")
EXPECTED = {
    "01_quickstart": r"7 layers; largest relative variance in \w+ \((head|body)\)",
    # every check the notebook states must hold at test size (seed 0, 3 rounds, one thread: the
    # run is deterministic; margins there: relative variance head/body 4.3 under alpha 0.1 vs 2.5
    # IID, CKA body - head 0.64 vs 0.42)
    "02_the_observation": r"6/6 checks hold",
    "03_fedavg_scaffold_fedpvr": r"3 algorithms compared over 3 rounds",
    "04_reading_run_files": r"by-hand metrics match drift_table for 7 layers",
    "05_watching_a_run_live": r"status complete, 3 rounds committed, watched with \d+ redraws",
    "06_which_labels_drive_drift": r"label alignment head -?[\d.]+ body -?[\d.]+ under skew",
    "07_your_own_model": (
        r"13 layers of SmallResNet on a custom split of 10 clients; "
        r"largest relative variance in \S+ \((head|body)\)"
    ),
}
# what the final line must also say when an optional package is installed (without it the notebook
# skips that section with a message)
EXPECTED_WITH = {
    "05_watching_a_run_live": ("tensorboard", r"; [1-9]\d* TensorBoard scalar tags"),
}


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for out in _outputs(nb):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def test_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name} stores widget state"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_intro_and_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", [])
    for name in ("DRIFTSCOPE_NB_ROUNDS", "DRIFTSCOPE_NB_RUN_DIR"):
        assert name in first_code.source, f"{path.name}: the parameters cell must read {name}"


def test_readme_lists_every_notebook():
    readme = (NB_DIR / "README.md").read_text()
    for path in NOTEBOOKS:
        assert path.name in readme, f"analysis_notebooks/README.md does not mention {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    for key, value in SHRINK.items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "runs"
    monkeypatch.setenv("DRIFTSCOPE_NB_RUN_DIR", str(run_dir))  # the kernel inherits os.environ
    monkeypatch.delenv("MPLBACKEND", raising=False)  # conftest's Agg would hide the inline figures
    before = sorted(p.name for p in NB_DIR.iterdir())

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={
            "metadata": {"path": str(NB_DIR)}
        },  # run where Jupyter would: the notebook's folder
    )
    client.execute()  # raises CellExecutionError, with the failing cell's traceback, on any error

    text = _text(nb)
    number = path.name[:2]
    marker = re.search(rf"\[driftscope-nb\] {number} done: (.*)", text)
    assert marker, f"{path.name} did not print its final '[driftscope-nb] {number} done' line"
    failed = [line for line in text.splitlines() if line.startswith("NO ")]
    assert not failed, f"{path.name}: checks that do not hold: {failed}"
    assert re.search(EXPECTED[path.stem], marker.group(1)), marker.group(0)
    if path.stem in EXPECTED_WITH:
        package, pattern = EXPECTED_WITH[path.stem]
        if importlib.util.find_spec(package) is not None:
            assert re.search(pattern, marker.group(1)), (
                f"{marker.group(0)} ({package} is installed)"
            )
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error"]
    images = [o for o in _outputs(nb) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    assert any(run_dir.glob("*.h5")), "run files must go to DRIFTSCOPE_NB_RUN_DIR"
    assert sorted(p.name for p in NB_DIR.iterdir()) == before, "the notebook wrote into its folder"
