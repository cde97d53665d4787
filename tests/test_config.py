"""The typed configuration model (pipeline/config.py): every key at every depth is checked once,
when a study is loaded; unknown keys are rejected with a hint, wrong types are rejected (never
coerced), and every message names the study file and the key path."""
from __future__ import annotations

import copy
import json
import re

import pydantic
import pytest
import yaml

from pipeline import config
from pipeline.config import StudyConfigError
from pipeline.io import REPO_ROOT, read_yaml
from pipeline.study import load_study, normalise, read_study_file

STUDIES = sorted((REPO_ROOT / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_study_validates_and_its_dump_is_what_it_says(path):
    """The model accepts each shipped study; dumping it gives back exactly the keys written."""
    raw = read_study_file(path)                                     # with its base, if it extends one
    model = config.validate_study(raw, path.name)
    assert model.study == path.stem
    dumped = config.dump(model, raw)
    assert list(dumped) == list(raw)
    for key in ("estimate", "outcomes", "treatment", "usd_ppp_per_lcu", "covariates"):   # as written
        if isinstance(raw.get(key), dict):
            assert json.dumps(dumped[key], default=str) == json.dumps(raw[key], default=str), key


def test_the_model_is_frozen():
    model = config.validate_study(read_yaml(STUDIES[0]), "x")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        model.study = "other"


# ------------------------------------------------------------------------------------------------ unknown keys

@pytest.mark.parametrize("change,where,hint", [
    (lambda c: c.update(estimate={"weight": "w"}), "estimate", "'weight': did you mean 'weights'?"),
    (lambda c: c.update(estimate={"missing_baselin": "listwise"}), "estimate", "did you mean 'missing_baseline'?"),
    (lambda c: c.update(estimate={"sample": {"round": [1]}}), "estimate.sample", "did you mean 'rounds'?"),
    (lambda c: c["outcomes"]["profit"].update(allow_negativ=True), "outcomes.profit", "did you mean 'allow_negative'?"),
    (lambda c: c["outcomes"]["revenue"].update(baseline_col="pre_rev"), "outcomes.revenue", "did you mean 'baseline_column'?"),
    (lambda c: c["treatment"]["arms"][2].update(skill=1), r"treatment\.arms\.2", "did you mean 'skills'?"),
    (lambda c: c["treatment"].update(dumies={}), "treatment", "did you mean 'dummies'?"),
    (lambda c: c["files"][0].update(sha=None), r"files\[0\]", "did you mean 'sha256'?"),
    (lambda c: c.update(clean_params={"winsor_upper": 99}), "clean_params", "did you mean 'winsor_upper_pct'?"),
    (lambda c: c["female_owner"].update(female_code=[2]), "female_owner", "did you mean 'female_codes'?"),
    (lambda c: c["submission"].update(times="t"), "submission", "did you mean 'time'?"),
    (lambda c: c["business_open"].update(closed=[0]), "business_open", "did you mean 'closed_codes'?"),
    (lambda c: c["skills_index"].update(area={}), "skills_index", "did you mean 'areas'?"),
    (lambda c: c.update(takeup={"skill": "x"}), "takeup", "did you mean 'skills'?"),
    (lambda c: c.update(recall_period={"value": "month", "code": {}}), "recall_period", "did you mean 'codes'?"),
    (lambda c: c.update(usd_ppp_per_lcu={"value": 0.5, "sources": "x"}), "usd_ppp_per_lcu", "did you mean 'source'?"),
    (lambda c: c.update(usd_ppp_per_lcu={"lookup": {"file": "m.csv", "where": {}, "column": "f", "colum": "g"}}),
     r"usd_ppp_per_lcu\.lookup", "did you mean 'column'?"),
    (lambda c: c.update(not_interviewed={"column": "x", "code": [1]}), "not_interviewed", "did you mean 'codes'?"),
    (lambda c: c.update(number_format={"decimals": ","}), "number_format", "did you mean 'decimal'?"),
    (lambda c: c.update(identifiers=[{"column": "phone", "actions": "hash"}]), r"identifiers\[0\]", "did you mean 'action'?"),
    (lambda c: c.update(estimat={}), r"\(top level\)", "did you mean 'estimate'?"),
])
def test_misspelt_keys_anywhere_are_rejected_with_a_hint(cfg, change, where, hint):
    change(cfg)
    with pytest.raises(StudyConfigError, match=f"{where}: unknown key ") as err:
        normalise(cfg)
    assert hint in str(err.value)
    assert "the known keys are" in str(err.value)


def test_a_misspelt_key_is_reported_with_the_study_file(tmp_path, cfg):
    cfg["estimate"] = {"weight": "w"}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(StudyConfigError) as err:
        load_study(tmp_path / "tiny.yaml")            # rejected at load time, not when the stage runs
    assert str(err.value).startswith(str(tmp_path / "tiny.yaml") + ": estimate: unknown key 'weight'")


def test_every_mistake_is_reported_at_once(cfg):
    cfg["rounds"] = "0,1"
    cfg["outcomes"]["profit"]["allow_negativ"] = True
    with pytest.raises(StudyConfigError, match="2 problems") as err:
        normalise(cfg)
    assert "rounds: Input should be a valid list" in str(err.value)
    assert "outcomes.profit: unknown key 'allow_negativ'" in str(err.value)


# ------------------------------------------------------------------------------------------------ strict types

@pytest.mark.parametrize("change,where,got", [
    (lambda c: c.update(rounds="0,1"), "rounds", "'0,1'"),                           # not three rounds
    (lambda c: c["outcomes"]["profit"].update(allow_negative="false"), r"outcomes\.profit\.allow_negative", "'false'"),
    (lambda c: c.update(strata=5), "strata", "5"),                                   # a number for a list
    (lambda c: c.update(controls=5), "controls", "5"),
    (lambda c: c.update(not_identifiers="phone"), "not_identifiers", "'phone'"),
    (lambda c: c["treatment"]["arms"][2].update(skills=True), r"treatment\.arms\.2\.skills", "True"),
    (lambda c: c["treatment"]["arms"][2].update(capital="1"), r"treatment\.arms\.2\.capital", "'1'"),
    (lambda c: c.update(rounds=[0, [1]]), r"rounds\[1\]", r"\[1\]"),
    (lambda c: c.update(baseline_round=True), "baseline_round", "True"),
    (lambda c: c["files"][0].update(sha256="abc"), r"files\[0\]\.sha256", "'abc'"),
    (lambda c: c.update(valid_ranges={"age": [15]}), r"valid_ranges\.age", r"\[15\]"),
    (lambda c: c.update(valid_ranges={"age": ["15", 95]}), r"valid_ranges\.age\[0\]", "'15'"),
    (lambda c: c.update(recall_period={"value": "fortnight"}), r"recall_period\.value", "'fortnight'"),
    (lambda c: c.update(estimate={"by_round": "no"}), r"estimate\.by_round", "'no'"),
    (lambda c: c.update(estimate={"seed": 1.5}), r"estimate\.seed", "1.5"),
    (lambda c: c.update(estimate={"vcov": "CR4"}), r"estimate\.vcov", "'CR4'"),
    (lambda c: c.update(estimate={"treatments": 5}), r"estimate\.treatments", "5"),
    (lambda c: c.update(estimate={"missing_baseline": "drop"}), r"estimate\.missing_baseline", "'drop'"),
    (lambda c: c.update(estimate={"sample": {"survivors_only": 1}}), r"estimate\.sample\.survivors_only", "1"),
    (lambda c: c.update(estimate=["weights"]), "estimate", r"\['weights'\]"),
    (lambda c: c.update(clean_params={"winsor_by_round": "true"}), r"clean_params\.winsor_by_round", "'true'"),
    (lambda c: c.update(study="has space"), "study", "'has space'"),
    (lambda c: c.pop("unit_id"), "unit_id", None),
])
def test_wrong_types_are_rejected_not_coerced(cfg, change, where, got):
    change(cfg)
    with pytest.raises(StudyConfigError) as err:
        normalise(cfg)
    message = str(err.value)
    assert message.startswith("study 'tiny': ") or message.startswith("study 'has space': ")
    if got is None:
        assert re.search(f"{where}: required key missing", message), message
    else:
        assert re.search(f"{where}: .*\\(got {got}\\)", message), message


def test_the_short_forms_still_mean_what_they_meant(cfg):
    """A file by its path, an outcome by its column, one stratum, covariates as a list, a number
    as the conversion factor: each is its mapping form."""
    short = copy.deepcopy(cfg)
    short.update(files=[cfg["files"][0]["path"]], strata=cfg["strata"][0] if cfg["strata"] else "region",
                 covariates=list(cfg.get("covariates") or {"hh_size": 1}), usd_ppp_per_lcu=0.25, controls=[])
    long = copy.deepcopy(short)
    long.update(files=[{"path": cfg["files"][0]["path"]}], strata=[short["strata"]],
                covariates={c: c for c in short["covariates"]}, usd_ppp_per_lcu={"value": 0.25})
    assert normalise(short) == normalise(long)


# ------------------------------------------------------------------------------------------------ estimate block

def test_the_estimate_block_has_exactly_the_estimate_stages_keys(cfg):
    """config lists the keys itself (loading a study does not import the estimator); they must be
    the estimate stage's: its Spec fields but ``outcome`` and its stage keys."""
    from dataclasses import fields

    from pipeline.estimation import spec as estimate
    assert {f.name for f in fields(estimate.Spec)} - {"outcome"} == set(config.SPEC_FIELDS)
    assert estimate.STAGE_KEYS == tuple(config.STAGE_FIELDS)
    assert sorted(config.EstimateBlock.model_fields) == list(config.ESTIMATE_KEYS)
    assert set(config.EstimateSample.model_fields) == set(estimate.SAMPLE_KEYS)
    assert set(config.SPEC_FIELDS["missing_baseline"].__args__) == set(estimate.MISSING_BASELINE)
    cfg["estimate"] = {key: None for key in config.ESTIMATE_KEYS}   # every key the stage reads is accepted
    normalise(cfg)


def test_loading_a_study_does_not_import_the_estimator():
    import subprocess
    import sys
    code = ("import sys; from pipeline import study; study.load_study('acz2018'); "
            "print(sorted(m for m in sys.modules if m.startswith('pipeline')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    loaded = eval(out.stdout)
    assert not {"pipeline.estimation", "pipeline.inference"} & set(loaded), loaded


def test_every_estimate_key_is_documented():
    """docs/study_config.md documents every key a study's estimate: block may set (type, default,
    meaning), in the table of its estimate section."""
    text = (REPO_ROOT / "docs" / "study_config.md").read_text(encoding="utf-8")
    section = text.split("### The estimation specification", 1)[1].split("\n## ", 1)[0]
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in section.splitlines() if line.startswith("| `")]
    documented = {key for cells in rows for key in re.findall(r"`([a-z_]+)`", cells[0])}
    missing = sorted(set(config.ESTIMATE_KEYS) - documented)
    assert not missing, f"estimate keys not documented in docs/study_config.md: {missing}"
    listed = [re.findall(r"`([a-z_]+)`", cells[0])[0] for cells in rows]
    assert listed == list(config.EstimateBlock.model_fields)     # the order of a merged block
    for cells in rows:                                   # key | type | default | meaning, none empty
        assert len(cells) == 4 and all(c.strip() for c in cells), cells
