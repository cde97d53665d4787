"""The committed notebooks: paired with their .py, without outputs, with a parameters cell and
the project kernel, and calling the package rather than holding logic of their own."""
from __future__ import annotations

import ast
import subprocess
import sys

import nbformat
import pytest

from pipeline import paths
from pipeline.io import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_stage_has_a_notebook():
    assert {p.stem for p in NOTEBOOKS} == set(paths.STAGE_NOTEBOOKS.values())


def test_ipynb_match_their_paired_py_sources():
    proc = subprocess.run([sys.executable, "scripts/sync_notebooks.py", "--check"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_parameterised_and_thin(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "microenterprise"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "stage_params = None" in tagged[0].source
    for cell in code:  # thin: no function or class definitions, no loops
        tree = ast.parse(cell.source)
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While)) for n in ast.walk(tree)), cell.source
