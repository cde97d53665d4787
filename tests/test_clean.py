import numpy as np
import pandas as pd
import pytest
from _params import params_group
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import clean, clean_log, clean_money, clean_values

PARAMS = params_group("clean", winsor_upper_pct=100, winsor_lower_pct=0)   # no outlier treatment


def by_firm_round(df):
    return df.set_index(["firm_id", "round"])


def test_every_raw_row_is_clean_or_rejected_with_a_rule(cfg, interim):
    out = clean.clean(interim, cfg, PARAMS)
    assert len(out["clean"]) + len(out["rejected"]) == len(interim)
    assert sorted(out["clean"]["source_row"].tolist() + out["rejected"]["source_row"].tolist()) == list(range(len(interim)))
    rules = out["rejected"].set_index("submission_id")["rule"].to_dict()
    # s09 repeats s08's answers; s08 is superseded by the later correction s10; arm 9 undefined
    assert rules == {"s09": "duplicate_identical", "s08": "duplicate_conflicting", "s12": "invalid_row"}
    assert out["rejected"].set_index("submission_id").loc["s12", "reason"] == "treat_arm=9 is not a defined arm"
    assert not out["clean"].duplicated(["firm_id", "round"]).any()


def test_unchecked_clean_skips_validation_and_flow_with_the_same_tables(cfg, interim, monkeypatch):
    """checked=False (the simulation's draws after the first): same clean table, rejected rows and
    value log as the checked run, no flow table, and pandera is not called."""
    checked = clean.clean(interim, cfg, PARAMS)
    monkeypatch.setattr(clean, "validate_frame", lambda *a, **k: pytest.fail("validated although unchecked"))
    unchecked = clean.clean(interim, cfg, PARAMS, checked=False)
    for name in ("clean", "rejected", "log"):
        pd.testing.assert_frame_equal(unchecked[name], checked[name], check_exact=True)
    assert unchecked["flow"] is None and checked["flow"] is not None


def test_identical_copies_are_found_among_rows_sharing_a_unit_and_round(cfg, interim):
    """Only rows whose unit x round repeats are hashed: a row with the same answers as a row of
    another firm is not a duplicate; a copy of a unique row (new submission id) is."""
    extra = interim[interim["submission_id"] == "s01"].assign(submission_id="s99", source_row=len(interim))
    out = clean.clean(pd.concat([interim, extra], ignore_index=True), cfg, PARAMS)
    assert out["rejected"].set_index("submission_id").loc["s99", "rule"] == "duplicate_identical"
    assert "s01" in set(out["clean"]["submission_id"])


def test_flow_table_counts_by_arm(cfg, interim):
    flow = clean.clean(interim, cfg, PARAMS)["flow"].set_index("step")
    assert flow.loc["raw rows", "all"] == 12
    assert flow.loc["after invalid rows", "all"] == 11
    assert flow.loc["after duplicates", "all"] == 9
    assert flow.loc["clean", "Training + grant"] == 2
    assert flow.loc["raw rows", "Training + grant"] == 4


def test_missing_codes_closures_recall_and_impossible_values(cfg, interim):
    out = clean.clean(interim, cfg, PARAMS)
    c = by_firm_round(out["clean"])
    assert np.isnan(c.loc[(2, 0), "profit_lcu_month"])                      # -99 refused
    assert c.loc[(2, 1), "profit_lcu_month"] == pytest.approx(30 * 52 / 12)  # weekly -> monthly
    assert c.loc[(2, 1), "revenue_lcu_month"] == pytest.approx(90 * 52 / 12)
    assert np.isnan(c.loc[(2, 1), "bp_1"])                                    # -98 don't know
    assert c.loc[(3, 1), "profit_lcu_month"] == 0 and c.loc[(3, 1), "business_closed"] == 1
    assert c.loc[(3, 1), "revenue_lcu_month"] == 0
    assert c.loc[(1, 1), "business_closed"] == 0
    assert np.isnan(c.loc[(3, 0), "owner_age"])                               # 200 is impossible
    assert c.loc[(4, 0), "profit_lcu_month"] == -20                           # losses allowed
    assert c.loc[(4, 1), "profit_lcu_month"] == 90                            # the latest submission
    log = out["log"].set_index(["source_row", "column"])
    assert log.loc[(2, "profit"), "rule"] == "missing_code:refused"
    assert log.loc[(3, "bp_1"), "rule"] == "missing_code:dont_know"
    assert log.loc[(4, "owner_age"), "rule"].startswith("impossible_value")
    assert log.loc[(4, "owner_age"), "old_value"] == 200
    assert set(log.loc[(5, "profit"), "rule"]) == {"missing_code:not_applicable", "closed_business_zero"}


def test_negative_revenue_is_rejected_as_a_value(cfg, interim):
    interim.loc[interim["submission_id"] == "s01", "revenue"] = -5
    out = clean.clean(interim, cfg, PARAMS)
    assert np.isnan(by_firm_round(out["clean"]).loc[(1, 0), "revenue_lcu_month"])
    assert "impossible_value:outside[0,inf]" in set(out["log"]["rule"])


def test_winsorise_per_group_matches_numpy_percentiles():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"g": np.repeat([0, 1], 500), "y": rng.standard_t(2, 1000)})
    df.loc[3, "y"] = np.nan
    out = clean_money.winsorise(df, {"y": True}, lower_pct=1, upper_pct=99, by="g")
    for g in (0, 1):
        y = df.loc[df["g"] == g, "y"].dropna().to_numpy()
        lo, hi = np.percentile(y, [1, 99])
        expected = np.clip(y, lo, hi)
        got = out.loc[(df["g"] == g) & df["y"].notna(), "y_w"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert np.isnan(out.loc[3, "y_w"])
    upper_only = clean_money.winsorise(df, {"y": False}, lower_pct=1, upper_pct=99, by=None)
    assert upper_only["y_w"].min() == df["y"].min()


def test_duplicate_rules_error_and_drop_all(cfg, interim):
    with pytest.raises(clean.CleaningError, match=r"tiny: 2 conflicting submissions of the same firm_id x round"):
        clean.clean(interim, cfg, {**PARAMS, "duplicate_rule": "error"})
    out = clean.clean(interim, cfg, {**PARAMS, "duplicate_rule": "drop_all"})
    assert 4 not in by_firm_round(out["clean"]).loc[:, :].index.get_level_values(0)[
        by_firm_round(out["clean"]).index.get_level_values(1) == 1]
    assert (out["rejected"]["rule"] == "duplicate_conflicting").sum() == 2


def test_unknown_recall_code_names_column_and_rows(cfg, interim):
    interim.loc[interim["submission_id"] == "s02", "recall_period"] = 7
    with pytest.raises(clean.CleaningError, match=r"recall_period has codes \[7\].*source rows \[1\]"):
        clean.clean(interim, cfg, PARAMS)


def test_empty_value_logs_are_separate_frames_with_the_log_columns():
    """concat_logs([]) hands out copies of one template: changing one leaves the next as it was."""
    first = clean_log.concat_logs([])
    first["extra"] = 1
    second = clean_log.concat_logs([pd.DataFrame(columns=clean_log.LOG_COLUMNS)])
    assert list(second.columns) == clean_log.LOG_COLUMNS and len(second) == 0
    assert dict(second.dtypes.astype(str)) == {"source_file": "object", "source_row": "int64", "column": "object",
                                               "old_value": "float64", "old_text": "object", "new_value": "float64",
                                               "rule": "object"}


def test_recall_factors_are_exact():
    assert clean_money.PER_YEAR["week"] / clean_money.PER_YEAR["month"] == pytest.approx(52 / 12)
    assert clean_money.PER_YEAR["month"] / clean_money.PER_YEAR["two_weeks"] == pytest.approx(12 / 26)


@pytest.mark.parametrize("text,expected", [
    ("1200", 1200), ("1,200", 1200), ("1,200.50", 1200.5), ("KSh 3,000", 3000), ("$ 45", 45), ("45 USD", 45),
    ("R1 200", 1200), ("(500)", -500), ("-20", -20), ("Rs. 1,00,000", None), ("1,5", None), ("about 500", None),
    ("n/a", None), ("12abc", None), ("€1.234,5", None),
])
def test_parse_number(text, expected):
    assert clean_values.parse_number(text) == expected


def test_parse_number_with_decimal_comma():
    assert clean_values.parse_number("1.234,5", decimal=",", thousands=".") == 1234.5
    assert clean_values.parse_number("1 234,5 €", decimal=",", thousands=".") == 1234.5


def test_trim_blanks_what_winsorise_clamps():
    df = pd.DataFrame({"g": [0] * 100, "y": np.arange(100, dtype=float)})
    w, changed_w = clean_money.treat_outliers(df, {"y": True}, 5, 95, by="g", method="winsorise")
    t, changed_t = clean_money.treat_outliers(df, {"y": True}, 5, 95, by="g", method="trim")
    lo, hi = np.percentile(df["y"], [5, 95])
    out = (df["y"] < lo) | (df["y"] > hi)
    assert changed_w == changed_t == {"y": int(out.sum())} and out.sum() == 10
    assert t.loc[out, "y_w"].isna().all() and (t.loc[~out, "y_w"] == df.loc[~out, "y"]).all()
    assert w["y_w"].min() == lo and w["y_w"].max() == hi
    with pytest.raises(clean.CleaningError, match="outlier_method='cap'"):
        clean_money.treat_outliers(df, {"y": True}, 5, 95, by="g", method="cap")


def test_outlier_method_and_study_overrides_reach_the_clean_stage(cfg, interim):
    out = clean.clean(interim, cfg, {**PARAMS, "winsor_upper_pct": 50, "outlier_method": "trim"})
    trimmed = out["clean"]["profit_lcu_month_w"].isna() & out["clean"]["profit_lcu_month"].notna()
    assert trimmed.any() and out["extra"]["method"] == "trim"
    cfg["clean_params"] = {"winsor_upper_pct": 100}        # the study switches it off (already winsorised)
    out = clean.clean(interim, cfg, {**PARAMS, "winsor_upper_pct": 50, "outlier_method": "trim"})
    c = out["clean"]
    pd.testing.assert_series_equal(c["profit_lcu_month_w"], c["profit_lcu_month"], check_names=False)


def test_baseline_column_in_the_same_row(cfg, interim):
    """acz-style pre_<outcome>: converted like the outcome, outliers cut on one value per unit."""
    interim["pre_profit"] = interim["firm_id"].map({1: 100, 2: 10, 3: 50, 4: 1000, 5: 60, 6: 1})
    cfg["outcomes"]["profit"]["baseline_column"] = "pre_profit"
    c = by_firm_round(clean.clean(interim, cfg, PARAMS)["clean"])
    assert c.loc[(4, 1), "profit_lcu_month_pre"] == 1000 and c.loc[(4, 0), "profit_lcu_month_pre"] == 1000
    df = pd.DataFrame({"u": [1, 1, 1, 2, 3, 4], "x": [100.0, 100, 100, 1, 2, 3]})
    w = clean_money.winsorise(df, {"x": False}, 0, 75, by=None, unit="u")
    assert w["x_w"].max() == pytest.approx(np.percentile([100, 1, 2, 3], 75))


def test_not_interviewed_rows_are_kept_and_flagged(cfg, interim):
    cfg["not_interviewed"] = {"when_all_missing": ["profit", "revenue"]}
    interim = interim.astype({"profit": "float64", "revenue": "float64"})
    interim.loc[interim["submission_id"] == "s11", ["profit", "revenue"]] = np.nan
    out = clean.clean(interim, cfg, PARAMS)
    c = by_firm_round(out["clean"])
    assert c.loc[(5, 0), "interviewed"] == 0 and c.loc[(1, 0), "interviewed"] == 1
    assert out["flow"].set_index("step").loc["clean and interviewed", "all"] == len(c) - 1


def test_closed_business_keeps_zero_flows_even_without_a_recall_period(cfg, interim):
    """A closed business answers 'not applicable' (-88) to the recall period too: its flows are 0."""
    interim.loc[interim["submission_id"] == "s06", "recall_period"] = -88
    out = clean.clean(interim, cfg, PARAMS)
    row = out["clean"].set_index(["firm_id", "round"]).loc[(3, 1)]
    assert row["business_closed"] == 1
    assert row["profit_lcu_month"] == 0 and row["revenue_lcu_month"] == 0


def test_flow_summary_of_a_study_without_money_flows_is_a_note_not_an_error():
    from pipeline.clean import flow_summary

    assert list(flow_summary(pd.DataFrame({"log_profit": [0.1, 0.2]}), "month").columns) == ["note"]
    summary = flow_summary(pd.DataFrame({"profit_usd_ppp_month": [1.0, 3.0]}), "month")
    assert summary.loc["profit_usd_ppp_month", "mean"] == 2.0


def _missing_codes_column_by_column(df, columns, codes):
    """The rule written the obvious way (a second implementation to check the 2-D block version)."""
    df, logs = df.copy(), []
    for col in columns:
        if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            continue
        coded = df[col].isin(list(codes))
        for i in np.flatnonzero(coded.to_numpy()):
            logs.append((df["source_file"].iat[i], int(df["source_row"].iat[i]), col, float(df[col].iat[i]),
                         "missing_code:" + codes[int(df[col].iat[i])]))
        if coded.any():
            df[col] = df[col].astype("float64").mask(coded)
    return df, logs


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1.0, -99.0, -98.0, 7.5, np.nan]), st.sampled_from([3, -99, 0]),
                          st.sampled_from([-98.0, 2.0])), min_size=1, max_size=30))
def test_missing_codes_equal_a_column_by_column_reference(rows):
    df = pd.DataFrame(rows, columns=["profit", "hh_size", "bp_1"]).assign(
        source_file="survey.dta", source_row=lambda d: np.arange(len(d)), note="x")
    codes = {-99: "refused", -98: "dont_know"}
    got, log = clean_values.replace_missing_codes(df, ["profit", "hh_size", "bp_1", "note"], codes)
    expected, expected_log = _missing_codes_column_by_column(df, ["profit", "hh_size", "bp_1", "note"], codes)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert list(log.columns) == clean_log.LOG_COLUMNS
    assert sorted(zip(log["source_file"], log["source_row"], log["column"], log["old_value"], log["rule"])) == \
        sorted(expected_log)
    assert log["new_value"].isna().all() and (log["old_text"] == "").all()


# ------------------------------------------------------------------------------------------------
# Issue 11, class 2: silently wrong answers
# ------------------------------------------------------------------------------------------------
def test_sex_coding_with_female_codes_only_and_two_other_codes_stops_naming_them(cfg, interim):
    """female_codes [2] only, and the data hold 1 and 3: before, every non-2 owner became male.
    (Row 7, s08, is a superseded duplicate: the check sees the rows that stay.)"""
    interim.loc[interim["submission_id"].isin(["s07", "s08"]), "owner_sex"] = 3
    with pytest.raises(clean.CleaningError,
                       match=r"tiny: female_owner.column 'owner_sex' holds 2 codes that are not in female_codes \[2\] "
                             r"\(1: survey.dta rows \[2, 3, 9\]; 3: survey.dta rows \[6\]\).*male_codes"):
        clean.clean(interim, cfg, PARAMS)
    # the documented rule: one other code is male (the tiny study relies on it: codes 1 and 2)
    out = clean.clean(interim.assign(owner_sex=interim["owner_sex"].replace(3, 1)), cfg, PARAMS)
    assert set(out["clean"]["owner_sex"]) == {1, 2}
    # with male_codes, an other code is an unknown code: missing, logged, the stage goes on
    cfg["female_owner"]["male_codes"] = [1]
    out = clean.clean(interim, cfg, PARAMS)
    log = out["log"][out["log"]["column"] == "owner_sex"]
    assert sorted(log["source_row"]) == [6] and set(log["rule"]) == {"unknown_code:not in [1, 2]"}


def test_infinite_and_overflowing_numbers_become_missing_logged(cfg, interim):
    """A profit of 1e300 gave estimates of 1e297 and NaN SEs: its square overflows float64."""
    interim["profit"] = interim["profit"].astype("float64")
    interim["owner_age"] = interim["owner_age"].astype("float64")
    interim.loc[interim["submission_id"] == "s01", "profit"] = 1e300
    interim.loc[interim["submission_id"] == "s05", "profit"] = -np.inf
    interim.loc[interim["submission_id"] == "s11", "owner_age"] = np.inf
    out = clean.clean(interim, cfg, PARAMS)
    bound = np.sqrt(np.finfo("float64").max / len(out["clean"]))       # 10 rows after invalid/duplicates
    log = out["log"][out["log"]["rule"].str.startswith("impossible_value:")]
    got = {(r.source_row, r.column, r.rule) for r in log.itertuples()}
    assert got == {(0, "profit", f"impossible_value:magnitude above {bound:.3g} (float64 overflow)"),
                   (4, "profit", "impossible_value:non_finite"), (10, "owner_age", "impossible_value:non_finite"),
                   (4, "owner_age", "impossible_value:outside[15,95]")}
    assert log.set_index(["source_row", "column"]).loc[(0, "profit"), "old_value"] == 1e300
    c = out["clean"].set_index("source_row")
    assert c.loc[[0, 4], "profit"].isna().all() and np.isnan(c.loc[10, "owner_age"])
    numbers = c.select_dtypes("number").to_numpy(dtype="float64")
    assert not np.isinf(numbers).any()


def test_ids_spelt_differently_but_read_as_one_stop_the_stage(cfg, interim):
    """Issue 11: text ids "1" and "01" were merged into one firm. The rule (norm_code) reads them
    as one id, so two spellings are a collision, named with their rows; distinct ids pass."""
    interim["firm_id"] = interim["firm_id"].astype(str)
    assert clean.clean(interim, cfg, PARAMS)["clean"]["firm_id"].nunique() == 5
    interim.loc[interim["submission_id"] == "s03", "firm_id"] = "01"
    interim.loc[interim["submission_id"] == "s05", "firm_id"] = " 1 "
    with pytest.raises(clean.CleaningError,
                       match=r"tiny: ids of 'firm_id' that differ only in spelling .*: '1' \(survey.dta rows \[0, 1\]\) "
                             r"and '01' \(survey.dta rows \[2\]\) and ' 1 ' \(survey.dta rows \[4\]\)"):
        clean.clean(interim, cfg, PARAMS)
    # cluster ids too: "A7" and "a7" are one cluster by the rule
    interim = interim.assign(firm_id=interim["firm_id"].str.strip().replace("01", "2"))
    interim.loc[interim["submission_id"] == "s03", "firm_id"] = "2"
    interim["market_id"] = interim["market_id"].map(lambda m: f"A{m}")
    interim.loc[interim["submission_id"] == "s02", "market_id"] = "a11"
    with pytest.raises(clean.CleaningError, match=r"ids of 'market_id' .*'A11' \(survey.dta rows \[0, 10, 11\]\) "
                                                  r"and 'a11' \(survey.dta rows \[1\]\)"):
        clean.clean(interim, cfg, PARAMS)


def _outliers_one_column_at_a_time(df, columns, lower_pct, upper_pct, by, method, unit=None):
    """Reference: each column's cut-offs from its own grouped quantile, clamped with pandas' mask."""
    out, groups = df.copy(), df[by] if by else pd.Series(0, index=df.index)
    for col, both_tails in columns.items():
        source = df[[col]].assign(_g=groups)
        if unit:
            source = source.assign(_u=df[unit]).dropna(subset=[col]).drop_duplicates("_u")
        values = df[col]
        for pct, tail in ((upper_pct, "upper"), (lower_pct, "lower")):
            if (tail == "upper" and pct >= 100) or (tail == "lower" and not (both_tails and pct > 0)):
                continue
            cut = groups.map(source[col].groupby(source["_g"]).quantile(pct / 100.0))
            hit = values.notna() & ((values > cut) if tail == "upper" else (values < cut))
            values = values.mask(hit, np.nan if method == "trim" else cut)
        out[f"{col}_w"] = values
    return out


@pytest.mark.parametrize("method", ["winsorise", "trim"])
@pytest.mark.parametrize("by, unit", [("g", None), (None, None), (None, "u")])
def test_outliers_of_several_columns_equal_one_column_at_a_time(method, by, unit):
    rng = np.random.default_rng(7)
    n = 400
    df = pd.DataFrame({"g": rng.integers(0, 3, n).astype(float), "u": np.repeat(np.arange(n // 2), 2),
                       "a": rng.lognormal(3, 1, n), "b": rng.normal(0, 50, n), "c": rng.lognormal(1, 2, n)})
    df.loc[rng.random(n) < 0.1, "a"] = np.nan
    df.loc[5, "g"] = np.nan                       # a row without a group keeps its value
    columns = {"a": False, "b": True, "c": True}
    got, changed = clean_money.treat_outliers(df, columns, 2, 97, by=by, method=method, unit=unit)
    expected = _outliers_one_column_at_a_time(df, columns, 2, 97, by, method, unit)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    for col in columns:
        assert changed[col] == int((got[f"{col}_w"].ne(df[col]) & df[col].notna()).sum())


def test_partition_cleans_each_survey_as_alone(synthetic_interim):
    """clean(partition=...) on two surveys stacked (distinct unit ids): each survey's clean rows,
    winsorised columns and overflow bound are those it gets alone, although the second's profits
    (and so its cut-offs) are 1,000 times the first's and the stacked table is twice as long."""
    cfg, interim = synthetic_interim
    params = params_group("clean")
    first = interim.assign(part=0)
    profit = first["profit"].astype("float64") * 1000
    # above the overflow bound of twice the rows, below the bound of the survey's own rows
    bound_alone, bound_pooled = (np.sqrt(np.finfo("float64").max / n) for n in (len(first), 2 * len(first)))
    profit.iloc[5] = (bound_alone + bound_pooled) / 2
    second = first.assign(part=1, firm_id=first["firm_id"].astype("int64") + 10 ** 7, profit=profit)
    stacked = pd.concat([first, second], ignore_index=True)
    together = clean.clean(stacked, cfg, params, checked=False, partition="part")
    for k, survey in enumerate((first, second)):
        alone = clean.clean(survey, cfg, params, checked=False)
        part = together["clean"][together["clean"]["part"] == k].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, alone["clean"].astype({"firm_id": part["firm_id"].dtype}), check_exact=True)
    # the test has power: one table without the partition pools the cut-offs and the bound
    pooled = clean.clean(stacked, cfg, params, checked=False)["clean"]
    assert not pooled["profit_lcu_month_w"].equals(together["clean"]["profit_lcu_month_w"])
    assert pooled["profit_lcu_month"].isna().sum() > together["clean"]["profit_lcu_month"].isna().sum()


def test_outlier_groups_number_each_combination_and_leave_missing_keys_out():
    df = pd.DataFrame({"a": [0, 0, 1, 1, np.nan], "b": [2, 3, 2, 2, 3]})
    assert clean_money.outlier_groups(df, None).tolist() == [0] * 5
    assert clean_money.outlier_groups(df, "b").tolist() == [2, 3, 2, 2, 3]
    got = clean_money.outlier_groups(df, ["a", "b"])
    assert got.iloc[:4].tolist() == [0, 1, 2, 2] and np.isnan(got.iloc[4])
