"""The DuckDB construct engine against the pandas one: the same rules give the same analysis table, exactly."""
import json

import numpy as np
import pandas as pd
import pytest
from _params import params_group

from pipeline import clean, construct, construct_duckdb
from pipeline.schemas import ValidationError

CLEAN = params_group("clean", engine="pandas")
CONSTRUCT = params_group("construct")
NO_OUTLIERS = {**CLEAN, "winsor_upper_pct": 100, "winsor_lower_pct": 0}


def both_engines(cleaned, cfg, params=CONSTRUCT, flow_period="month"):
    expected = construct.construct(cleaned, cfg, params, flow_period)
    got = construct_duckdb.construct_frame(cleaned, cfg, params, flow_period)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    return expected


def same_error(cleaned, cfg, error, match):
    """Both engines stop with ``error`` and the same message."""
    messages = []
    for build in (construct.construct, construct_duckdb.construct_frame):
        with pytest.raises(error, match=match) as raised:
            build(cleaned, cfg, CONSTRUCT, "month")
        messages.append(str(raised.value))
    assert messages[0] == messages[1]


@pytest.fixture(scope="module")
def synthetic_clean(synthetic_interim):
    cfg, interim = synthetic_interim
    return cfg, clean.clean(interim, cfg, CLEAN)["clean"]


def test_default_survey_gives_identical_analysis_tables(synthetic_clean):
    cfg, cleaned = synthetic_clean
    table = both_engines(cleaned, cfg)
    # the survey reaches what the rules handle: attrition, missing baselines, unanswered practices
    assert table["attrited"].sum() > 0 and table["profit_usd_ppp_month_bl_missing"].sum() > 0
    assert table["skills_index"].isna().sum() > 0 and table["female_owner"].nunique() == 2


@pytest.mark.parametrize("clean_overrides, construct_overrides", [
    ({}, {"skills_min_answered_share": 0.9}),
    ({}, {"skills_min_answered_share": 0}),
    ({"outlier_method": "trim", "winsor_by_round": False}, {}),
    ({"flow_period": "week", "duplicate_rule": "drop_all"}, {}),
])
def test_other_params_give_identical_tables(synthetic_interim, clean_overrides, construct_overrides):
    cfg, interim = synthetic_interim
    params = {**CLEAN, **clean_overrides}
    cleaned = clean.clean(interim, cfg, params)["clean"]
    both_engines(cleaned, cfg, {**CONSTRUCT, **construct_overrides}, params["flow_period"])


def test_duckdb_clean_then_duckdb_construct_equals_pandas_throughout(synthetic_interim):
    cfg, interim = synthetic_interim
    expected = construct.construct(clean.clean(interim, cfg, CLEAN)["clean"], cfg, CONSTRUCT, "month")
    via_duckdb = clean.clean(interim, cfg, {**CLEAN, "engine": "duckdb"})["clean"]
    pd.testing.assert_frame_equal(construct_duckdb.construct_frame(via_duckdb, cfg, CONSTRUCT, "month"), expected,
                                  check_exact=True)


def test_hand_made_survey(cfg, interim):
    """conftest's survey: attrition (firm 5), a refused baseline profit, an unanswered practice."""
    table = both_engines(clean.clean(interim, cfg, NO_OUTLIERS)["clean"], cfg).set_index(["firm_id", "round"])
    assert table.loc[("5", 1), "attrited"] == 1 and table.loc[("2", 1), "profit_usd_ppp_month_bl_missing"] == 1
    assert table.loc[("2", 1), "profit_usd_ppp_month"] == 30 * 52 / 12 * 0.5


@pytest.mark.parametrize("change", [
    lambda c: c.update(baseline_round=None),                               # no baseline: no _bl columns
    lambda c: c.update(rounds=None),                                       # planned rounds from the data
    lambda c: c.update(strata=[], cluster=None),                           # stratum "all", cluster = firm
    lambda c: c.update(strata=["region", "market_id"]),
    lambda c: c.update(female_owner={"value": 1}),
    lambda c: c.update(female_owner={"value": None}),
    lambda c: c.update(female_owner={"column": "owner_sex", "female_codes": [2], "male_codes": [3]}),
    lambda c: c.update(covariates={"age": "owner_age", "closed_flag": "business_open"}, weight="hh"),
    lambda c: c.update(takeup={"skills": "bp_1"}, credit_access="bp_2"),
    lambda c: c["outcomes"]["revenue"].update(money=False, flow=False),
    lambda c: c.update(skills_index={"columns": ["bp_1", "bp_2", "frac"]}),
])
def test_configurations_give_identical_tables(cfg, interim, change):
    interim["hh"] = np.arange(1.0, len(interim) + 1)
    interim["frac"] = np.linspace(0.01, 0.97, len(interim))    # fractional item scores: the mean's summation order
    change(cfg)
    both_engines(clean.clean(interim, cfg, NO_OUTLIERS)["clean"], cfg)


def test_float_ids_text_strata_and_interviews_not_held(cfg, interim):
    """Float unit and cluster ids are written without ``.0``; text strata as they are; a row the
    survey marks as not interviewed is attrition with a missing business_closed."""
    cleaned = clean.clean(interim, cfg, NO_OUTLIERS)["clean"]
    cleaned = cleaned.astype({"firm_id": "float64", "market_id": "float64"})
    cleaned["region"] = cleaned["region"].map({1: "north", 2: "south"}).astype("str")
    cleaned.loc[cleaned["firm_id"] == 3, "interviewed"] = np.int8(0)
    table = both_engines(cleaned, cfg)
    assert set(table["firm_id"]) == {"1", "2", "3", "4", "5"} and table["cluster_id"].iloc[0] == "11"
    assert table["stratum"].iloc[0] == "region=north" and table.loc[table["firm_id"] == "3", "attrited"].all()


def test_varying_assignment_and_missing_design_values_stop_both_engines_alike(cfg, interim):
    varying = interim.copy()
    varying.loc[varying["submission_id"] == "s02", "treat_arm"] = 3
    same_error(clean.clean(varying, cfg, NO_OUTLIERS)["clean"], cfg, construct.ConstructError,
               r"tiny: treatment arm \(treat_arm\) differs across rounds for 1 units, e.g. \[1\]")
    cleaned = clean.clean(interim, cfg, NO_OUTLIERS)["clean"]
    no_stratum = cleaned.astype({"region": "float64"})
    no_stratum.loc[no_stratum["firm_id"].isin([2, 5]), "region"] = np.nan
    same_error(no_stratum, cfg, construct.ConstructError,
               r"tiny: stratum \(region\) is missing in every round for 2 units, e.g. \[2, 5\] \(rows")
    no_cluster = cleaned.astype({"market_id": "float64"})
    no_cluster.loc[no_cluster["firm_id"] == 4, "market_id"] = np.nan
    same_error(no_cluster, cfg, construct.ConstructError, r"tiny: cluster \(market_id\) is missing in every round")
    undefined = cleaned.copy()
    undefined.loc[0, "treat_arm"] = 9
    same_error(undefined, cfg, construct.ConstructError, r"tiny: rows without a treatment arm .*treat_arm=9")


def test_values_outside_the_contract_stop_the_stage(cfg, interim):
    cleaned = clean.clean(interim, cfg, NO_OUTLIERS)["clean"]
    cleaned["hh"] = -1.0
    cfg["weight"] = "hh"
    for build in (construct.construct, construct_duckdb.construct_frame):
        with pytest.raises(ValidationError, match=r"tiny: the analysis table fails validation:\n  column 'weight'"):
            build(cleaned, cfg, CONSTRUCT, "month")


@pytest.mark.parametrize("change, rule", [
    (lambda c, df: c.update(identifiers=[*c["identifiers"], {"column": "firm_id", "action": "hash"}]),
     "a unit id replaced by a salted hash"),
    (lambda c, df: c["outcomes"]["profit"].update(baseline_column="revenue"), "baseline_column"),
    (lambda c, df: df.__setitem__("owner_age", df["owner_age"].astype(str)), "column 'owner_age' of type VARCHAR"),
    (lambda c, df: df.__setitem__("firm_id", df["firm_id"] + 0.5), "ids or round codes that are not integers"),
])
def test_a_rule_the_engine_lacks_is_refused_naming_study_and_rule(cfg, interim, change, rule):
    cleaned = clean.clean(interim, cfg, NO_OUTLIERS)["clean"]
    change(cfg, cleaned)
    with pytest.raises(construct_duckdb.UnsupportedRule,
                       match=f"tiny: the DuckDB construct engine does not implement .*{rule}"):
        construct_duckdb.construct_frame(cleaned, cfg, CONSTRUCT, "month")


def run_stage(tmp_path, engine_name: str, cleaned: pd.DataFrame) -> dict:
    from conftest import stage_context

    data = tmp_path / engine_name / "data"
    (data / "interim" / "synthetic").mkdir(parents=True)
    cleaned.to_parquet(data / "interim" / "synthetic" / "clean.parquet")
    context = stage_context("construct", "synthetic", data, CONSTRUCT, flow_period="month", engine=engine_name)
    return {**construct.run(context), "files": context.outputs}


def test_construct_stage_writes_the_same_outputs_with_either_engine(tmp_path, synthetic_clean):
    """construct.run on the default study: the out-of-core stage's files hold the pandas stage's
    table and summary; the notebook's tables agree."""
    _, cleaned = synthetic_clean
    results = {name: run_stage(tmp_path, name, cleaned) for name in ("pandas", "duckdb")}
    files = {name: r["files"] for name, r in results.items()}
    assert results["duckdb"]["analysis"] is None                     # never loaded into pandas
    pd.testing.assert_frame_equal(pd.read_parquet(files["duckdb"]["analysis.parquet"]),
                                  pd.read_parquet(files["pandas"]["analysis.parquet"]), check_exact=True)
    summaries = [json.loads(files[name]["construct_summary.json"].read_text()) for name in ("pandas", "duckdb")]
    for summary in summaries:
        assert summary.pop("resolved_config")["extra"]["engine"] in ("pandas", "duckdb")
    assert summaries[0] == summaries[1]
    pd.testing.assert_frame_equal(results["duckdb"]["interviews_by_arm"], results["pandas"]["interviews_by_arm"],
                                  check_exact=True, check_names=False)
    pd.testing.assert_frame_equal(results["duckdb"]["outcome_means"], results["pandas"]["outcome_means"],
                                  check_names=False)
    assert not list(files["duckdb"]["analysis.parquet"].parent.glob(".*.tmp"))


def test_a_study_sets_the_engine_in_its_clean_params(synthetic_clean):
    """The study's clean_params.engine wins over params.yaml's clean.engine, for construct too."""
    from pipeline.stage_context import build

    cfg, _ = synthetic_clean
    context = build("construct", "synthetic", extra={"engine": "pandas"})
    assert construct.clean_setting(cfg, context, "engine") == "pandas"
    assert construct.clean_setting({**cfg, "clean_params": {"engine": "duckdb"}}, context, "engine") == "duckdb"
