"""Notebooks, run by a real Jupyter kernel (nbclient): cached cell functions keep hitting
across kernel restarts and re-runs, miss when edited, and hit the same entries in
Parallel workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def execute(notebook, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run ``notebook`` in a fresh kernel; return each code cell's printed text."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        executed = nbclient.NotebookClient(
            nbformat.from_dict(notebook), timeout=300, kernel_name="python3",
            resources={"metadata": {"path": str(cwd)}},
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return ["".join(o.get("text", "") for o in cell.get("outputs", []))
            for cell in executed.cells if cell.cell_type == "code"]


def notebook_of(*cells: str):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


@pytest.mark.slow
def test_feature_extraction_notebook_hits_in_a_second_kernel(tmp_path: Path) -> None:
    notebook = nbformat.read(EXAMPLES / "feature_extraction.ipynb", as_version=4)
    env = {"ARRAYCACHE_EXAMPLE_ROWS": "20000", "ARRAYCACHE_EXAMPLE_CACHE": str(tmp_path / "c")}
    first = execute(notebook, tmp_path, env)
    second = execute(notebook, tmp_path, env)
    assert "extract_features: miss" in first[2], first
    assert "extract_features: hit" in second[2], second
    assert "'memmap'" in second[2]
    assert "1 hits, 1 misses" in second[3], second


@pytest.mark.slow
def test_cell_function_identity(tmp_path: Path) -> None:
    counter = tmp_path / "computed"
    setup = (
        "import arraycache\n"
        f"memory = arraycache.Memory({str(tmp_path / 'cache')!r}, verbose=0)\n"
        f"def mark(tag):\n    open({str(counter)!r}, 'a').write(tag)\n"
    )
    define = "@memory.cache\ndef score(x):\n    mark('s')\n    return x * 10\n"
    edited = "@memory.cache\ndef score(x):\n    mark('e')\n    return x * 11\n"
    first = execute(notebook_of(setup, define, "print(score(1))"), tmp_path)
    assert first[2] == "10\n" and counter.read_text() == "s"
    # A restarted kernel; the cell run twice; the same body in another cell after other
    # code; and the function called in Parallel workers: all hit the first entry.
    again = execute(notebook_of(
        setup, define, "print(score(1))", define, "print(score(1))",
        "x = 5\n" + define + "print(score(1))",
        "print(arraycache.Parallel(n_jobs=2)(arraycache.delayed(score)(1) for _ in range(3)))",
    ), tmp_path)
    assert again[2] == again[4] == again[5] == "10\n"
    assert again[6] == "[10, 10, 10]\n"
    assert counter.read_text() == "s"
    # An edited cell is a miss; putting the old cell back hits its old entry.
    edits = execute(notebook_of(setup, edited, "print(score(1))", define, "print(score(1))"),
                    tmp_path)
    assert (edits[2], edits[4]) == ("11\n", "10\n")
    assert counter.read_text() == "se"
    from tests.conftest import stop_workers_and_check

    stop_workers_and_check()
