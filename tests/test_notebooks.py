"""The tutorial notebooks in notebooks/: each runs top to bottom in a fresh python3 kernel from the
repository root (nbclient), as a researcher runs it, and ends with a cell of assertions on what it
computed (scores above chance, a falling loss, a trained generator closer to the real digits than
an untrained one), so a notebook that runs but says something wrong fails too. The committed files
carry no outputs: a notebook is source, and outputs would go stale with every change."""
import nbformat
import pytest
from helpers import REPO, subprocess_env
from nbclient import NotebookClient

NOTEBOOKS = REPO / "notebooks"
# The notebooks README.md describes; a new notebook is run by the test below as soon as it is in the
# folder, and fails test_the_folder_holds_the_documented_notebooks until it is listed here (and there).
DOCUMENTED = ("01_quickstart", "02_inspect_checkpoint", "03_finetune", "04_dcgan", "05_mae")
# Seconds per cell. The longest cells train for well under a minute on 2 cores; a cell that takes
# this long is stuck, and the error names it.
CELL_TIMEOUT = 600

PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_folder_holds_the_documented_notebooks():
    assert tuple(path.stem for path in PATHS) == DOCUMENTED


@pytest.mark.parametrize("path", PATHS, ids=lambda path: path.stem)
def test_committed_notebook_is_stripped(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    for index, cell in enumerate(notebook.cells):
        where = f"{path.name} cell {index}"
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{where} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{where} has an execution count"
        assert "execution" not in cell.metadata, f"{where} keeps execution timings in its metadata"


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    # This checkout on the kernel's PYTHONPATH and the session's compilation cache (helpers.py);
    # TMPDIR puts the notebook's temporary workdirs under the test's own folder.
    env = dict(subprocess_env(), TMPDIR=str(tmp_path))
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(REPO)}})  # the kernel's working directory
    client.execute(env=env)  # raises CellExecutionError (the cell and its traceback) on any error
    last = notebook.cells[-1]
    assert "assert" in last.source, f"{path.name}: the last cell should check what the notebook computed"
    printed = "".join(output.get("text", "") for output in last.outputs)
    assert "checks passed" in printed, f"{path.name}: its checks did not finish: {printed!r}"
