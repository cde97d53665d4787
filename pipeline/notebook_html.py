"""A stage's executed notebook made reproducible and readable: run-dependent metadata scrubbed
(two runs of the same inputs give byte-identical notebooks), and the two self-contained HTML
renderings, code hidden for reviewers and with code for analysts (no CDN scripts), from one
exporter set up once per runner (``pipeline/run_stage.py`` warms it while the kernel runs)."""
from __future__ import annotations

import copy
import functools
import threading
from pathlib import Path

import nbformat

# Metadata keys whose values depend on when or where a notebook ran.
_NB_VOLATILE = ("start_time", "end_time", "duration", "input_path", "output_path", "environment_variables")


def scrub_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop timing and path metadata that would make reruns differ; keep parameters and outputs."""
    nb = copy.deepcopy(nb)
    pm = nb.metadata.get("papermill")
    if pm is not None:
        for key in _NB_VOLATILE:
            pm.pop(key, None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"  # papermill gives it a random id
        cell.metadata.pop("execution", None)
        cell_pm = cell.metadata.get("papermill")
        if cell_pm is not None:
            for key in ("start_time", "end_time", "duration"):
                cell_pm.pop(key, None)
    return nb


@functools.lru_cache(maxsize=1)
def _html_exporter():
    """One exporter for both renderings: its template environment, theme CSS and highlighter are
    set up once per runner (building them is most of an export's cost), only the exclusions change."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2",
                            extra_template_paths=[str(Path(__file__).parent / "templates")])
    exporter.mathjax_url = ""
    exporter.require_js_url = ""
    exporter.widget_renderer_url = ""
    return exporter


def _warm_exporter() -> None:
    """Build the exporter and render a small notebook once: the first render compiles the regular
    expressions of the Markdown parser and the Python highlighter (about half a second)."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title\n\nText with `code`, *emphasis* and a [link](x).\n\n- a list"),
        nbformat.v4.new_code_cell("import pandas as pd\nresult = f(x=1)  # comment\nresult['a'].round(3)",
                                  outputs=[nbformat.v4.new_output("execute_result", execution_count=1,
                                                                  data={"text/plain": "1", "text/html": "<b>1</b>"})]),
    ])
    try:
        export_html(nb, hide_code=False)
    except Exception:  # noqa: BLE001 - best effort: the stage's own export raises the same error
        pass


def prepare_exporter_in_background() -> threading.Thread:
    """Import nbconvert, build the exporter and warm it in a thread while the kernel runs the
    notebook (the runner only waits for the kernel meanwhile); join it before the first export."""
    thread = threading.Thread(target=_warm_exporter, name="html-exporter", daemon=True)
    thread.start()
    return thread


def export_html(nb: nbformat.NotebookNode, hide_code: bool) -> str:
    """Self-contained HTML (CSS inlined, no MathJax/require.js from the network). The exclusions
    are read at each call (nbconvert's ``_init_resources``), so reusing the exporter gives the same
    bytes as a fresh one (tests/test_run_stage.py checks)."""
    exporter = _html_exporter()
    exporter.exclude_input = hide_code
    exporter.exclude_input_prompt = hide_code
    exporter.exclude_output_prompt = hide_code
    body, _ = exporter.from_notebook_node(nb)
    return body
