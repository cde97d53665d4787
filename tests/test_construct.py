import numpy as np
import pandas as pd
import pytest
from _params import params_group
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import clean, construct
from pipeline.schemas import ValidationError

PARAMS = params_group("clean", winsor_upper_pct=100, winsor_lower_pct=0)   # no outlier treatment


@pytest.fixture
def table(cfg, interim):
    cleaned = clean.clean(interim, cfg, PARAMS)["clean"]
    return construct.construct(cleaned, cfg, params_group("construct", skills_min_answered_share=0.5),
                               "month").set_index(["firm_id", "round"])


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
    with pytest.raises(construct.ConstructError,
                       match=r"tiny: treatment arm \(treat_arm\) differs across rounds for 1 units, e.g. \[1\]"):
        construct.construct(cleaned, cfg, params_group("construct"), "month")


def test_study_where_all_owners_are_women(cfg, interim):
    cfg["female_owner"] = {"value": 1}
    cleaned = clean.clean(interim, cfg, PARAMS)["clean"]
    table = construct.construct(cleaned, cfg, params_group("construct"), "month")
    assert (table["female_owner"] == 1).all()


def test_arm_columns_one_per_non_control_arm(table):
    arms = {"arm_training_only": "Training only", "arm_grant_only": "Grant only", "arm_training_grant": "Training + grant"}
    assert [c for c in table.columns if c.startswith("arm_")] == list(arms)
    for col, label in arms.items():
        assert ((table[col] == 1) == (table["arm"] == label)).all()


def test_unchecked_construct_is_the_same_table_without_validation(cfg, interim, monkeypatch):
    cleaned = clean.clean(interim, cfg, PARAMS)["clean"]
    params = params_group("construct", skills_min_answered_share=0.5)
    checked = construct.construct(cleaned, cfg, params, "month")
    monkeypatch.setattr(construct, "validate_frame", lambda *a, **k: pytest.fail("validated although unchecked"))
    pd.testing.assert_frame_equal(construct.construct(cleaned, cfg, params, "month", checked=False), checked,
                                  check_exact=True)


def test_analysis_table_is_validated(cfg, interim):
    cleaned = clean.clean(interim, cfg, PARAMS)["clean"]
    cleaned.loc[0, "bp_1"] = 3                                 # a practice answered "3": share > 1
    with pytest.raises(ValidationError,
                       match=r"tiny: the analysis table fails validation:\n  "
                             r"column 'skills_index', rule in_range\(0, 1\): 1 rows, "
                             r"e.g. \[\{'firm_id': '1', 'round': 0\}\]"):
        construct.construct(cleaned, cfg, params_group("construct"), "month")


def test_unknown_female_code_is_missing_not_male(cfg, interim):
    cfg["female_owner"]["male_codes"] = [1]
    interim.loc[interim["firm_id"] == 2, "owner_sex"] = 7
    out = clean.clean(interim, cfg, PARAMS)
    assert (out["log"]["rule"].str.startswith("unknown_code")).sum() == 2
    table = construct.construct(out["clean"], cfg, params_group("construct"), "month").set_index(["firm_id", "round"])
    assert np.isnan(table.loc[("2", 0), "female_owner"]) and table.loc[("4", 0), "female_owner"] == 0


def test_outcome_already_transformed_is_carried_as_is(cfg, interim):
    """``money: false`` (e.g. the authors' log profit): no recall period, no currency conversion,
    not zeroed for a closed business; the analysis column keeps the outcome's own name."""
    from pipeline.study import StudyConfigError, analysis_column, flow_column, normalise

    interim = interim.assign(log_profit=np.log(interim["profit"].clip(lower=1)))
    cfg = {**cfg, "outcomes": {**cfg["outcomes"],
                               "log_profit": {"column": "log_profit", "money": False, "allow_negative": True}}}
    spec = normalise(cfg)["outcomes"]["log_profit"]
    assert spec["flow"] is False
    assert flow_column("log_profit", spec, "lcu", "month") == "log_profit_value"
    assert analysis_column("log_profit", spec, "month") == "log_profit"
    cleaned = clean.clean(interim, cfg, PARAMS)["clean"]
    t = construct.construct(cleaned, cfg, params_group("construct", skills_min_answered_share=0.5), "month")
    assert "log_profit" in t.columns and "log_profit_unwinsorised" in t.columns
    assert not any(c.startswith("log_profit_usd_ppp") for c in t.columns)
    got = t.set_index(["firm_id", "round"]).loc[("1", 1), "log_profit"]
    firm1 = interim[(interim["firm_id"] == 1) & (interim["round"] == 1)]["log_profit"]
    assert got == pytest.approx(float(firm1.iloc[-1]))     # unchanged (weekly or monthly recall alike)
    with pytest.raises(StudyConfigError, match="money: false"):
        normalise({**cfg, "outcomes": {"x": {"column": "log_profit", "money": False, "flow": True}}})


def test_a_firm_without_a_cluster_stops_the_stage(cfg, interim):
    """A missing cluster id would otherwise pool unrelated firms into one "nan" cluster."""
    cleaned = clean.clean(interim, cfg, PARAMS)["clean"]
    cleaned.loc[cleaned["firm_id"] == 3, "market_id"] = np.nan
    with pytest.raises(construct.ConstructError, match=r"cluster \(market_id\) is missing .* 1 units, e\.g\. \[3\]"):
        construct.construct(cleaned, cfg, params_group("construct"), "month")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-10**6, 10**6).map(float), st.floats(-1e6, 1e6), st.just(np.nan)),
                max_size=40))
def test_format_ids_equals_the_scalar_rule(values):
    """Vectorised id text (12.0 -> "12", 2.5 -> "2.5") equals construct._fmt value by value."""
    floats = pd.Series(values, dtype="float64")
    assert construct.format_ids(floats).tolist() == [construct._fmt(v) for v in floats]
    integers = pd.Series([int(v) for v in values if v == v and float(v).is_integer()], dtype="int64")
    assert construct.format_ids(integers).tolist() == [construct._fmt(v) for v in integers]


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint64"])
def test_integer_ids_are_python_text_whatever_the_integer_type(dtype):
    """Integer ids go to text through Arrow's cast: str(int) for every integer type, extremes
    included, as the pandas str dtype on the same index."""
    info = np.iinfo(dtype)
    values = pd.Series(np.array([info.min, -1 if info.min < 0 else 0, 0, 7, info.max], dtype=dtype), index=[5, 4, 3, 2, 1])
    text = construct.format_ids(values)
    assert text.tolist() == [str(int(v)) for v in values] and text.dtype == "str" and text.index.equals(values.index)


def test_blank_stratum_stops_construct_naming_units_and_rows(cfg, interim):
    """Issue 11: a blank stratum became a stratum 'region=nan' that pooled unrelated firms."""
    interim["region"] = interim["region"].astype("float64")
    interim.loc[interim["firm_id"] == 3, "region"] = np.nan        # firm 3: rows 4 and 5
    cleaned = clean.clean(interim, cfg, PARAMS)["clean"]
    with pytest.raises(construct.ConstructError,
                       match=r"tiny: stratum \(region\) is missing in every round for 1 units, e.g. \[3\] "
                             r"\(rows \[\{'source_file': 'survey.dta', 'source_row': 4\}, "
                             r"\{'source_file': 'survey.dta', 'source_row': 5\}\]\)"):
        construct.construct(cleaned, cfg, params_group("construct"), "month")
    # blank in one round only: the firm's stratum is its other round's (strata do not vary)
    interim.loc[interim["submission_id"] == "s05", "region"] = 2.0
    table = construct.construct(clean.clean(interim, cfg, PARAMS)["clean"], cfg, params_group("construct"), "month")
    assert set(table.loc[table["firm_id"] == "3", "stratum"]) == {"region=2"}


def test_a_hashed_unit_id_keeps_the_source_row_order_whatever_the_salt(cfg, interim):
    """Issue 8: sorted by a salted hash, the analysis table's rows (and the bootstrap draws that
    follow them) would change with the per-checkout salt. Two salts: same table but the ids."""
    from pipeline.privacy import salted_hash

    cfg = {**cfg, "identifiers": [*cfg["identifiers"], {"column": "firm_id", "action": "hash"}]}
    construct_params = params_group("construct", skills_min_answered_share=0.5)
    salts = ("salt of one checkout", "salt of another checkout")
    tables, raw_order, hash_order = [], [], []
    for salt in salts:
        hashed = interim.assign(firm_id=salted_hash(interim["firm_id"], salt))
        raw_of = dict(zip(hashed["firm_id"], interim["firm_id"]))
        table = construct.construct(clean.clean(hashed, cfg, PARAMS)["clean"], cfg, construct_params, "month")
        tables.append(table)
        raw_order.append([raw_of[h] for h in pd.unique(table["firm_id"])])
        hash_order.append([raw_of[h] for h in sorted(pd.unique(table["firm_id"]))])
    assert hash_order[0] != hash_order[1]           # sorting by the hash would order the firms differently
    clean_order = [*pd.unique(clean.clean(interim, cfg, PARAMS)["clean"]["firm_id"])]
    assert raw_order[0] == raw_order[1] == clean_order
    pd.testing.assert_frame_equal(tables[0].drop(columns="firm_id"), tables[1].drop(columns="firm_id"),
                                  check_exact=True)


@pytest.mark.parametrize("values, ids", [
    (pd.Series([2, 3, 1, None, 1, 3], dtype="Int64"), [30, 10, 20, 30, 20, 10]),
    (pd.Series(["b", "c", None, "a", "a", "c"], dtype="object"), ["z", "x", "y", "y", None, "x"]),
    (pd.Series([1.5, np.nan, 1.5, 2.0, 2.0, 0.0]), [3.0, 1.0, 3.0, 2.0, 2.0, 1.0]),
    (pd.Series(["u", "u", "v", "v", "w", "w"], dtype="str"), pd.Series(["k2", "k2", "k1", "k1", "k3", "k3"], dtype="str")),
])
def test_firm_level_equals_the_groupby_rule(values, ids):
    """_firm_level = pandas' groupby(unit).first() over the rows with both present, sorted by unit,
    with name, dtype and index (dtype, name) as groupby gives them (a second implementation)."""
    df = pd.DataFrame({"unit": ids, "col": values})
    expected = df.dropna().groupby("unit")["col"].first()
    pd.testing.assert_series_equal(construct._firm_level(df, "unit", "col", "s", "x"), expected, check_exact=True)


def test_firm_level_names_the_varying_units_in_order():
    df = pd.DataFrame({"unit": [5, 5, 3, 3, 4, 1, 1], "col": [1, 2, 7, 8, 0, 1, None]})
    with pytest.raises(construct.ConstructError, match=r"s: x \(col\) differs across rounds for 2 units, e.g. \[3, 5\]"):
        construct._firm_level(df, "unit", "col", "s", "x")


def test_baseline_round_values_are_the_baseline_row_or_zero_with_a_missing_dummy():
    """Each row gets its firm's round-0 value (0.0 and missing dummy 1 where the firm has no
    round-0 value), for a float column (numpy path, NaN and -0.0) and an Int64 column (pandas path)."""
    table = pd.DataFrame({"_unit": [1, 1, 2, 2, 3], "round": [0, 1, 0, 1, 1],
                          "x": [-0.0, 5.0, np.nan, 7.0, 9.0],
                          "n": pd.array([4, 5, 6, None, 8], dtype="Int64")}, index=[10, 11, 12, 13, 14])
    added = construct._baseline_round_values(table, ["x", "n"], 0, "_unit")
    assert list(added) == ["x_bl_missing", "x_bl", "n_bl_missing", "n_bl"]
    pd.testing.assert_series_equal(added["x_bl_missing"], pd.Series([0, 0, 1, 1, 1], index=table.index, dtype="int8"),
                                   check_names=False)
    x_bl = added["x_bl"]
    assert x_bl.dtype == np.float64 and x_bl.index.equals(table.index)
    assert x_bl.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0] and np.signbit(x_bl.iloc[0]) and not np.signbit(x_bl.iloc[2])
    pd.testing.assert_series_equal(added["n_bl_missing"], pd.Series([0, 0, 0, 0, 1], index=table.index, dtype="int8"),
                                   check_names=False)
    assert added["n_bl"].tolist() == [4, 4, 6, 6, 0]
