import numpy as np
import pandas as pd
import pytest

from pipeline import clean, construct

PARAMS = {"duplicate_rule": "latest", "flow_period": "month", "winsor_upper_pct": 100, "winsor_lower_pct": 0}


@pytest.fixture
def table(cfg, interim):
    cleaned = clean.clean(interim, cfg, PARAMS)["clean"]
    return construct.construct(cleaned, cfg, {"skills_min_answered_share": 0.5}, "month").set_index(["firm_id", "round"])


def test_grid_attrition_and_assignment(table):
    assert len(table) == 5 * 2                      # five valid firms x two planned rounds
    assert table.loc[("5", 1), "attrited"] == 1 and table.loc[("5", 0), "attrited"] == 0
    assert np.isnan(table.loc[("5", 1), "profit_usd_ppp_month"])
    assert table.loc[("5", 1), "arm"] == "Control"  # firm attributes fill attrited rounds
    assert table.xs(1, level="round")[["treat_skills", "treat_capital"]].to_dict("index") == {
        "1": {"treat_skills": 0, "treat_capital": 0}, "2": {"treat_skills": 1, "treat_capital": 0},
        "3": {"treat_skills": 0, "treat_capital": 1}, "4": {"treat_skills": 1, "treat_capital": 1},
        "5": {"treat_skills": 0, "treat_capital": 0}}
    assert table.xs(0, level="round")["female_owner"].tolist() == [1, 0, 1, 0, 1]
    assert table.loc[("1", 0), "stratum"] == "region=1" and table.loc[("1", 0), "cluster_id"] == "11"
    assert table["followup"].tolist() == [False, True] * 5


def test_outcomes_in_usd_ppp_and_baseline_controls(table):
    assert table.loc[("1", 1), "profit_usd_ppp_month"] == pytest.approx(120 * 0.5)
    assert table.loc[("2", 1), "profit_usd_ppp_month"] == pytest.approx(30 * 52 / 12 * 0.5)
    assert table.loc[("1", 1), "profit_usd_ppp_month_bl"] == pytest.approx(100 * 0.5)
    assert table.loc[("1", 1), "profit_usd_ppp_month_bl_missing"] == 0
    # firm 2 refused baseline profit: 0 plus the missing dummy, so ANCOVA keeps the firm
    assert table.loc[("2", 1), "profit_usd_ppp_month_bl"] == 0
    assert table.loc[("2", 1), "profit_usd_ppp_month_bl_missing"] == 1


def test_skills_index_is_share_of_answered_practices(table):
    assert table.loc[("1", 1), "skills_index"] == 1.0
    assert table.loc[("1", 0), "skills_index"] == 0.5
    assert table.loc[("2", 1), "skills_index"] == 1.0        # bp_1 don't know: 1 of 1 answered
    assert np.isnan(table.loc[("2", 1), "skills_marketing"])  # its only item unanswered
    assert table.loc[("2", 1), "skills_records"] == 1.0


def test_assignment_that_varies_within_a_firm_is_an_error(cfg, interim):
    interim.loc[interim["submission_id"] == "s02", "treat_arm"] = 3
    cleaned = clean.clean(interim, cfg, PARAMS)["clean"]
    with pytest.raises(construct.ConstructError, match=r"tiny: treatment arm \(treat_arm\) differs across rounds for 1 units, e.g. \[1\]"):
        construct.construct(cleaned, cfg, {}, "month")


def test_study_where_all_owners_are_women(cfg, interim):
    cfg["female_owner"] = {"value": 1}
    cleaned = clean.clean(interim, cfg, PARAMS)["clean"]
    table = construct.construct(cleaned, cfg, {}, "month")
    assert (table["female_owner"] == 1).all()
