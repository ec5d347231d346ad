"""docs/api.ipynb runs from top to bottom (on Wine and a small MNIST subset, in seconds)."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "api.ipynb"


def test_the_api_notebook_runs(mnist_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EQP_DATA_DIR", str(mnist_root))
    monkeypatch.setenv("EQP_NOTEBOOK_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    outputs = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "epoch 3: training error" in outputs
    assert "state.safetensors" in outputs
    assert (tmp_path / "work" / "wine-2-epochs" / "summary.json").is_file()
