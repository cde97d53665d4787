"""pipeline/stage_context.py: each stage's context reads and writes exactly what dvc.yaml declares.

The reference is DVC's own resolution of dvc.yaml and evidence/dvc.yaml (``foreach``, ``${key}``,
``${item.data_dir}``, ``wdir``), not a second reading of the YAML by hand."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from pipeline import paths, run_stage
from pipeline.io import REPO_ROOT, load_params
from pipeline.stage_context import StageContext, build, is_code_dep


def _normal(path) -> str:
    return os.path.normpath(str(path))


@pytest.fixture(scope="module")
def dvc_stages() -> dict[tuple[str, str], tuple[set[str], set[str]]]:
    """(pipeline, stage address such as clean@synthetic) -> (data deps, outs), absolute, as DVC resolves them."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    files = {file: name for name, file in paths.PIPELINE_FILES.items()}
    found = {}
    with Repo(str(REPO_ROOT)) as repo:
        for stage in repo.index.stages:
            pipeline = files[Path(stage.path_in_repo).as_posix()]
            deps = {_normal(Path(stage.wdir) / d.def_path) for d in stage.deps
                    if not isinstance(d, ParamsDependency) and not is_code_dep(d.def_path)}
            outs = {_normal(Path(stage.wdir) / o.def_path) for o in stage.outs}
            found[(pipeline, stage.name)] = (deps, outs)
    return found


def test_every_stage_context_has_exactly_the_deps_and_outs_dvc_resolves(dvc_stages):
    params = load_params()
    checked = 0
    for (pipeline, address), (deps, outs) in dvc_stages.items():
        stage, _, study = address.partition("@")
        context = build(stage, study or None, pipeline=pipeline, params=params)
        assert {_normal(p) for p in context.inputs.values()} == deps, (pipeline, address)
        assert {_normal(p) for p in context.outputs.values()} == outs, (pipeline, address)
        assert {_normal(p) for p in run_stage.stage_outs(stage, study or None, pipeline)} == outs, (pipeline, address)
        checked += 1
    studies = len(params["studies"]) + len(params["evidence"]["studies"])
    assert checked == 4 * studies + 3 + 2      # 4 per-study stages; synthetic, simulation, report; synthesize, report


def test_inputs_and_outputs_are_named_by_what_the_stage_reads_and_writes():
    clean = build("clean", "synthetic")
    assert clean.inputs == {"ingested.parquet": REPO_ROOT / "data/interim/synthetic/ingested.parquet"}
    assert clean.outputs["clean_summary.json"] == REPO_ROOT / "data/interim/synthetic/clean_summary.json"
    ingest = build("ingest", "acz2018", pipeline="evidence")
    assert ingest.inputs == {"data_dir": REPO_ROOT / "../shared/data/acz2018"}
    report = build("report", pipeline="evidence")
    assert report.inputs["processed/field2013"] == REPO_ROOT / "data/processed/field2013"
    assert report.inputs["synthesis"] == REPO_ROOT / "data/synthesis"
    assert report.studies == tuple(load_params()["evidence"]["studies"])
    assert "studies" not in build("synthesize", pipeline="evidence").inputs   # configuration, not data


def test_root_moves_every_input_and_output_and_overrides_replace_inputs(tmp_path):
    context = build("ingest", "synthetic", root=tmp_path, inputs={"data_dir": tmp_path / "raw"})
    assert context.inputs == {"data_dir": tmp_path / "raw"}
    assert all(p.is_relative_to(tmp_path) for p in context.outputs.values())
    assert context.outputs["ingested.parquet"] == tmp_path / "data/interim/synthetic/ingested.parquet"


def test_params_extra_keys_and_study_config_are_resolved_once():
    params = load_params()
    construct = build("construct", "synthetic", params=params)
    assert dict(construct.params) == params["construct"]
    extra = {"flow_period": params["clean"]["flow_period"], "engine": params["clean"]["engine"],
             "duckdb_memory_limit": params["clean"]["duckdb_memory_limit"]}
    assert dict(construct.extra) == extra
    assert construct.config["study"] == "synthetic" and construct.study == "synthetic"
    injected = build("construct", "synthetic", params=params, group={"x": 1}, extra={"flow_period": "week"})
    assert dict(injected.params) == {"x": 1} and injected.extra["flow_period"] == "week"
    record = construct.resolved_config()
    assert record["params"] == params["construct"] and record["extra"] == extra
    assert record["study"]["study"] == "synthetic" and not any(k.startswith("_") for k in record["study"])


def test_the_context_is_frozen():
    context = build("clean", "synthetic")
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.stage = "construct"
    with pytest.raises(TypeError):
        context.outputs["clean.parquet"] = Path("elsewhere")


@pytest.mark.parametrize("stage, study, pipeline, message", [
    ("cleaning", "synthetic", "main", r"unknown stage 'cleaning'"),
    ("synthesize", None, "main", r"unknown stage 'synthesize': dvc.yaml declares"),
    ("clean", "nowhere", "main", r"study 'nowhere' is not listed in the 'main' pipeline's studies"),
    ("clean", "acz2018", "main", r"study 'acz2018' is not listed in the 'main' pipeline's studies"),
    ("clean", "synthetic", "nowhere", r"unknown pipeline 'nowhere'"),
])
def test_an_unknown_stage_study_or_pipeline_fails_naming_it(stage, study, pipeline, message):
    with pytest.raises(KeyError, match=message):
        build(stage, study, pipeline=pipeline)


def test_a_per_study_stage_needs_its_study():
    with pytest.raises(ValueError, match=r"stage 'clean' runs once per study"):
        build("clean")


def test_a_study_given_by_path_needs_its_raw_folder(tmp_path):
    config = REPO_ROOT / "studies" / "acz2018.yaml"   # a study the default run does not list
    with pytest.raises(KeyError, match=r"no 'data_dir'"):
        build("ingest", config, root=tmp_path)


def test_a_stage_writes_only_declared_outputs(tmp_path):
    from pipeline.io import write_named_outputs

    context = StageContext("clean", study="s", outputs={"a.json": tmp_path / "a.json"})
    with pytest.raises(KeyError, match="b.json"):
        write_named_outputs(context.outputs, {"a.json": {}, "b.json": {}})
    assert not (tmp_path / "a.json").exists()
    write_named_outputs(context.outputs, {"a.json": {"z": 1, "a": 2}})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": 2,\n  "z": 1\n}\n'


def test_a_secret_salt_is_never_recorded():
    context = build("ingest", "synthetic", group={"hash_salt": "s3cret", "hash_salt_env": "X"})
    assert context.params["hash_salt"] == "s3cret"                 # the stage uses it
    assert context.resolved_config()["params"] == {"hash_salt": "(set, not recorded)", "hash_salt_env": "X"}
    assert build("ingest", "synthetic", group={"hash_salt": None}).resolved_config()["params"] == {"hash_salt": None}
