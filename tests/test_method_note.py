"""The method note (pipeline/method_note.py): a study's recorded specification in words.

The real-study test runs each of the ten studies through ingest -> clean -> construct -> estimate
(outputs in a tmp folder), builds the report's section from what the stage wrote, and checks its
method note against the study's YAML ``estimate:`` block on top of params.yaml's ``estimate:``
group, both read here as plain YAML (not through the pipeline's resolution).
"""
from __future__ import annotations

import re

import pytest

from pipeline import clean, construct, ingest, paths, report
from pipeline.estimation import stage as estimate_stage
from pipeline.io import load_params
from pipeline.stage_context import build
from pipeline.study import read_study_file
from pipeline.method_note import method_note
from conftest import stage_context
from test_real_studies import SALT, STUDIES, data_dir
from _params import params_group


def summary(**spec) -> dict:
    """A recorded summary: a clustered CR2 ANCOVA with strata and round FE, both sexes."""
    base = {"treatments": ["treat_skills", "treat_capital"], "interact_treatments": True, "baseline_control": True,
            "missing_baseline": "dummy", "fixed_effects": ["stratum", "round"], "cluster": "cluster_id", "vcov": "CR2",
            "controls": [], "weights": None, "sample": None, "gender_interact_all": True, "gender_models": True,
            "baseline_control_by_outcome": {"profit": True, "revenue": True},
            "fixed_effect_levels": {"stratum": 4, "round": 3}, "clusters": 150, "units": 3000}
    return {"outcomes": ["profit", "revenue"], "primary_outcome": "profit", "transforms": ["level", "log"],
            "models": ["pooled", "by_gender", "round_1", "round_2"], "notes": [], "skipped": {},
            "wild_bootstrap": {"below_clusters": 50, "reps": 9999, "weights": "auto", "rows_with_wild_p_value": 0},
            "specification": {**base, **spec}}


def test_a_clustered_ancova_with_strata_is_described_as_recorded():
    note = method_note(summary())
    assert "effects on profit, revenue (primary outcome: profit)" in note
    assert "Treatments: treat_skills, treat_capital, with their interaction where the arms are crossed." in note
    assert "Baseline value of the outcome as a control (ANCOVA; 0 plus a missing-baseline dummy" in note
    assert "Fixed effects: stratum, round." in note
    assert "Standard errors clustered by cluster_id (CR2, Bell-McCaffrey" in note
    assert "By owner gender" in note and "outcome transforms log" in note and "each follow-up round alone (1, 2)" in note
    assert "Wild cluster" not in note   # no model had a wild bootstrap p-value


def test_what_the_data_did_not_support_is_stated():
    rec = summary(baseline_control_by_outcome={"profit": True, "revenue": False}, missing_baseline="listwise",
                  fixed_effect_levels={"stratum": 1, "round": 2}, cluster=None, vcov="CR1", gender_models=False,
                  sample={"rounds": [3], "survivors_only": True}, weights="w", controls=["age"])
    rec["skipped"] = {"gender_models": "owner's sex unknown"}
    rec["notes"] = ["effect models on rounds [3] only", "ignored: vcov: CR2 (no cluster: HC1)"]
    note = method_note(rec)
    assert "(ANCOVA; units without a baseline left out (listwise)) for profit; no baseline control for revenue" in note
    assert "Fixed effects: round (no strata fixed effects); stratum has a single level here." in note
    assert "Heteroskedasticity-robust standard errors (HC1), not clustered." in note
    assert "No models by owner gender (owner's sex unknown)." in note
    assert "Sample: follow-up round(s) 3 only; surviving (open) businesses only." in note
    assert "Weighted by w." in note and "Controls: age." in note
    assert "Ignored for this study: vcov: CR2 (no cluster: HC1)." in note
    assert "baseline control (not requested)" in method_note(summary(baseline_control=False))


def test_unit_clusters_and_wild_bootstrap_are_named():
    rec = summary(clusters=3000, units=3000)
    rec["wild_bootstrap"]["rows_with_wild_p_value"] = 12
    note = method_note(rec)
    assert "clustered by cluster_id, each unit its own cluster, (CR2" in note
    assert "Wild cluster restricted bootstrap p-values (Rademacher weights, Webb's six-point weights at or below " \
           "12 clusters, 9,999 samples) for models with fewer than 50 clusters." in note


# ------------------------------------------------------------------------------ the real studies
# params.yaml's estimate group, with fewer transforms, no round-by-round models and low bootstrap
# counts (they do not enter the note's specification) to keep the run short
LIGHT = {"transforms": ["level", "log"], "by_round": False, "bootstrap_reps": 10, "permutations": 20, "n_jobs": 1,
         "wild_bootstrap_reps": 99}


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    """study -> (report section, estimate params used, output root); each study run once, outputs in a tmp folder."""
    root = tmp_path_factory.mktemp("method_note") / "data"   # stands for data/ (conftest.stage_context)
    params = load_params()
    est = {**params["estimate"], **LIGHT}
    cache: dict = {}

    def get(study: str):
        if study not in cache:
            directory = data_dir(study)
            ingest.run(stage_context("ingest", study, root, params_group("ingest", hash_salt=SALT), data_dir=directory))
            clean.run(stage_context("clean", study, root, params["clean"]))
            construct.run(stage_context("construct", study, root, params["construct"],
                                        flow_period=params["clean"]["flow_period"]))
            out = estimate_stage.run(stage_context("estimate", study, root, est))
            report_inputs = build("report", pipeline="evidence", root=root.parent).inputs
            section, _ = report.study_section(study, out["results"], params["clean"]["flow_period"], 1, report_inputs)
            cache[study] = (section, est, root)
        return cache[study]

    return get


def _outcome(name: str) -> str:
    return rf"{re.escape(name)}(_usd_ppp(_month)?)?"


@pytest.mark.parametrize("study", list(STUDIES))
def test_the_method_note_states_what_the_study_yaml_specifies(study, sections):
    section, est, _ = sections(study)
    note = section["spec_note"]
    raw = read_study_file(paths.study_config_path(study))   # the YAML as written, with the base it extends
    block = raw["estimate"]
    spec = {**est, **block}                                  # the study's block wins, key by key

    first = note.split(").")[0]
    for name in block["outcomes"]:
        assert re.search(rf"(on |, ){_outcome(name)}(,| \()", first), (name, first)
    assert re.search(rf"primary outcome: {_outcome(block['primary_outcome'])}$", first), first
    if isinstance(block["treatments"], list):
        assert f"Treatments: {', '.join(block['treatments'])}." in note
    else:  # auto: the single-intervention indicators of the configured arms
        arms = [*(raw["treatment"].get("arms") or {}).values(), *(raw["treatment"].get("dummies") or {}).values()]
        kinds = sorted({k for arm in arms for k in ("skills", "capital") if arm.get(k)})
        assert f"Treatments: {', '.join(f'treat_{k}' for k in reversed(kinds))}" in note
    outcome_cfg = raw["outcomes"][block["primary_outcome"]]
    if not spec["baseline_control"]:
        assert "No baseline control (not requested)." in note
    elif outcome_cfg.get("baseline_column") or raw.get("baseline_round") is not None:
        assert "Baseline value of the outcome as a control (ANCOVA; 0 plus a missing-baseline dummy" in note
    else:
        assert "No baseline control (the study records no baseline value of its outcomes)." in note
    fe = spec["fixed_effects"]
    assert (f"Fixed effects: {', '.join(fe)}." if "stratum" in fe else
            f"Fixed effects: {', '.join(fe) or 'none'} (no strata fixed effects)") in note
    controls = raw["controls"] if block.get("controls") == "config" else list(block.get("controls") or [])
    controls = [*controls, *(["female_owner"] if block.get("gender_control") else [])]
    assert (f"Controls: {', '.join(controls)}." if controls else "No other controls.") in note
    assert (f"Weighted by {spec['weights']}." if spec.get("weights") else "Unweighted.") in note
    sample = spec.get("sample") or {}
    if sample.get("rounds"):
        assert f"follow-up round(s) {', '.join(map(str, sample['rounds']))} only" in note
    assert ("surviving (open) businesses only" in note) == bool(sample.get("survivors_only"))
    if spec["cluster"] is None:
        assert "Heteroskedasticity-robust standard errors (HC1), not clustered." in note
        assert ("Ignored for this study: vcov: CR2 (no cluster: HC1)." in note) == (spec["vcov"] == "CR2")
    else:
        assert re.search(rf"clustered by {spec['cluster']}(, each unit its own cluster,)? \({spec['vcov']},", note), note
    by_gender = "column" in raw["female_owner"]
    assert ("By owner gender: each treatment for women and for men" in note) == by_gender
    assert ("No models by owner gender" in note) == (not by_gender)
    other = [t for t in spec["transforms"] if t != "level"]
    assert (f"outcome transforms {', '.join(other)}" in note) == bool(other)
    # nothing of params.yaml's global specification where the study overrides it
    if "stratum" not in fe:
        assert "Fixed effects: stratum" not in note
    if not spec["baseline_control"]:
        assert "ANCOVA" not in note
