"""The two DVC pipelines agree with each other and with params.yaml."""
from __future__ import annotations

from pipeline import paths
from pipeline.io import load_params, read_yaml

PER_STUDY = ("ingest", "clean", "construct", "estimate")


def _normalise(do: dict) -> dict:
    do = {k: v for k, v in do.items() if k != "wdir"}
    do["cmd"] = do["cmd"].replace(" --pipeline evidence", "")
    do["params"] = [p.replace("evidence.studies.", "studies.") if isinstance(p, str) else p for p in do["params"]]
    return do


def test_evidence_per_study_stages_are_the_default_runs_stages():
    main = read_yaml(paths.pipeline_file("main"))["stages"]
    evidence = read_yaml(paths.pipeline_file("evidence"))["stages"]
    for stage in PER_STUDY:
        assert evidence[stage]["do"]["wdir"] == ".."
        assert _normalise(evidence[stage]["do"]) == main[stage]["do"], stage


def test_default_report_depends_on_each_of_its_studies_and_not_on_the_evidence():
    """The default report lists each study's folders (a dep on all of data/processed would pull the
    evidence pipeline into a plain `dvc repro`)."""
    deps = read_yaml(paths.pipeline_file("main"))["stages"]["report"]["deps"]
    for study in load_params()["studies"]:
        assert f"data/processed/{study}" in deps and f"data/interim/{study}" in deps
    assert "data/processed" not in deps and "data/interim" not in deps


def test_every_evidence_study_has_a_configuration_and_is_not_reserved():
    studies = load_params()["evidence"]["studies"]
    assert "bdgk2015" not in studies
    for study in studies:
        assert paths.study_config_path(study).exists(), study


# -- every stage declares exactly the code and the params it reads --------------------------------
import ast  # noqa: E402
import re  # noqa: E402

from pipeline import run_stage, stage_context  # noqa: E402

PIPELINE_DIR = paths.REPO_ROOT / "pipeline"


def pipeline_imports(source: str) -> set[str]:
    """Modules of the pipeline package a source text imports (anywhere, function bodies included),
    as paths under pipeline/ without ``.py`` (``estimation/spec`` for a subpackage's module)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            base = node.module.split(".")[1:]
            found |= {"/".join([*base, a.name]) for a in node.names} | ({"/".join(base)} if base else set())
        elif isinstance(node, ast.Import):
            found |= {"/".join(a.name.split(".")[1:]) for a in node.names if a.name.startswith("pipeline.")}
    return {m for m in found if (PIPELINE_DIR / f"{m}.py").exists()}


def closure(modules: set[str]) -> set[str]:
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += pipeline_imports((PIPELINE_DIR / f"{module}.py").read_text())
    return seen


def stage_entries(pipeline: str):
    for name, spec in read_yaml(paths.pipeline_file(pipeline))["stages"].items():
        yield name, spec.get("do", spec)


def stage_of(entry: dict) -> str:
    match = re.match(r"python -m pipeline\.run_stage (\w+)", entry["cmd"])
    assert match, f"every stage runs through pipeline.run_stage (one module, one notebook): {entry['cmd']}"
    return match.group(1)


def test_every_stage_runs_a_notebook_through_run_stage_and_names_it():
    for pipeline in paths.PIPELINE_FILES:
        for name, entry in stage_entries(pipeline):
            stage = stage_of(entry)
            assert name == stage, (pipeline, name)
            assert f"notebooks/{paths.STAGE_NOTEBOOKS[stage]}.ipynb" in entry["deps"], (pipeline, name)


def test_every_stage_depends_on_exactly_the_pipeline_modules_it_imports():
    """The notebook's imports and run_stage's, followed through the package: a module the stage
    imports but does not declare would leave DVC's cache stale after an edit; a module declared
    but not imported reruns the stage for nothing."""
    for pipeline in paths.PIPELINE_FILES:
        for name, entry in stage_entries(pipeline):
            notebook = paths.REPO_ROOT / "notebooks" / f"{paths.STAGE_NOTEBOOKS[stage_of(entry)]}.py"
            imported = closure(pipeline_imports(notebook.read_text()) | {"run_stage"})
            declared = {d.removeprefix("pipeline/").removesuffix(".py") for d in entry["deps"]
                        if d.startswith("pipeline/") and d.endswith(".py")}
            assert declared == imported, (pipeline, name, "missing:", sorted(imported - declared),
                                          "not imported:", sorted(declared - imported))


def test_every_stage_depends_on_the_templates_it_renders_with():
    for pipeline in paths.PIPELINE_FILES:
        for name, entry in stage_entries(pipeline):
            assert "pipeline/templates/offline.html.j2" in entry["deps"], (pipeline, name)  # run_stage's HTML export
            if name == "report":
                assert "pipeline/templates/index.html.j2" in entry["deps"], pipeline


def test_every_stage_declares_exactly_the_params_its_notebook_is_given():
    """run_stage injects the stage's group and EXTRA_PARAMS; the notebooks read nothing else
    (their load_params() fallback is for JupyterLab only), so this is what DVC must track."""
    for pipeline in paths.PIPELINE_FILES:
        for name, entry in stage_entries(pipeline):
            assert sorted(entry.get("params", [])) == sorted(run_stage.declared_params(name, pipeline)), (pipeline, name)


def test_notebook_parameters_cover_the_declared_params():
    params = load_params()
    for name in ("construct", "report", "simulation"):
        injected = run_stage.notebook_parameters(name, "synthetic" if name == "construct" else None, params, "main")
        for parameter, key in stage_context.EXTRA_PARAMS[name].items():
            assert injected[parameter] == stage_context.params_value(params, key)
        assert injected["stage_params"] == params[name]


def test_only_run_stage_reads_params_yaml():
    """Stage functions receive resolved values; none reaches for params.yaml itself (only the entry
    points do: the runner, and the context builder the notebooks call)."""
    for module in sorted(PIPELINE_DIR.glob("*.py")):
        if module.name not in ("run_stage.py", "io.py", "stage_context.py"):
            assert "load_params(" not in module.read_text(), module.name


def test_evidence_synthesis_and_report_depend_on_each_evidence_study_and_not_on_the_default_run():
    """DVC cannot loop inside a deps list, so the evidence pipeline's pipeline-level stages list
    each study's folders; a dep on all of data/processed would make `make evidence` run the default
    pipeline's stages too. Adding a study to evidence.studies: add its lines here (this test says which)."""
    stages = read_yaml(paths.pipeline_file("evidence"))["stages"]
    studies = list(load_params()["evidence"]["studies"])
    want = {"synthesize": [f"data/processed/{s}" for s in studies],
            "report": [f"data/processed/{s}" for s in studies] + [f"data/interim/{s}" for s in studies]}
    for stage, folders in want.items():
        declared = [d for d in stages[stage]["deps"] if d.startswith(("data/processed", "data/interim"))]
        assert sorted(declared) == sorted(folders), (stage, "missing:", sorted(set(folders) - set(declared)),
                                                     "extra:", sorted(set(declared) - set(folders)))


def test_every_stage_that_reads_a_study_yaml_depends_on_the_bases_it_extends():
    """A study YAML that says ``extends: base/meager.yaml`` is read with that base merged in: an
    edit to the base must rerun each stage that depends on the study's YAML."""
    from pipeline import study as study_module
    for pipeline in paths.PIPELINE_FILES:
        studies = stage_context.studies_of(load_params(), pipeline)
        for name, entry in stage_entries(pipeline):
            if "studies/${key}.yaml" not in entry["deps"]:
                continue
            for study in studies:
                for base in study_module.base_files(paths.study_config_path(study)):
                    relative = base.relative_to(paths.REPO_ROOT)
                    assert any(relative.is_relative_to(dep) for dep in entry["deps"]), (pipeline, name, study, str(relative))
