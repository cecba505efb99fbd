"""The exploration notebook runs end to end (on a tiny configuration), so it cannot rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from hf_cnn_ft.extras.synthetic import make_shapes_folder

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "explore_and_finetune.ipynb"


def test_notebook_executes_and_shows_the_mistakes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_CNN_FT_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("HF_CNN_FT_NOTEBOOK_WORK", str(tmp_path))
    monkeypatch.setenv("HF_CNN_FT_NOTEBOOK_DATA", str(make_shapes_folder(tmp_path / "shapes", per_class=30, size=40)))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "test: accuracy" in text and "test images misclassified" in text and "expected calibration error" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # class grid, counts, confusion matrix, the report's reliability diagram and top losses (and the mistakes)
    assert len(images) >= 5
    assert (tmp_path / "outputs" / "notebook" / "metrics.json").is_file()
