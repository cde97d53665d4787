"""Run one pipeline stage: execute its notebook with papermill, then publish it.

    python -m pipeline.run_stage clean --study synthetic

1. ``params.yaml`` is read and checked once against its typed model (``io.load_params``,
   ``pipeline.params``: unknown keys and wrong types stop the run, naming the key); the stage's parameters (its group) are injected into
   the notebook's ``parameters`` cell; the notebook runs with the repository root as working
   directory.
2. Run-dependent metadata (papermill and nbclient timings) is scrubbed, so two runs of the
   same inputs give byte-identical notebooks and HTML.
3. The executed notebook is written under ``reports/notebooks/`` with two HTML renderings:
   ``NAME.html`` (code hidden, for reviewers) and ``NAME.code.html`` (with code, for analysts).
4. If anything fails, every output the stage declares in ``dvc.yaml`` is removed, so a failed
   stage leaves nothing half-written; the failed notebook is kept in ``logs/failed/`` to debug.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

from pipeline import paths
from pipeline.io import REPO_ROOT, atomic_path, load_params, read_yaml, write_text

KERNEL_NAME = "microenterprise"

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


def export_html(nb: nbformat.NotebookNode, hide_code: bool) -> str:
    """Self-contained HTML (CSS inlined, no MathJax/require.js from the network)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2",
                            extra_template_paths=[str(Path(__file__).parent / "templates")])
    exporter.exclude_input = hide_code
    exporter.exclude_input_prompt = hide_code
    exporter.exclude_output_prompt = hide_code
    exporter.mathjax_url = ""
    exporter.require_js_url = ""
    exporter.widget_renderer_url = ""
    body, _ = exporter.from_notebook_node(nb)
    return body


def ipc_kernel_manager(socket_dir: str):
    """A kernel manager whose kernel talks over Unix sockets in ``socket_dir`` (a private temporary
    folder) instead of TCP on localhost: no open port, and no "running over TCP without encryption"
    warning on every stage."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):
            return os.path.join(socket_dir, "kernel")

    return IPCKernelManager


def studies_of(params: dict, pipeline: str) -> dict:
    """The studies a pipeline runs: ``studies:`` (default run) or ``evidence.studies:``."""
    if pipeline == "main":
        return dict(params["studies"])
    return dict(params[pipeline]["studies"])


def stage_outs(stage: str, study: str | None, pipeline: str = "main") -> list[Path]:
    """The outputs the pipeline's dvc.yaml declares for this stage (with ${key} filled in for
    per-study stages). Paths are relative to the stage's ``wdir`` (the repository root)."""
    dvc_yaml = read_yaml(paths.pipeline_file(pipeline))
    spec = dvc_yaml["stages"][stage]
    outs = []
    if "foreach" in spec:
        spec = spec["do"]
    for entry in list(spec.get("outs", [])) + list(spec.get("metrics", [])) + list(spec.get("plots", [])):
        name = next(iter(entry)) if isinstance(entry, dict) else entry
        if study is not None:
            name = name.replace("${key}", study).replace("${item}", study)
        outs.append(REPO_ROOT / name)
    return outs


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# What a stage's notebook receives from params.yaml beyond its own group (injected as
# ``stage_params``): notebook parameter -> params key. With the study's entry (per-study stages) or
# the pipeline's study list (report, synthesize) this is everything a stage reads; dvc.yaml declares
# exactly these keys (tests/test_dvc_wiring.py), and the executed notebook records their values.
EXTRA_PARAMS: dict[str, dict[str, str]] = {
    "construct": {"flow_period": "clean.flow_period"},
    "report": {"flow_period": "clean.flow_period"},
    "simulation": {"synthetic_params": "synthetic", "clean_params": "clean", "construct_params": "construct",
                   "estimate_params": "estimate"},
}


def params_value(params: dict, key: str):
    """``params["a"]["b"]`` for key ``a.b``, naming the key when it is absent."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"params.yaml has no {key!r} (read by a stage; see pipeline/run_stage.py EXTRA_PARAMS)")
        node = node[part]
    return node


def declared_params(stage: str, pipeline: str = "main") -> list[str]:
    """The params keys a stage reads, as its dvc.yaml entry must list them (``${key}``: the study)."""
    studies_key = "studies" if pipeline == "main" else f"{pipeline}.studies"
    keys = [stage] + ([f"{studies_key}.${{key}}"] if stage == "ingest" else [])
    keys += list(EXTRA_PARAMS.get(stage, {}).values())
    if stage in ("report", "synthesize"):
        keys.append(studies_key)
    return keys


def notebook_parameters(stage: str, study: str | None, params: dict, pipeline: str) -> dict:
    """What papermill injects: the stage's params group, the keys of EXTRA_PARAMS, and the study
    (per-study stages) or the pipeline's study list (pipeline-level stages), so the executed
    notebook records everything the stage used."""
    studies = studies_of(params, pipeline)
    parameters = {"stage_params": params.get(stage, {}) or {}}
    parameters.update({name: params_value(params, key) for name, key in EXTRA_PARAMS.get(stage, {}).items()})
    if study is not None:
        if study not in studies:
            raise KeyError(f"study {study!r} is not listed in the {pipeline!r} pipeline's studies "
                           f"({', '.join(studies) or 'none'})")
        parameters["study"] = study
        if stage == "ingest":
            parameters["data_dir"] = studies[study]["data_dir"]
    elif stage in ("report", "synthesize"):
        parameters["studies"] = list(studies)
        parameters["pipeline"] = pipeline
    return parameters


def run(stage: str, study: str | None = None, params_path: Path | None = None, pipeline: str = "main") -> Path:
    import papermill as pm

    params = load_params(params_path)     # checked against pipeline.params before anything runs
    parameters = notebook_parameters(stage, study, params, pipeline)

    name = paths.STAGE_NOTEBOOKS[stage]
    out_dir = paths.executed_notebook_dir(stage, study, pipeline)
    executed_path = out_dir / f"{name}.ipynb"
    logging.getLogger("papermill").setLevel(logging.WARNING)
    # The kernel must import this checkout's pipeline package (not another editable install).
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    with tempfile.TemporaryDirectory(prefix=f"stage-{stage}-") as tmp:
        tmp_nb = Path(tmp) / f"{name}.ipynb"
        try:
            pm.execute_notebook(
                str(paths.notebook_source(stage)),
                str(tmp_nb),
                parameters=parameters,
                kernel_name=KERNEL_NAME,
                cwd=str(REPO_ROOT),
                progress_bar=False,
                log_output=False,
                report_mode=False,
                kernel_manager_class=ipc_kernel_manager(tmp),
            )
        except BaseException:
            for out in stage_outs(stage, study, pipeline):
                _remove(out)
            failed_dir = REPO_ROOT / "logs" / "failed"
            failed_dir.mkdir(parents=True, exist_ok=True)
            if tmp_nb.exists():
                shutil.copy(tmp_nb, failed_dir / f"{stage}{'-' + study if study else ''}.ipynb")
                print(f"stage {stage} failed; executed notebook kept in {failed_dir}", file=sys.stderr)
            raise
        nb = scrub_notebook(nbformat.read(tmp_nb, as_version=4))

    with atomic_path(executed_path) as tmp_path:
        nbformat.write(nb, str(tmp_path))
    write_text(out_dir / f"{name}.html", export_html(nb, hide_code=True))
    write_text(out_dir / f"{name}.code.html", export_html(nb, hide_code=False))
    return executed_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(paths.STAGE_NOTEBOOKS))
    parser.add_argument("--study", default=None, help="study name for per-study stages")
    parser.add_argument("--pipeline", default="main", choices=sorted(paths.PIPELINE_FILES),
                        help="main: the default run (dvc.yaml); evidence: the real studies (evidence/dvc.yaml)")
    args = parser.parse_args(argv)
    os.chdir(REPO_ROOT)
    run(args.stage, args.study, pipeline=args.pipeline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
