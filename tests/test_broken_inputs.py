"""A corpus of broken inputs, made in code. Each gets a clear error naming the file, column and
rows, or a recorded rejection (rejected row / logged value), and never a half-written output:
after a failure the stage's output folder holds no new file."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import files_under, stage_context
from pipeline import clean, construct, ingest
from pipeline.io import OutputError, write_outputs
from pipeline.schemas import ValidationError
from pipeline.study import StudyConfigError
from _params import params_group

CLEAN = params_group("clean", winsor_upper_pct=100, winsor_lower_pct=0)   # no outlier treatment


def survey() -> pd.DataFrame:
    """Four households x two rounds, text codes as a CSV export has them."""
    return pd.DataFrame({
        "hh_id": [1, 1, 2, 2, 3, 3, 4, 4],
        "round": [0, 1] * 4,
        "arm": ["control", "control", "training", "training", "grant", "grant", "both", "both"],
        "sex": ["F", "F", "M", "M", "F", "F", "M", "M"],
        "submitted": [f"2024-0{1 + r}-0{h} 10:00:00" for h in (1, 2, 3, 4) for r in (0, 1)],
        "profit": [100, 120, 80, 90, 50, 70, 30, 60],
        "revenue": [300, 320, 200, 210, 150, 170, 90, 160],
        "age": [30, 30, 41, 41, 25, 25, 52, 52],
        "weight": [1.0] * 8,
    })


def config(**changes) -> dict:
    cfg = {
        "study": "broken",
        "files": [{"path": "survey.csv", "format": "csv", "sha256": None}],
        "identifiers": [],
        "unit_id": "hh_id",
        "round": "round",
        "rounds": [0, 1],
        "baseline_round": 0,
        "submission": {"time": "submitted"},
        "weight": "weight",
        "female_owner": {"column": "sex", "female_codes": ["F"], "male_codes": ["M"]},
        "treatment": {"column": "arm", "arms": {
            "control": {"label": "Control", "skills": 0, "capital": 0},
            "training": {"label": "Training", "skills": 1, "capital": 0},
            "grant": {"label": "Grant", "skills": 0, "capital": 1},
            "both": {"label": "Training + grant", "skills": 1, "capital": 1}}},
        "recall_period": {"value": "month"},
        "currency": "KES",
        "usd_ppp_per_lcu": {"lcu_per_usd_ppp": 40, "source": "test"},
        "outcomes": {"profit": {"column": "profit", "allow_negative": True}, "revenue": {"column": "revenue"}},
        "valid_ranges": {"age": [15, 95]},
        "covariates": {"owner_age": "age"},
    }
    cfg.update(changes)
    return cfg


@pytest.fixture
def study(tmp_path):
    """write(frame, **config changes) -> (path to the YAML, data folder); raw data in tmp_path/raw."""
    raw = tmp_path / "raw"
    raw.mkdir()

    def write(frame: pd.DataFrame | None = None, **changes):
        if frame is not None:
            frame.to_csv(raw / "survey.csv", index=False)
        path = tmp_path / "broken.yaml"
        path.write_text(yaml.safe_dump(config(**changes), sort_keys=False))
        return path, raw

    return write


def run_all(path, raw, outputs, params=None):
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    clean.run(stage_context("clean", path, outputs, params or CLEAN))
    return construct.run(stage_context("construct", path, outputs, params_group("construct"), flow_period="month"))


def test_the_fixture_itself_runs_clean(study, outputs):
    path, raw = study(survey())
    result = run_all(path, raw, outputs)
    table = result["analysis"].set_index(["firm_id", "round"])
    assert len(table) == 8 and table.loc[("4", 1), "treat_skills"] == 1 == table.loc[("4", 1), "treat_capital"]
    assert table.loc[("1", 0), "profit_usd_ppp_month"] == pytest.approx(100 / 40)
    assert files_under(outputs) == {
        "interim/broken/ingested.parquet", "interim/broken/codebook.csv", "interim/broken/ingest_summary.json",
        "interim/broken/clean.parquet", "interim/broken/rejected_rows.parquet", "interim/broken/value_log.parquet",
        "interim/broken/flow.csv", "interim/broken/clean_summary.json",
        "processed/broken/analysis.parquet", "processed/broken/construct_summary.json"}


# ------------------------------------------------------------------------------------------------ files

def test_empty_file(study, outputs):
    path, raw = study()
    (raw / "survey.csv").write_bytes(b"")
    with pytest.raises(ingest.IngestError, match=r"survey\.csv: file is empty"):
        ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    assert files_under(outputs) == set()


def test_header_only_file(study, outputs):
    path, raw = study(survey().iloc[:0])
    with pytest.raises(ingest.IngestError, match=r"survey\.csv: file has no rows"):
        ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    assert files_under(outputs) == set()


def test_missing_column_is_named(study, outputs):
    path, raw = study(survey().drop(columns=["revenue"]))
    with pytest.raises(ingest.IngestError, match=r"survey\.csv: required columns \['revenue'\] not in the file"):
        ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    assert files_under(outputs) == set()


@pytest.mark.parametrize("name,fmt,message", [
    ("survey.dta", "dta", "cannot read as Stata"),
    ("survey.sav", "sav", "cannot read as SPSS"),
    ("survey.xlsx", "xlsx", "cannot read as Excel"),
    ("survey.parquet", "parquet", "cannot read as parquet"),
    ("survey.csv", "csv", "cannot read as CSV"),
])
def test_unreadable_file(study, outputs, name, fmt, message):
    path, raw = study(files=[{"path": name, "format": fmt}])
    (raw / name).write_bytes(b"\xff\xfe\x00garbage \x81\x82 not a survey\n\x00\x01" * 20)
    with pytest.raises(ingest.IngestError, match=rf"{name.replace('.', '[.]')}: {message}"):
        ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    assert files_under(outputs) == set()


def test_checksum_mismatch_writes_nothing(study, outputs):
    path, raw = study(survey(), files=[{"path": "survey.csv", "format": "csv", "sha256": "0" * 64}])
    with pytest.raises(ingest.IngestError, match=r"survey\.csv: sha256 [0-9a-f]{64} does not match"):
        ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    assert files_under(outputs) == set()


def test_group_prefixes_that_collide_are_named(study, outputs):
    frame = survey().rename(columns={"profit": "g1/profit"}).assign(**{"g2/profit": 1})
    path, raw = study(frame, files=[{"path": "survey.csv", "strip_group_prefixes": True}])
    with pytest.raises(ingest.IngestError, match=r"\['g1/profit', 'g2/profit'\] -> 'profit'"):
        ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    assert files_under(outputs) == set()


# ------------------------------------------------------------------------------------------------ values

def test_text_in_a_numeric_column_is_parsed_or_logged(study, outputs):
    frame = survey().astype({"profit": object, "revenue": object})
    frame.loc[0, "profit"] = "KSh 1,200"
    frame.loc[1, "profit"] = "abc"
    frame.loc[2, "profit"] = "(50)"
    frame.loc[3, "revenue"] = "about 3000"
    frame.loc[4, "revenue"] = ""
    path, raw = study(frame)
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    result = clean.run(stage_context("clean", path, outputs, CLEAN))
    c = result["clean"].set_index("source_row")
    assert c.loc[0, "profit_kes_month"] == 1200 and c.loc[2, "profit_kes_month"] == -50
    assert np.isnan(c.loc[1, "profit_kes_month"]) and np.isnan(c.loc[3, "revenue_kes_month"])
    assert np.isnan(c.loc[4, "revenue_kes_month"])
    log = result["log"]
    bad = log[log["rule"] == "unparseable_number"].set_index("source_row")
    assert sorted(bad.index) == [1, 3]
    assert bad.loc[1, "column"] == "profit" and bad.loc[1, "old_text"] == "abc"
    assert bad.loc[3, "column"] == "revenue" and bad.loc[3, "old_text"] == "about 3000"
    assert len(result["clean"]) == 8   # values, not rows, are rejected


def test_duplicated_ids_are_rejected_rows(study, outputs):
    frame = survey()
    copy = frame.iloc[[1]].assign(submitted="2024-03-01 10:00:00")               # same answers again
    correction = frame.iloc[[3]].assign(profit=95, submitted="2024-03-02 10:00:00")  # a later correction
    path, raw = study(pd.concat([frame, copy, correction], ignore_index=True))
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    result = clean.run(stage_context("clean", path, outputs, CLEAN))
    rules = result["rejected"].set_index("source_row")["rule"].to_dict()
    assert rules == {8: "duplicate_identical", 3: "duplicate_conflicting"}
    assert len(result["clean"]) + len(result["rejected"]) == 10
    c = result["clean"].set_index(["hh_id", "round"])
    assert c.loc[(2, 1), "profit_kes_month"] == 95


def test_duplicated_ids_with_the_error_rule_stop_the_stage(study, outputs):
    frame = survey()
    correction = frame.iloc[[3]].assign(profit=95, submitted="2024-03-02 10:00:00")
    path, raw = study(pd.concat([frame, correction], ignore_index=True))
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    before = files_under(outputs)
    with pytest.raises(clean.CleaningError,
                       match=r"broken: 2 conflicting submissions of the same hh_id x round \(source rows \[3, 8\]; "
                             r"ids \[\{'hh_id': 2, 'round': 1\}\]\)"):
        clean.run(stage_context("clean", path, outputs, {**CLEAN, "duplicate_rule": "error"}))
    assert files_under(outputs) == before   # the ingest outputs only


def test_csv_ids_1_and_01_are_not_merged_into_one_firm(study, outputs):
    """Issue 11: read as numbers, "01" became 1 and its household silently replaced household 1
    (a 'later correction'). Ingest keeps such ids as text; clean stops naming both and their rows."""
    frame = survey().astype({"hh_id": str})
    frame.loc[[2, 3], "hh_id"] = "01"
    path, raw = study(frame)
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    interim = pd.read_parquet(outputs / "interim" / "broken" / "ingested.parquet")
    assert interim["hh_id"].tolist() == ["1", "1", "01", "01", "3", "3", "4", "4"]
    before = files_under(outputs)
    with pytest.raises(clean.CleaningError, match=r"broken: ids of 'hh_id' that differ only in spelling .*"
                                                  r"'1' \(survey.csv rows \[0, 1\]\) and '01' \(survey.csv rows \[2, 3\]\)"):
        clean.run(stage_context("clean", path, outputs, CLEAN))
    assert files_under(outputs) == before
    # ids that are canonical integers are read as numbers, as before (same interim table)
    path, raw = study(survey())
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    assert pd.read_parquet(outputs / "interim" / "broken" / "ingested.parquet")["hh_id"].dtype == "int64"


def test_blank_stratum_and_huge_profit_are_not_silently_used(study, outputs):
    """Issue 11: a blank stratum became 'region=nan'; a profit of 1e300 gave estimates of 1e297."""
    frame = survey().assign(region=[1, 1, None, None, 2, 2, 1, 1])
    path, raw = study(frame, strata=["region"])
    with pytest.raises(construct.ConstructError, match=r"broken: stratum \(region\) is missing in every round "
                                                       r"for 1 units, e.g. \[2\]"):
        run_all(path, raw, outputs)
    frame = survey().astype({"profit": float})
    frame.loc[2, "profit"] = 1e300
    path, raw = study(frame)
    table = run_all(path, raw, outputs)["analysis"].set_index(["firm_id", "round"])
    assert np.isnan(table.loc[("2", 0), "profit_usd_ppp_month"]) and np.isfinite(table["profit_usd_ppp_month"].max())
    log = pd.read_parquet(outputs / "interim" / "broken" / "value_log.parquet").set_index(["source_row", "column"])
    assert log.loc[(2, "profit"), "rule"].startswith("impossible_value:magnitude above")


def test_unknown_codes_reject_rows_or_values(study, outputs):
    frame = survey()
    frame.loc[6, "arm"] = "placebo"     # not a defined arm: the row is rejected
    frame.loc[7, "arm"] = "placebo"
    frame.loc[5, "round"] = 5           # not a planned round
    frame.loc[[2, 3], "sex"] = "X"      # not a declared code: the value is blanked, logged
    path, raw = study(frame)
    result = run_all(path, raw, outputs)
    rejected = outputs / "interim" / "broken" / "rejected_rows.parquet"
    reasons = pd.read_parquet(rejected).set_index("source_row")["reason"].to_dict()
    assert reasons == {5: "round=5 is not a defined round", 6: "arm=placebo is not a defined arm",
                       7: "arm=placebo is not a defined arm"}
    log = pd.read_parquet(outputs / "interim" / "broken" / "value_log.parquet")
    unknown = log[log["rule"].str.startswith("unknown_code")]
    assert unknown["source_row"].tolist() == [2, 3] and set(unknown["column"]) == {"sex"}
    table = result["analysis"].set_index(["firm_id", "round"])
    assert np.isnan(table.loc[("2", 0), "female_owner"]) and table.loc[("1", 0), "female_owner"] == 1
    assert table.loc[("3", 1), "attrited"] == 1        # its round-1 row was rejected
    assert "4" not in table.index.get_level_values(0)  # no valid row at all


def test_impossible_value_is_logged_not_dropped(study, outputs):
    frame = survey()
    frame.loc[4, "age"] = 230
    frame.loc[5, "revenue"] = -10
    path, raw = study(frame)
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    log = clean.run(stage_context("clean", path, outputs, CLEAN))["log"].set_index(["source_row", "column"])
    assert log.loc[(4, "age"), "rule"] == "impossible_value:outside[15,95]" and log.loc[(4, "age"), "old_value"] == 230
    assert log.loc[(5, "revenue"), "rule"] == "impossible_value:outside[0,inf]"


def test_validation_failure_names_study_column_rule_rows_and_writes_nothing(study, outputs):
    frame = survey()
    frame.loc[[2, 5], "weight"] = [0.0, -1.0]
    path, raw = study(frame)
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    before = files_under(outputs)
    with pytest.raises(ValidationError) as err:
        clean.run(stage_context("clean", path, outputs, CLEAN))
    message = str(err.value)
    assert "broken: the clean table fails validation" in message
    assert "column 'weight', rule greater_than(0): 2 rows" in message
    assert "'source_row': 2" in message and "'source_row': 5" in message
    assert files_under(outputs) == before


def test_construct_failure_writes_nothing(study, outputs):
    frame = survey()
    frame.loc[1, "arm"] = "grant"       # household 1 switches arm between rounds
    path, raw = study(frame)
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    clean.run(stage_context("clean", path, outputs, CLEAN))
    with pytest.raises(construct.ConstructError,
                       match=r"broken: treatment arm \(arm\) differs across rounds for 1 units, e\.g\. \[1\]"):
        construct.run(stage_context("construct", path, outputs, params_group("construct"), flow_period="month"))
    assert not (outputs / "processed").exists()


# ------------------------------------------------------------------------------------------------ identifiers

PHONES = ["+254 712 345 678", "0712 345 679", "0733-123-456", "+254712345681", "(020) 345 6782",
          "0712 345 683", "0712 345 684", "0712 345 685"]


@pytest.mark.parametrize("column,values,rule", [
    ("contact", PHONES, "phone numbers"),
    ("remarks", ["call me", "ok", "", "x@example.org", "", "", "", ""], "e-mail addresses"),
    ("location", ["-1.28333 36.81667 1650 5"] * 8, "GPS coordinates"),
    ("gps_lat", [-1.283] * 8, "GPS coordinate column name"),
    ("respondent_name", ["Ann", "Ann", "Bob", "Bob", "Cat", "Cat", "Dan", "Dan"], "person-name column name"),
    ("mobile", [254712345678 + i for i in range(8)], "phone-number column name"),
    ("contact_no", [254712345678 + i for i in range(8)], "phone numbers (9-15 digit integers)"),
])
def test_undeclared_identifier_stops_ingest(study, outputs, column, values, rule):
    path, raw = study(survey().assign(**{column: values}))
    with pytest.raises(ingest.IngestError) as err:
        ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    message = str(err.value)
    assert f"survey.csv: column {column!r}: {rule}" in message and "rows [" in message
    assert not any(v in message for v in map(str, values) if len(str(v)) > 3)  # values never shown
    assert files_under(outputs) == set()


def test_declared_identifiers_are_dropped_or_hashed(study, outputs):
    frame = survey().assign(contact=PHONES, village_leader=["Ann", "Ann", "Bob", "Bob", "Cat", "Cat", "Dan", "Dan"])
    path, raw = study(frame, identifiers=["contact", {"column": "village_leader", "action": "hash"}],
                      cluster="village_leader")
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest", hash_salt="s3cret"), data_dir=raw))
    clean.run(stage_context("clean", path, outputs, CLEAN))
    table = construct.run(stage_context("construct", path, outputs, params_group("construct"), flow_period="month"))["analysis"]
    interim = pd.read_parquet(outputs / "interim" / "broken" / "ingested.parquet")
    assert "contact" not in interim.columns
    assert interim["village_leader"].str.fullmatch(r"[0-9a-f]{16}").all() and interim["village_leader"].nunique() == 4
    assert table["cluster_id"].nunique() == 4
    for path_ in (outputs / "interim" / "broken").iterdir():
        data = path_.read_bytes()
        assert b"s3cret" not in data and b"0712 345" not in data


def test_false_positive_can_be_declared(study, outputs):
    frame = survey().assign(batch_code=[f"{123456789 + i}" for i in range(8)])  # 9-digit codes, not phones
    path, raw = study(frame)
    with pytest.raises(ingest.IngestError, match="batch_code"):
        ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    path, raw = study(frame, not_identifiers=["batch_code"])
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))


# ------------------------------------------------------------------------------------------------ configuration

@pytest.mark.parametrize("changes,message", [
    ({"outcome": {}}, r"unknown key 'outcome'"),
    ({"female_owner": None}, "female_owner: Input should be a valid dictionary"),
    ({"recall_period": {"value": "fortnight"}}, r"recall_period.value: Input should be 'day', 'week'"),
    ({"treatment": {"column": "arm", "arms": {"a": {"skills": 2}}}}, r"treatment.arms.a.skills: expected 0 or 1, got 2"),
    ({"usd_ppp_per_lcu": {"value": 0.1, "lcu_per_usd_ppp": 10}}, "exactly one of"),
    ({"controls": ["owner_sex"]}, r"controls: \['owner_sex'\] are not names under covariates"),
    ({"files": [{"path": "survey.sas7bdat"}]}, "format 'sas7bdat' unknown"),
])
def test_configuration_mistakes_name_the_key(study, outputs, changes, message):
    path, raw = study(survey(), **changes)
    with pytest.raises(StudyConfigError, match=message) as err:
        ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    assert "broken.yaml" in str(err.value)
    assert files_under(outputs) == set()


def test_write_outputs_is_all_or_nothing(tmp_path):
    good = pd.DataFrame({"a": [1, 2]})
    bad = pd.DataFrame({"mixed": [1, "two"]})   # pyarrow cannot write a column of int and str
    with pytest.raises(OutputError, match=r"out/c\.parquet: column 'mixed' mixes value types .*str at rows \[1\]"):
        write_outputs(tmp_path / "out", {"a.parquet": good, "b.json": {"x": 1}, "c.parquet": bad})
    assert files_under(tmp_path) == set()
    write_outputs(tmp_path / "out", {"a.parquet": good, "b.json": {"x": 1}})
    assert files_under(tmp_path) == {"out/a.parquet", "out/b.json"}


def test_without_a_configured_salt_a_secret_one_is_kept_per_checkout(study, outputs, tmp_path, monkeypatch):
    from pipeline import privacy
    monkeypatch.delenv("PIPELINE_HASH_SALT", raising=False)
    monkeypatch.setattr(privacy, "SALT_FILE", tmp_path / "secrets" / "hash_salt")
    frame = survey().assign(village_leader=["Ann", "Ann", "Bob", "Bob", "Cat", "Cat", "Dan", "Dan"])
    path, raw = study(frame, identifiers=[{"column": "village_leader", "action": "hash"}], cluster="village_leader")
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    salt = (tmp_path / "secrets" / "hash_salt").read_text()
    assert len(salt) == 64
    first = (outputs / "interim" / "broken" / "ingested.parquet").read_bytes()
    ingest.run(stage_context("ingest", path, outputs, params_group("ingest"), data_dir=raw))
    assert (outputs / "interim" / "broken" / "ingested.parquet").read_bytes() == first  # same pseudonyms
    assert salt.encode() not in first and b"Ann" not in first
