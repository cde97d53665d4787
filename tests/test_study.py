"""Study configurations (loading, normalising, arms); and the promise of issue 3: a new
study is onboarded by one YAML file, no Python (a Kobo-style export and an SPSS file, made here)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import files_under, stage_context
from pipeline import clean, construct, ingest
from pipeline.io import REPO_ROOT
from pipeline import config, study
from pipeline.io import read_yaml
from pipeline.privacy import assert_no_identifiers
from pipeline.study import StudyConfigError, assign_arms, load_study, normalise
from _params import params_group


# ------------------------------------------------------------------------------------------------ configs

@pytest.mark.parametrize("path", sorted((REPO_ROOT / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_study_configuration_loads(path):
    cfg = load_study(path.stem)
    assert cfg["study"] == path.stem
    assert load_study(path)["study"] == path.stem          # by path as well as by name
    assert normalise(cfg) is cfg                           # idempotent


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
    ingest.run(stage_context("ingest", tmp_path / "conv.yaml", outputs, params_group("ingest"), data_dir=tmp_path))
    params = params_group("clean", flow_period="two_weeks", winsor_upper_pct=100, winsor_lower_pct=0)
    clean.run(stage_context("clean", tmp_path / "conv.yaml", outputs, params))
    table = construct.run(stage_context("construct", tmp_path / "conv.yaml", outputs, params_group("construct"),
                                        flow_period="two_weeks"))["analysis"]
    np.testing.assert_allclose(table["profit_usd_ppp_two_weeks"], [130.0, -26.0, 0.0], rtol=1e-12)
    assert table["female_owner"].isna().all()
    summary = json.loads((outputs / "interim" / "conv" / "ingest_summary.json").read_text())
    assert summary["conversion"]["looked_up_value"] == 0.5 and summary["conversion"]["usd_ppp_per_lcu"] == 13.0


# ------------------------------------------------------------------------------------------------ arms

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

    ing = ingest.run(stage_context("ingest", config, outputs, params_group("ingest"), data_dir=raw))
    cl = clean.run(stage_context("clean", config, outputs,
                                 params_group("clean", flow_period="month", winsor_upper_pct=100, winsor_lower_pct=0)))
    co = construct.run(stage_context("construct", config, outputs, params_group("construct", skills_min_answered_share=0.5),
                                     flow_period="month"))

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
    with pytest.raises(ingest.IngestError,
                       match=r"s\.sav: SPSS user-missing values \{'profit': \[-99\]\} are not in missing_codes"):
        ingest.run(stage_context("ingest", tmp_path / "spss.yaml", outputs, params_group("ingest"), data_dir=tmp_path))
    cfg["missing_codes"] = {-99: "refused"}
    (tmp_path / "spss.yaml").write_text(yaml.safe_dump(cfg))
    result = ingest.run(stage_context("ingest", tmp_path / "spss.yaml", outputs, params_group("ingest"), data_dir=tmp_path))
    assert result["interim"]["profit"].tolist() == [100, -99, 300, 400]      # code kept for the clean stage
    book = result["codebook"].set_index("column")
    assert json.loads(book.loc["sex", "value_labels"]) == {"1": "male", "2": "female"}
    assert book.loc["profit", "label"] == "Profit last month"
    log = clean.run(stage_context("clean", tmp_path / "spss.yaml", outputs, params_group("clean", flow_period="month")))["log"]
    assert log.set_index("source_row").loc[1, "rule"] == "missing_code:refused"
    cfg["files"] = [{"path": "s.parquet"}]
    (tmp_path / "spss.yaml").write_text(yaml.safe_dump(cfg))
    again = ingest.run(stage_context("ingest", tmp_path / "spss.yaml", outputs, params_group("ingest"), data_dir=tmp_path))
    assert len(again["interim"]) == 4


# ------------------------------------------------------------------------------------------------ extends

def test_a_study_extends_a_base_deep_merged_the_study_winning(tmp_path, cfg):
    base = {"treatment": cfg["treatment"], "outcomes": cfg["outcomes"], "strata": ["region", "sector"],
            "estimate": {"outcomes": ["profit"], "cluster": "cluster_id"},
            "usd_ppp_per_lcu": {"lookup": {"file": "m.csv", "column": "f"}, "source": "s"}}
    child = {k: v for k, v in cfg.items() if k not in ("treatment", "outcomes", "usd_ppp_per_lcu")}
    child.update(extends="base/shared.yaml", strata=["region"], estimate={"cluster": None, "vcov": "CR1"},
                 usd_ppp_per_lcu={"lookup": {"where": {"study": "tiny"}}})
    child["outcomes"] = {"profit": {"allow_negative": False}}
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "shared.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(child, sort_keys=False))
    merged = study.read_study_file(tmp_path / "tiny.yaml")
    assert "extends" not in merged
    assert list(merged) == [k for k in config.keys_of(config.StudyConfig) if k in merged]   # documented order
    assert merged["strata"] == ["region"]                                   # a list is replaced
    assert merged["estimate"] == {"outcomes": ["profit"], "cluster": None, "vcov": "CR1"}  # mappings merge
    assert merged["usd_ppp_per_lcu"]["lookup"] == {"file": "m.csv", "column": "f", "where": {"study": "tiny"}}
    assert merged["outcomes"]["profit"] == {"column": "profit", "flow": True, "allow_negative": False}
    assert merged["outcomes"]["revenue"] == cfg["outcomes"]["revenue"]
    assert load_study(tmp_path / "tiny.yaml")["treatment"] == normalise(cfg)["treatment"]
    assert study.base_files(tmp_path / "tiny.yaml") == [(tmp_path / "base" / "shared.yaml").resolve()]


def test_an_extending_study_is_checked_whole_and_a_cycle_is_refused(tmp_path, cfg):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"estimate": {"weight": "w"}}))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**cfg, "extends": "base.yaml"}))
    with pytest.raises(StudyConfigError, match="tiny.yaml: estimate: unknown key 'weight'"):
        load_study(tmp_path / "tiny.yaml")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"extends": "b.yaml"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"extends": "a.yaml"}))
    with pytest.raises(StudyConfigError, match="a cycle"):
        study.read_study_file(tmp_path / "a.yaml")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**cfg, "extends": "missing.yaml"}))
    with pytest.raises(StudyConfigError, match="missing.yaml: no such configuration file"):
        load_study(tmp_path / "tiny.yaml")


def test_the_file_name_and_the_study_key_must_agree(tmp_path, cfg):
    (tmp_path / "copy_of_tiny.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(StudyConfigError, match="copy_of_tiny.yaml: study: 'tiny' is not the file's name 'copy_of_tiny'"):
        load_study(tmp_path / "copy_of_tiny.yaml")


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "studies").glob("meager_*.yaml")), ids=lambda p: p.stem)
def test_the_meager_sites_extend_the_shared_base(path):
    assert read_yaml(path)["extends"] == "base/meager.yaml"
    assert study.base_files(path) == [REPO_ROOT / "studies" / "base" / "meager.yaml"]
