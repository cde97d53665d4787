"""The stage kernel: launched first by the runner, preloading what the notebook imports without
changing what the notebook sees (namespace, execution counts), stopped with its process group."""
import os
import subprocess
import sys

import nbformat

from pipeline import io, paths, stage_kernel


def test_the_kernel_module_agrees_with_io_on_the_repository_root():
    assert stage_kernel.REPO_ROOT == io.REPO_ROOT


def test_notebook_imports_lists_each_import_statement_and_its_possible_submodules(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("import not_code"),
        nbformat.v4.new_code_cell("study = 'x'"),
        nbformat.v4.new_code_cell("import pandas as pd\nimport os.path\n\nfrom pipeline import clean, stage_context\n"
                                  "def f():\n    from pipeline.estimation import stage\n"),
        nbformat.v4.new_code_cell("%matplotlib inline\nimport magic_cell_module"),     # not Python: skipped
        nbformat.v4.new_code_cell("from . import relative\nimport pandas"),             # relative: skipped; repeat: once
    ])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert stage_kernel.notebook_imports(path) == [
        "pandas", "os.path", "pipeline", "pipeline.clean", "pipeline.stage_context",
        "pipeline.estimation", "pipeline.estimation.stage"]


def test_each_stage_notebook_imports_its_stage_module():
    for stage, notebook in paths.STAGE_NOTEBOOKS.items():
        imports = stage_kernel.notebook_imports(paths.notebook_source(stage))
        assert "pipeline.stage_context" in imports, notebook
    assert "pipeline.clean" in stage_kernel.notebook_imports(paths.notebook_source("clean"))


def _in_fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=io.REPO_ROOT, capture_output=True, text=True,
                          check=True).stdout


def test_preload_imports_the_notebook_modules_and_ignores_an_unknown_stage():
    out = _in_fresh_python(
        "import sys\n"
        "from pipeline.stage_kernel import preload_notebook_imports\n"
        "print('pipeline.clean' in sys.modules, 'pandas' in sys.modules)\n"
        "preload_notebook_imports('no such stage')\n"
        "preload_notebook_imports('clean')\n"
        "print('pipeline.clean' in sys.modules, 'pandas' in sys.modules)\n")
    assert out.split() == ["False", "False", "True", "True"]


def test_a_launched_kernel_has_preloaded_the_notebook_and_counts_from_one():
    """A real kernel: the notebook's first execution is number 1 and sees no preloaded names;
    ``close`` stops the kernel process and removes its socket folder."""
    from jupyter_client.blocking.client import BlockingKernelClient

    kernel = stage_kernel.StageKernel("clean")
    process = kernel.manager.provisioner.process
    try:
        # parent: the kernel's liveness is its process (as for papermill's client), not a first
        # heartbeat that a slow start under load may miss
        client = BlockingKernelClient(parent=kernel.manager)
        client.load_connection_info(kernel.manager.get_connection_info())
        client.start_channels()
        client.wait_for_ready(timeout=60)
        outputs = []
        reply = client.execute_interactive(
            "import sys; print('pipeline.clean' in sys.modules, [n for n in ('pd', 'clean', 'pipeline', 'importlib') "
            "if n in dir()])", timeout=60,
            output_hook=lambda msg: outputs.append(msg["content"].get("text", "")))
        client.stop_channels()
        assert reply["content"]["status"] == "ok"
        assert reply["content"]["execution_count"] == 1
        assert "".join(outputs).split() == ["True", "[]"]
    finally:
        socket_dir = kernel._socket_dir.name
        kernel.close()
    assert process.poll() is not None
    assert os.path.dirname(kernel.manager.connection_file) == socket_dir      # no key file left elsewhere
    assert not os.path.exists(socket_dir)
