"""Study configurations and the helpers every stage shares; and the promise of issue 3: a new
study is onboarded by one YAML file, no Python (a Kobo-style export and an SPSS file, made here)."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import files_under
from pipeline import clean, construct, ingest
from pipeline.io import REPO_ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import study
from pipeline.study import (IdentifierLeakError, StudyConfigError, assert_no_identifiers, assign_arms,
                            codes_in, find_identifiers, load_study, norm_code, norm_codes, normalise,
                            salted_hash)


# ------------------------------------------------------------------------------------------------ configs

@pytest.mark.parametrize("path", sorted((REPO_ROOT / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_study_configuration_loads(path):
    cfg = load_study(path.stem)
    assert cfg["study"] == path.stem
    assert load_study(path)["study"] == path.stem          # by path as well as by name
    assert normalise(cfg) is cfg                           # idempotent


@pytest.mark.parametrize("change,where,hint", [
    (lambda c: c.update(estimate={"weight": "w"}), "estimate", "'weight': did you mean 'weights'?"),
    (lambda c: c.update(estimate={"missing_baselin": "listwise"}), "estimate", "did you mean 'missing_baseline'?"),
    (lambda c: c.update(estimate={"sample": {"round": [1]}}), "estimate.sample", "did you mean 'rounds'?"),
    (lambda c: c["outcomes"]["profit"].update(allow_negativ=True), "outcomes.profit", "did you mean 'allow_negative'?"),
    (lambda c: c["outcomes"]["revenue"].update(baseline_col="pre_rev"), "outcomes.revenue", "did you mean 'baseline_column'?"),
    (lambda c: c["treatment"]["arms"][2].update(skill=1), "treatment arm 2", "did you mean 'skills'?"),
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
    (lambda c: c.update(not_interviewed={"column": "x", "code": [1]}), "not_interviewed", "did you mean 'codes'?"),
    (lambda c: c.update(number_format={"decimals": ","}), "number_format", "did you mean 'decimal'?"),
    (lambda c: c.update(identifiers=[{"column": "phone", "actions": "hash"}]), "identifiers", "did you mean 'action'?"),
    (lambda c: c.update(estimat={}), "", "did you mean 'estimate'?"),
])
def test_misspelt_keys_anywhere_are_rejected_with_a_hint(cfg, change, where, hint):
    change(cfg)
    with pytest.raises(StudyConfigError, match=f"{where}: (unknown keys|.* cannot be set per study)" if where
                       else "unknown keys") as err:
        normalise(cfg)
    assert hint in str(err.value)


def test_estimate_block_keys_are_the_estimate_stages(tmp_path, cfg):
    from pipeline.estimation import spec as estimate
    cfg["estimate"] = {"weight": "w"}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(StudyConfigError, match="weights") as err:
        load_study(tmp_path / "typo.yaml")            # rejected at load time, not when the stage runs
    assert "typo.yaml" in str(err.value) and "estimate: unknown keys ['weight']" in str(err.value)
    cfg["estimate"] = {key: None for key in estimate.ESTIMATE_KEYS}   # every key the stage reads is accepted
    normalise(cfg)
    assert {"weights", "missing_baseline", "sample", "gender_control", "vcov"} <= set(estimate.ESTIMATE_KEYS)
    cfg["estimate"] = {"missing_baseline": "drop"}
    with pytest.raises(StudyConfigError, match="missing_baseline"):
        normalise(cfg)
    cfg["estimate"] = ["weights"]
    with pytest.raises(StudyConfigError, match="estimate: expected a mapping"):
        normalise(cfg)


def test_every_estimate_key_is_documented():
    """docs/study_config.md documents every key a study's estimate: block may set (type, default,
    meaning), in the table of its estimate section."""
    from pipeline.estimation import spec as estimate
    text = (REPO_ROOT / "docs" / "study_config.md").read_text(encoding="utf-8")
    section = text.split("### The estimation specification", 1)[1].split("\n## ", 1)[0]
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in section.splitlines() if line.startswith("| `")]
    documented = {key for cells in rows for key in re.findall(r"`([a-z_]+)`", cells[0])}
    missing = sorted(set(estimate.ESTIMATE_KEYS) - documented)
    assert not missing, f"estimate keys not documented in docs/study_config.md: {missing}"
    for cells in rows:                                   # key | type | default | meaning, none empty
        assert len(cells) == 4 and all(c.strip() for c in cells), cells


def test_normalise_does_not_change_its_argument(cfg):
    before = json.dumps(cfg, sort_keys=True, default=str)
    normalise(cfg)
    assert json.dumps(cfg, sort_keys=True, default=str) == before


def test_conversion_factor_forms():
    base = {"study": "x", "files": ["a.csv"], "unit_id": "id", "female_owner": {"value": 1},
            "treatment": {"column": "t", "arms": {0: {}, 1: {"capital": 1}}},
            "outcomes": {"profit": "p"}, "recall_period": {"value": "year"}}
    assert normalise({**base, "usd_ppp_per_lcu": 0.25})["usd_ppp_per_lcu"]["value"] == 0.25
    assert normalise({**base, "usd_ppp_per_lcu": {"lcu_per_usd_ppp": 4}})["usd_ppp_per_lcu"]["value"] == 0.25
    lookup = {"lookup": {"file": "m.csv", "where": {"study": "x"}, "column": "f"}, "converts_to": "two_weeks"}
    assert normalise({**base, "usd_ppp_per_lcu": lookup})["usd_ppp_per_lcu"]["lookup"]["file"] == "m.csv"
    with pytest.raises(StudyConfigError, match="converts_to needs a fixed recall_period"):
        normalise({**base, "recall_period": {"column": "r", "codes": {1: "week"}}, "usd_ppp_per_lcu": lookup})
    with pytest.raises(StudyConfigError, match="not a positive number"):
        normalise({**base, "usd_ppp_per_lcu": -1})


def test_factor_that_converts_to_a_period_gives_raw_times_factor(tmp_path, outputs):
    """Meager's form: raw value (any recall) x factor = USD PPP per two weeks, exactly."""
    pd.DataFrame({"id": [1, 2, 3], "t": [0, 1, 1], "p": [260.0, -52.0, 0.0]}).to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame({"site": ["x", "y"], "f": [0.5, 9.0]}).to_csv(tmp_path / "meta.csv", index=False)
    cfg = {"study": "conv", "files": ["s.csv"], "unit_id": "id", "female_owner": {"value": None},
           "treatment": {"column": "t", "arms": {0: {}, 1: {"capital": 1}}},
           "outcomes": {"profit": {"column": "p", "allow_negative": True}}, "recall_period": {"value": "year"},
           "usd_ppp_per_lcu": {"lookup": {"file": "meta.csv", "where": {"site": "X"}, "column": "f"},
                               "converts_to": "two_weeks"}}
    (tmp_path / "conv.yaml").write_text(yaml.safe_dump(cfg))
    ingest.run(tmp_path / "conv.yaml", tmp_path, {})
    params = {"flow_period": "two_weeks", "winsor_upper_pct": 100, "winsor_lower_pct": 0}
    clean.run(tmp_path / "conv.yaml", params)
    table = construct.run(tmp_path / "conv.yaml", {}, "two_weeks")["analysis"]
    np.testing.assert_allclose(table["profit_usd_ppp_two_weeks"], [130.0, -26.0, 0.0], rtol=1e-12)
    assert table["female_owner"].isna().all()
    summary = json.loads((outputs / "interim" / "conv" / "ingest_summary.json").read_text())
    assert summary["conversion"]["looked_up_value"] == 0.5 and summary["conversion"]["usd_ppp_per_lcu"] == 13.0


# ------------------------------------------------------------------------------------------------ codes, arms

@pytest.mark.parametrize("value,expected", [
    (2, 2), (2.0, 2), ("2", 2), (" 2 ", 2), (np.int8(2), 2), (2.5, 2.5), ("Control", "control"),
    (None, None), (np.nan, None), ("", None), (pd.NA, None), (True, 1),
])
def test_norm_code(value, expected):
    assert norm_code(value) == expected


# survey answers as they arrive: integers, floats (integral or not), text with spaces and case,
# and every kind of missing
_ANSWERS = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=True, allow_infinity=False, width=32),
                     st.sampled_from([" 2 ", "2", "2.0", "Control", "control ", "", "n/a", "-99"]),
                     st.sampled_from([None, np.nan, pd.NA]))


@settings(max_examples=200, deadline=None)
@given(st.lists(_ANSWERS, max_size=40))
def test_norm_codes_equals_norm_code_on_every_element(values):
    series = pd.Series(values, dtype="object")
    expected = [norm_code(v) for v in values]
    assert norm_codes(series).tolist() == expected
    codes = {2, "control", -99}
    assert codes_in(series, codes).tolist() == [c in codes for c in expected]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-5, 5), max_size=60))
def test_norm_codes_of_a_numeric_column_keeps_the_index(values):
    series = pd.Series(values, index=np.arange(len(values))[::-1] * 3, dtype="float64")
    out = norm_codes(series)
    assert out.index.equals(series.index)
    assert out.tolist() == [norm_code(v) for v in series]


def test_map_distinct_calls_python_once_per_distinct_value(monkeypatch):
    calls = []
    series = pd.Series(np.tile([1.0, 2.0, np.nan, 3.0], 50_000))     # 200,000 rows, 3 codes
    out = study.map_distinct(series, lambda v: calls.append(v) or v * 10, na_value=-1)
    assert len(calls) == 3
    assert out.iloc[:4].tolist() == [10.0, 20.0, -1, 30.0] and len(out) == len(series)


def test_arms_from_dummy_columns():
    cfg = {"study": "d", "files": ["a.csv"], "unit_id": "id", "female_owner": {"value": 1},
           "outcomes": {"profit": "p"}, "recall_period": {"value": "month"},
           "treatment": {"dummies": {"FIN": {"label": "Finance", "skills": 1}, "MKT": {"label": "Marketing", "skills": 1}},
                         "control": {}}}
    df = pd.DataFrame({"FIN": [0, 1, 0, 1, np.nan, 2], "MKT": [0, 0, 1, 1, 0, 0]})
    keys, reasons = assign_arms(df, cfg)
    assert keys.tolist()[:3] == ["control", "FIN", "MKT"]
    assert keys.iloc[3:].isna().all()
    assert reasons.tolist()[3:] == ["more than one arm: FIN=1, MKT=1", "FIN is missing", "FIN=2.0 is not 0/1"]
    slugs = {k: a["slug"] for k, a in normalise(cfg)["treatment"]["arms"].items()}
    assert slugs == {"control": "control", "FIN": "finance", "MKT": "marketing"}
    assert list(slugs) == ["control", "FIN", "MKT"]


# ------------------------------------------------------------------------------------------------ privacy

def test_detector_finds_identifiers_and_not_ordinary_survey_columns():
    n = 200
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "submission_id": [f"uuid:{rng.integers(0, 16**8):08x}-{rng.integers(0, 16**4):04x}" for _ in range(n)],
        "submitted_at": pd.date_range("2024-01-01", periods=n, freq="h").astype(str),
        "firm_id": np.arange(100000, 100000 + n),
        "profit": rng.normal(5000, 3000, n).round(2),
        "assets": rng.integers(0, 5_000_000, n),
        "district": ["Agua Prieta - Outlying"] * n,
        "district_name": ["Nairobi"] * n,
        "mobile_money": rng.integers(0, 2, n),
        "longterm_loan": rng.integers(0, 2, n),
        "notes": ["sold 2 goats"] * n,
    })
    assert find_identifiers(frame) == []
    leaky = frame.assign(
        owner_phone=[f"+2547{rng.integers(10**7, 10**8)}" for _ in range(n)],
        memo=["ok"] * (n - 3) + ["call 0712 345 678", "0722-111-222", "nothing"],
        email_address=["a@b.org"] * n,
        _geolocation=["-1.28 36.8"] * n,
        gps_latitude=[-1.28] * n,
        FirstName=["Ann"] * n,
    )
    rules = {f["column"]: f["rule"] for f in find_identifiers(leaky)}
    assert rules == {"owner_phone": "phone-number column name", "memo": "phone numbers",
                     "email_address": "e-mail column name", "_geolocation": "GPS coordinate column name",
                     "gps_latitude": "GPS coordinate column name", "FirstName": "person-name column name"}
    assert {f["column"] for f in find_identifiers(leaky, allow=["memo", "FirstName"])} == {
        "owner_phone", "email_address", "_geolocation", "gps_latitude"}


def test_assert_no_identifiers_on_frames_and_files(tmp_path):
    frame = pd.DataFrame({"firm": [1, 2], "phone": ["0712 000 001", "0712 000 002"]})
    with pytest.raises(IdentifierLeakError, match=r"column 'phone': phone-number column name \(2 values"):
        assert_no_identifiers(frame)
    with pytest.raises(IdentifierLeakError, match="configured identifier"):
        assert_no_identifiers(pd.DataFrame({"hhname": ["x"]}), ["hhname"])
    frame.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "r.html").write_text("<html><style>.a{x:1}</style><p>Effect 12.3 (4.5), n = 476</p></html>")
    (tmp_path / "m.json").write_text(json.dumps({"n": 845, "contact": "x@example.org"}))
    with pytest.raises(IdentifierLeakError) as err:
        assert_no_identifiers(tmp_path)
    assert "t.parquet" in str(err.value) and "m.json" in str(err.value) and "r.html" not in str(err.value)
    (tmp_path / "t.parquet").unlink()
    (tmp_path / "m.json").unlink()
    assert_no_identifiers(tmp_path)


def test_salted_hash_links_within_a_salt_only():
    values = pd.Series(["Shampa", "Rina", "Shampa", None, 12.0, "12"])
    a, b = salted_hash(values, "one"), salted_hash(values, "two")
    assert a[0] == a[2] and a[0] != a[1] and a[4] == a[5] and a[3] is None
    assert a[0] != b[0] and len(a[0]) == 16


# ------------------------------------------------------------------------------------------------ new study

def kobo_export(n_firms: int = 12) -> pd.DataFrame:
    """A KoboToolbox-style export: group prefixes, text codes, money as text, metadata columns,
    GPS, names and phone numbers, two rounds, a duplicate submission and an unparseable answer."""
    rows = []
    for f in range(1, n_firms + 1):
        for r, rnd in enumerate(("baseline", "endline")):
            if f == n_firms and rnd == "endline":
                continue                                    # attrition
            arm = ["control", "training", "grant", "training_grant"][f % 4]
            profit = 1000 + 100 * f + 300 * r * (arm != "control")
            rows.append({
                "start": pd.Timestamp("2024-01-01 08:00") + pd.Timedelta(days=180 * r, minutes=f),
                "group_id/hh_id": f,
                "group_id/survey_round": rnd,
                "group_id/respondent_name": f"Name {f}",
                "group_id/phone_number": f"+254 7{f:02d} 123 456",
                "grp_treat-arm": arm,
                "grp1-owner_sex": "female" if f % 2 else "male",
                "group_business/recall": "week" if f % 3 == 0 else "month",
                "group_business/profit": f"KSh {profit:,}",
                "group_business/sales": 2 * profit,
                "group_business/open": "yes",
                "group_practices/bp_records": f % 2,
                "group_practices/bp_budget": (f + r) % 2,
                "_gps_latitude": -1.28 - f / 1000,
                "_gps_longitude": 36.8 + f / 1000,
                "_submitted_by": "enumerator_7",
                "meta/instanceID": f"uuid:{f:04d}-{r}",
                "_submission_time": pd.Timestamp("2024-01-01 09:00") + pd.Timedelta(days=180 * r, minutes=f),
            })
    frame = pd.DataFrame(rows)
    frame.loc[3, "group_business/profit"] = "not sure"
    resubmitted = frame.iloc[[1]].copy()
    resubmitted["meta/instanceID"] = "uuid:0001-1b"
    resubmitted["_submission_time"] += pd.Timedelta(hours=2)
    resubmitted["group_business/profit"] = "KSh 1,450"             # a later correction
    return pd.concat([frame, resubmitted], ignore_index=True)


NEW_STUDY_YAML = """
study: kobo_demo
title: A Kobo-style field survey onboarded by this file alone
files:
  - path: export.xlsx
    format: xlsx
    sheet: 0
    strip_group_prefixes: true          # group_business/profit -> profit, grp1-owner_sex -> owner_sex
identifiers: [respondent_name, phone_number, _gps_latitude, _gps_longitude, _submitted_by]
unit_id: hh_id
round: survey_round
rounds: [baseline, endline]
baseline_round: baseline
submission: {id: instanceID, time: _submission_time}
female_owner: {column: owner_sex, female_codes: [female], male_codes: [male]}
treatment:
  column: arm
  arms:
    control: {label: Control, skills: 0, capital: 0}
    training: {label: Training, skills: 1, capital: 0}
    grant: {label: Grant, skills: 0, capital: 1}
    training_grant: {label: Training + grant, skills: 1, capital: 1}
recall_period: {column: recall, codes: {week: week, month: month}}
currency: KES
usd_ppp_per_lcu: {lcu_per_usd_ppp: 40.0, source: "stated for the test"}
outcomes:
  profit: {column: profit, allow_negative: true}
  revenue: {column: sales}
business_open: {column: open, closed_codes: ["no"]}
skills_index: {columns: [bp_records, bp_budget], areas: {records: [bp_records], planning: [bp_budget]}}
"""


def test_new_study_from_one_yaml_file(tmp_path, outputs):
    raw = tmp_path / "kobo"
    raw.mkdir()
    kobo_export().to_excel(raw / "export.xlsx", index=False, engine="openpyxl")
    config = tmp_path / "kobo_demo.yaml"
    config.write_text(NEW_STUDY_YAML)

    ing = ingest.run(config, raw, {})
    cl = clean.run(config, {"flow_period": "month", "winsor_upper_pct": 100, "winsor_lower_pct": 0})
    co = construct.run(config, {"skills_min_answered_share": 0.5}, "month")

    # every row accounted for
    assert len(ing["interim"]) == 24
    assert len(cl["clean"]) + len(cl["rejected"]) == 24
    assert cl["rejected"]["rule"].tolist() == ["duplicate_conflicting"] and cl["rejected"]["source_row"].tolist() == [1]
    bad = cl["log"][cl["log"]["rule"] == "unparseable_number"]
    assert bad["source_row"].tolist() == [3] and bad["column"].tolist() == ["profit"]
    # the analysis table
    t = co["analysis"].set_index(["firm_id", "round"])
    assert len(t) == 12 * 2 and t.loc[("12", 1), "attrited"] == 1
    assert t.loc[("1", 1), "profit_usd_ppp_month"] == pytest.approx(1450 / 40)      # the latest submission
    assert t.loc[("3", 0), "profit_usd_ppp_month"] == pytest.approx(1300 * 52 / 12 / 40)  # weekly recall
    assert t.loc[("3", 0), "treat_skills"] == 1 and t.loc[("3", 0), "treat_capital"] == 1
    assert t.loc[("3", 0), "arm_training_grant"] == 1 and t.loc[("1", 0), "arm_training"] == 1
    assert t.loc[("1", 0), "female_owner"] == 1 and t.loc[("2", 0), "female_owner"] == 0
    assert t.loc[("1", 0), "skills_index"] == 1.0 and t.loc[("2", 1), "skills_index"] == 0.5
    assert t.loc[("2", 1), "skills_planning"] == 1.0 and not t.loc[("1", 0), "followup"]
    assert t.loc[("1", 1), "profit_usd_ppp_month_bl"] == pytest.approx(1100 / 40)
    # documented, and nothing identifying anywhere
    book = pd.read_csv(outputs / "interim" / "kobo_demo" / "codebook.csv").set_index("column")
    assert book.loc["phone_number", "status"] == "dropped: direct identifier"
    assert "profit" in book.index and "group_business/profit" not in book.index
    assert_no_identifiers(outputs, cfg=ing["config"])
    assert not any(b"Name 1" in (outputs / p).read_bytes() or b"+254" in (outputs / p).read_bytes()
                   for p in files_under(outputs))


def test_spss_and_parquet_files(tmp_path, outputs):
    import pyreadstat

    frame = pd.DataFrame({"id": [1.0, 2, 3, 4], "t": [0.0, 1, 0, 1], "sex": [2.0, 1, 2, 2],
                          "profit": [100.0, -99, 300, 400]})
    pyreadstat.write_sav(frame, str(tmp_path / "s.sav"), column_labels={"profit": "Profit last month"},
                         variable_value_labels={"sex": {1.0: "male", 2.0: "female"}, "profit": {-99.0: "refused"}},
                         missing_ranges={"profit": [-99.0]})
    frame.to_parquet(tmp_path / "s.parquet")
    cfg = {"study": "spss", "files": [{"path": "s.sav"}], "unit_id": "id",
           "female_owner": {"column": "sex", "female_codes": [2], "male_codes": [1]},
           "treatment": {"column": "t", "arms": {0: {}, 1: {"capital": 1}}},
           "outcomes": {"profit": {"column": "profit", "allow_negative": True}}, "recall_period": {"value": "month"}}
    (tmp_path / "spss.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ingest.IngestError, match=r"s\.sav: SPSS user-missing values \{'profit': \[-99\]\} are not in missing_codes"):
        ingest.run(tmp_path / "spss.yaml", tmp_path, {})
    cfg["missing_codes"] = {-99: "refused"}
    (tmp_path / "spss.yaml").write_text(yaml.safe_dump(cfg))
    result = ingest.run(tmp_path / "spss.yaml", tmp_path, {})
    assert result["interim"]["profit"].tolist() == [100, -99, 300, 400]      # code kept for the clean stage
    book = result["codebook"].set_index("column")
    assert json.loads(book.loc["sex", "value_labels"]) == {"1": "male", "2": "female"}
    assert book.loc["profit", "label"] == "Profit last month"
    log = clean.run(tmp_path / "spss.yaml", {"flow_period": "month"})["log"]
    assert log.set_index("source_row").loc[1, "rule"] == "missing_code:refused"
    cfg["files"] = [{"path": "s.parquet"}]
    (tmp_path / "spss.yaml").write_text(yaml.safe_dump(cfg))
    assert len(ingest.run(tmp_path / "spss.yaml", tmp_path, {})["interim"]) == 4
