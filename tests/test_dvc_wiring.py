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
