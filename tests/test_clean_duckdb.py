"""The DuckDB clean engine against the pandas one: the same rules give the same tables, exactly."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _params import params_group

from pipeline import clean, clean_duckdb, construct

PANDAS = params_group("clean", engine="pandas")
DUCKDB = params_group("clean", engine="duckdb")
TABLES = ("clean", "rejected", "log", "flow")


def both_engines(interim, cfg, **overrides):
    pandas_out = clean.clean(interim, cfg, {**PANDAS, **overrides})
    duckdb_out = clean.clean(interim, cfg, {**DUCKDB, **overrides})
    for name in TABLES:
        pd.testing.assert_frame_equal(duckdb_out[name], pandas_out[name], check_exact=True, obj=name)
    assert duckdb_out["extra"]["outliers_changed"] == pandas_out["extra"]["outliers_changed"]
    return pandas_out, duckdb_out


def test_default_survey_gives_identical_clean_and_analysis_tables(synthetic_interim):
    cfg, interim = synthetic_interim
    pandas_out, duckdb_out = both_engines(interim, cfg)
    # the survey's mess reaches every rule that changes tables
    assert set(pandas_out["rejected"]["rule"]) == {"duplicate_identical", "duplicate_conflicting"}
    assert {"closed_business_zero", "missing_code:refused"} <= set(pandas_out["log"]["rule"])
    assert all(n > 0 for n in pandas_out["extra"]["outliers_changed"].values())
    group = params_group("construct")
    tables = [construct.construct(out["clean"], cfg, group, PANDAS["flow_period"]) for out in (pandas_out, duckdb_out)]
    pd.testing.assert_frame_equal(tables[1], tables[0], check_exact=True)


@pytest.mark.parametrize("overrides", [
    {"duplicate_rule": "drop_all"},
    {"outlier_method": "trim", "winsor_by_round": False},
    {"winsor_upper_pct": 100, "winsor_lower_pct": 0},
    {"winsor_upper_pct": 90, "winsor_lower_pct": 10, "flow_period": "week"},
])
def test_other_clean_params_give_identical_tables(synthetic_interim, overrides):
    cfg, interim = synthetic_interim
    both_engines(interim, cfg, **overrides)


def test_hand_made_survey_rules(cfg, interim):
    """conftest's survey: invalid arm, identical and conflicting duplicates, codes, closure, impossible age."""
    out, _ = both_engines(interim, cfg, winsor_upper_pct=100, winsor_lower_pct=0)
    rules = out["rejected"].set_index("submission_id")["rule"].to_dict()
    assert rules == {"s09": "duplicate_identical", "s08": "duplicate_conflicting", "s12": "invalid_row"}


def test_missing_values_are_never_clamped_and_cutoffs_are_linear_percentiles(cfg, interim):
    """DuckDB's greatest/least skip NULLs: a clamp written with them would turn a missing profit
    into the cap. Profits of one round: 1..98 and two missing; the 95th percentile of 1..98 is
    1 + 0.95 x 97 = 93.15 (numpy's linear interpolation)."""
    base = interim.iloc[[0]]
    rows = pd.concat([base] * 100, ignore_index=True)
    rows["firm_id"] = np.arange(100, 200, dtype="int32")
    rows["source_row"] = np.arange(100)
    rows["submission_id"] = [f"x{i}" for i in range(100)]
    profit = np.arange(1, 101).astype("int32")
    profit[[10, 60]] = -99                 # refused: missing
    rows["profit"] = profit
    rows["recall_period"] = 2               # month: no conversion
    out, duck = both_engines(rows, cfg, winsor_upper_pct=95, winsor_lower_pct=5)
    c = duck["clean"]
    assert c["profit_lcu_month_w"].isna().sum() == 2
    assert c["profit_lcu_month_w"].max() == np.percentile(c["profit_lcu_month"].dropna(), 95)
    assert c["profit_lcu_month_w"].min() == np.percentile(c["profit_lcu_month"].dropna(), 5)


def test_all_missing_outcome_and_no_duplicates(cfg, interim):
    """A round where every revenue is missing (no cut-off at all) and a survey without repeats."""
    one = interim.drop_duplicates(["firm_id", "round"], keep="last").reset_index(drop=True)
    one.loc[one["round"] == 1, "revenue"] = -98
    both_engines(one, cfg, winsor_upper_pct=99, winsor_lower_pct=1)


def test_conflicting_duplicates_stop_the_stage_with_rule_error(cfg, interim):
    with pytest.raises(clean.CleaningError, match="conflicting submissions"):
        clean.clean(interim, cfg, {**DUCKDB, "duplicate_rule": "error"})


@pytest.mark.parametrize("change, rule", [
    (lambda c: c.update(not_interviewed={"column": "business_open", "codes": [9]}), "not_interviewed"),
    (lambda c: c.update(allowed_codes={"region": [1, 2]}), "allowed_codes"),
    (lambda c: c["outcomes"]["profit"].update(baseline_column="revenue"), "baseline_column"),
])
def test_a_rule_the_engine_lacks_is_refused_naming_study_and_rule(cfg, interim, change, rule):
    change(cfg)
    with pytest.raises(clean_duckdb.UnsupportedRule, match=f"tiny: the DuckDB clean engine does not implement .*{rule}"):
        clean.clean(interim, cfg, DUCKDB)


def test_numbers_stored_as_text_are_refused(cfg, interim):
    interim["profit"] = interim["profit"].astype(str)
    with pytest.raises(clean_duckdb.UnsupportedRule, match="tiny: .* column 'profit' of type VARCHAR"):
        clean.clean(interim, cfg, DUCKDB)


def test_out_of_core_file_gives_the_same_tables(tmp_path, synthetic_interim):
    """clean_parquet (the stage's path): the parquet clean table DuckDB writes reads back equal."""
    cfg, interim = synthetic_interim
    interim.to_parquet(tmp_path / "ingested.parquet")
    out = clean_duckdb.clean_parquet(tmp_path / "ingested.parquet", tmp_path / "clean.parquet", tmp_path / "log.parquet",
                                     cfg, DUCKDB)
    expected = clean.clean(interim, cfg, PANDAS)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "clean.parquet"), expected["clean"], check_exact=True)
    log = pd.read_parquet(tmp_path / "log.parquet").astype({"old_text": "object"})
    pd.testing.assert_frame_equal(log, expected["log"], check_exact=True)
    expected_counts = expected["log"].groupby(["rule", "column"]).size().rename("values").reset_index()
    pd.testing.assert_frame_equal(clean.values_changed(out["log_counts"]), clean.values_changed(expected_counts))
    for name in ("rejected", "flow"):
        pd.testing.assert_frame_equal(out[name], expected[name], check_exact=True, obj=name)
    assert out["rows"] == {"raw": len(interim), "clean": len(expected["clean"]), "rejected": len(expected["rejected"])}
    pd.testing.assert_frame_equal(out["flow_summary"], clean.flow_summary(expected["clean"], PANDAS["flow_period"]))


def test_clean_stage_writes_the_same_outputs_with_either_engine(tmp_path, synthetic_interim):
    """clean.run on the default study: the out-of-core stage's files hold the pandas stage's tables."""
    import json

    from conftest import stage_context

    cfg, interim = synthetic_interim
    results = {}
    for engine, group in (("pandas", PANDAS), ("duckdb", DUCKDB)):
        data = tmp_path / engine / "data"
        (data / "interim" / "synthetic").mkdir(parents=True)
        interim.to_parquet(data / "interim" / "synthetic" / "ingested.parquet")
        context = stage_context("clean", "synthetic", data, group)
        results[engine] = clean.run(context)
        results[engine]["files"] = context.outputs
    pandas_files, duckdb_files = results["pandas"]["files"], results["duckdb"]["files"]
    assert results["duckdb"]["clean"] is None                     # never loaded into pandas
    for name in ("clean.parquet", "rejected_rows.parquet", "value_log.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(duckdb_files[name]), pd.read_parquet(pandas_files[name]),
                                      check_exact=True, obj=name)
    assert duckdb_files["flow.csv"].read_bytes() == pandas_files["flow.csv"].read_bytes()
    summaries = [json.loads(files["clean_summary.json"].read_text()) for files in (pandas_files, duckdb_files)]
    for summary in summaries:
        summary.pop("resolved_config")                            # holds the engine itself
    assert summaries[0] == summaries[1]
    pd.testing.assert_frame_equal(results["duckdb"]["flow_summary"], results["pandas"]["flow_summary"])
    pd.testing.assert_frame_equal(clean.values_changed(results["duckdb"]["log_counts"]),
                                  clean.values_changed(results["pandas"]["log_counts"]))
    assert not list(duckdb_files["clean.parquet"].parent.glob(".*.tmp"))


def test_unusable_numbers_in_float_columns(cfg, interim):
    """An infinite profit and one of 1e300 (float64 sums of squares overflow) become missing, logged."""
    interim["profit"] = interim["profit"].astype("float64")
    interim.loc[0, "profit"] = np.inf
    interim.loc[1, "profit"] = 1e300
    out, _ = both_engines(interim, cfg)
    rules = out["log"].set_index(["source_row", "column"])["rule"]
    assert rules[(0, "profit")] == "impossible_value:non_finite"
    assert rules[(1, "profit")].startswith("impossible_value:magnitude above")


def test_connection_spills_to_a_private_folder_removed_after_the_connection_closes():
    import duckdb

    with clean_duckdb.connection("64MB") as con:
        spill = con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]
        limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        assert "duckdb-spill-" in spill and Path(spill).is_dir()
        assert limit.replace(" ", "").upper() in ("64.0MB", "61.0MIB", "64MB")
    assert not Path(spill).exists()
    with pytest.raises(duckdb.ConnectionException):
        con.execute("SELECT 1")
    with clean_duckdb.connection() as con:       # no limit: DuckDB's own default folder, nothing made here
        assert "duckdb-spill-" not in con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]
