"""The real studies (acz2018, field2013, berge2015, the seven meager sites) through ingest -> clean ->
construct, checked against the raw files read independently (pyreadstat for Stata, the csv
module for CSV): every row accounted for, money converted exactly, the design carried into the
analysis table, no identifier in any output, and the published headline estimates reproduced.

The data live in ../shared/data (read in place, never copied); a missing folder skips its study.
"""
from __future__ import annotations

import os

import csv
import hashlib

import numpy as np
import pandas as pd
import pytest

from conftest import REAL_DATA, files_under, stage_context
from pipeline import clean, construct, ingest
from pipeline.codes import PER_YEAR
from pipeline.privacy import assert_no_identifiers
from pipeline.study import load_study
from _params import params_group

MEAGER_SITES = ["angelucci", "attanasio", "augsberg", "banerjee", "crepon", "karlan", "tarozzi"]
STUDIES = {"acz2018": ("acz2018", "acz2018.dta"), "field2013": ("field2013", "Grace-Period-Data.dta"),
           "berge2015": ("berge2015", "DataBBT2014.dta"),
           **{f"meager_{s}": ("meager", f"{s}.csv") for s in MEAGER_SITES}}
# the stages' params as in params.yaml; meager in USD PPP per two weeks (Meager's unit)
CLEAN = params_group("clean", duplicate_rule="latest", flow_period="month", winsor_upper_pct=99, winsor_lower_pct=1,
                     winsor_by_round=True)
SALT = "test-salt-not-a-secret"


def period_of(study: str) -> str:
    return "two_weeks" if study.startswith("meager") else "month"


def data_dir(study: str) -> str:
    folder = STUDIES[study][0]
    if not (REAL_DATA / folder).is_dir():
        if os.environ.get("CI"):  # CI has ../shared beside the clone: absence there is a failure
            pytest.fail(f"real data folder ../shared/data/{folder} is absent in CI")
        pytest.skip(f"real data folder ../shared/data/{folder} is absent")
    return f"../shared/data/{folder}"   # relative to the repository root, as in params.yaml


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    return tmp_path_factory.mktemp("real") / "data"   # stands for data/ (conftest.stage_context)


@pytest.fixture(scope="module")
def results(out_root):
    """Each study run once through the three stages' ``run`` functions (outputs in a tmp folder)."""
    cache = {}

    def get(study: str) -> dict:
        if study not in cache:
            directory = data_dir(study)
            period = period_of(study)
            ing = ingest.run(stage_context("ingest", study, out_root, params_group("ingest", hash_salt=SALT),
                                           data_dir=directory))
            cl = clean.run(stage_context("clean", study, out_root, {**CLEAN, "flow_period": period}))
            co = construct.run(stage_context("construct", study, out_root,
                                             params_group("construct", skills_min_answered_share=0.5), flow_period=period))
            cache[study] = {"ingest": ing, "clean": cl, "construct": co}
        return cache[study]

    return get


def raw_row_count(study: str) -> int:
    """The raw file's own row count, read without pandas."""
    folder, name = STUDIES[study]
    path = REAL_DATA / folder / name
    if name.endswith(".dta"):
        import pyreadstat

        return pyreadstat.read_dta(str(path), metadataonly=True)[1].number_rows
    with open(path, newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.reader(fh)) - 1


def read_csv_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------- rows

@pytest.mark.parametrize("study", list(STUDIES))
def test_rows_add_up_to_the_raw_file(study, results, out_root):
    res = results(study)
    n_raw = raw_row_count(study)
    interim, cleaned, rejected = res["ingest"]["interim"], res["clean"]["clean"], res["clean"]["rejected"]
    assert len(interim) == n_raw == res["ingest"]["summary"]["files"][0]["rows"]
    assert len(cleaned) + len(rejected) == n_raw
    rows = sorted(cleaned["source_row"].tolist() + rejected["source_row"].tolist())
    assert rows == list(range(n_raw))
    assert rejected["rule"].notna().all() and (rejected["reason"] != "").all()
    # the files on disk say the same
    folder = out_root / "interim" / study
    assert len(pd.read_parquet(folder / "clean.parquet")) + len(pd.read_parquet(folder / "rejected_rows.parquet")) == n_raw
    flow = pd.read_csv(folder / "flow.csv").set_index("step")
    assert flow.loc["raw rows", "all"] == n_raw and flow.loc["clean", "all"] == len(cleaned)


EXPECTED_COUNTS = {  # raw, clean, rejected (by rule), not interviewed
    "acz2018": (2556, 2556, {}, 423),
    "field2013": (845, 845, {}, 76),
    "berge2015": (644, 644, {}, 36),
    "meager_angelucci": (21523, 16560, {"invalid_row": 4963}, None),
    "meager_attanasio": (961, 961, {}, None),
    "meager_augsberg": (1196, 1195, {"invalid_row": 1}, None),
    "meager_banerjee": (6863, 6863, {}, None),
    "meager_crepon": (5498, 5498, {}, None),
    "meager_karlan": (1113, 1113, {}, None),
    "meager_tarozzi": (3113, 3113, {}, None),
}


@pytest.mark.parametrize("study", list(STUDIES))
def test_documented_counts(study, results):
    raw, n_clean, by_rule, not_interviewed = EXPECTED_COUNTS[study]
    summary = results(study)["clean"]["summary"]
    assert (summary["raw_rows"], summary["clean_rows"], summary["rejected_rows_by_rule"]) == (raw, n_clean, by_rule)
    assert summary.get("not_interviewed_rows") == not_interviewed


def test_rejected_meager_rows_are_those_without_treatment(results):
    data_dir("meager_angelucci")  # skips (fails in CI) without the data
    raw = read_csv_rows(REAL_DATA / "meager" / "angelucci.csv")
    no_treatment = [i for i, r in enumerate(raw) if r["treatment"] in ("", "NA")]
    rejected = results("meager_angelucci")["clean"]["rejected"]
    assert sorted(rejected["source_row"]) == no_treatment
    assert set(rejected["reason"]) == {"treatment is missing"}


@pytest.mark.parametrize("study", list(STUDIES))
def test_configured_checksums_are_those_of_SHA256SUMS(study):
    data_dir(study)
    sums = dict(reversed(line.split()) for line in (REAL_DATA / "SHA256SUMS").read_text().splitlines() if line)
    cfg = load_study(study)
    folder = STUDIES[study][0]
    for entry in cfg["files"]:
        assert entry["sha256"] == sums[f"{folder}/{entry['path']}"]
        assert hashlib.sha256((REAL_DATA / folder / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    if cfg["usd_ppp_per_lcu"]["lookup"]:
        assert cfg["usd_ppp_per_lcu"]["lookup"]["sha256"] == sums[f"{folder}/{cfg['usd_ppp_per_lcu']['lookup']['file']}"]


# ---------------------------------------------------------------------------------------- money

def meager_meta() -> dict[str, dict]:
    return {r["study"]: r for r in read_csv_rows(REAL_DATA / "meager" / "study_meta.csv")}


@pytest.mark.parametrize("site", MEAGER_SITES)
def test_meager_profit_is_profit_times_profit_std(site, results):
    study = f"meager_{site}"
    data_dir(study)
    std = float(meager_meta()[site]["profit_std"])
    cfg = load_study(study)
    expected = {}
    for i, row in enumerate(read_csv_rows(REAL_DATA / "meager" / f"{site}.csv")):
        if row["treatment"] in ("", "NA"):
            continue
        unit = str(i) if cfg["_generated_unit_id"] else str(int(float(row[cfg["unit_id"]])))
        expected[unit] = (float(row["profit"]) * std, float(row["revenues"]) * std)
    table = results(study)["construct"]["analysis"].set_index("firm_id")
    assert sorted(table.index) == sorted(expected)
    got = table.loc[list(expected)]
    want = np.array(list(expected.values()))
    np.testing.assert_allclose(got["profit_usd_ppp_two_weeks_unwinsorised"], want[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["revenue_usd_ppp_two_weeks_unwinsorised"], want[:, 1], rtol=1e-12, atol=1e-12)
    # the winsorised version only moves the tails
    w = got["profit_usd_ppp_two_weeks"]
    assert (w == got["profit_usd_ppp_two_weeks_unwinsorised"]).mean() > 0.95
    assert w.max() <= want[:, 0].max() and w.min() >= want[:, 0].min()


def test_meager_in_another_period_scales_by_the_period_only(results, outputs):
    study = "meager_karlan"
    directory = data_dir(study)
    ingest.run(stage_context("ingest", study, outputs, params_group("ingest"), data_dir=directory))
    clean.run(stage_context("clean", study, outputs,
                            {**CLEAN, "flow_period": "month", "winsor_upper_pct": 100, "winsor_lower_pct": 0}))
    monthly = construct.run(stage_context("construct", study, outputs, params_group("construct"),
                                          flow_period="month"))["analysis"].set_index("firm_id")
    fortnightly = results(study)["construct"]["analysis"].set_index("firm_id")
    np.testing.assert_allclose(monthly["profit_usd_ppp_month"],
                               fortnightly.loc[monthly.index, "profit_usd_ppp_two_weeks_unwinsorised"]
                               * PER_YEAR["two_weeks"] / PER_YEAR["month"], rtol=1e-12)


# ---------------------------------------------------------------------------------------- design

def read_dta_independently(study: str) -> pd.DataFrame:
    import pyreadstat

    folder, name = STUDIES[study]
    return pyreadstat.read_dta(str(REAL_DATA / folder / name))[0]


def test_acz_analysis_table(results):
    res = results("acz2018")
    raw = read_dta_independently("acz2018")
    table = res["construct"]["analysis"]
    assert len(table) == 852 * 3 and table["firm_id"].nunique() == 852
    t = table.set_index(["firm_id", "round"])
    raw = raw.assign(firm_id=raw["N_firm_id"].astype(int).astype(str), round=raw["T_survey_round"].astype(int))
    r = raw.set_index(["firm_id", "round"]).loc[t.index]
    # arms: two dummies -> skills for both, one 0/1 column per arm
    assert (t["treat_skills"] == ((r["Treatment_FIN"] == 1) | (r["Treatment_MKT"] == 1)).astype(int)).all()
    assert (t["treat_capital"] == 0).all()
    assert (t["arm_finance"] == r["Treatment_FIN"]).all() and (t["arm_marketing"] == r["Treatment_MKT"]).all()
    assert (t["female_owner"] == r["Gender"]).all()
    # money: authors' winsorised rand / 5.5 ZAR per USD PPP (pipeline winsorising off for this study)
    interviewed = r["Survivorship"].notna()
    np.testing.assert_allclose(t.loc[interviewed.to_numpy(), "profit_usd_ppp_month"],
                               r.loc[interviewed, "Profits3_composite_w1"] / 5.5, rtol=1e-6)
    np.testing.assert_allclose(t["profit_usd_ppp_month_bl"], r["pre_Profits3_composite_w1"] / 5.5, rtol=1e-6)
    # firms not surveyed in a round: kept, flagged as attrition, outcomes blank
    assert (t["attrited"] == (~interviewed).astype(int).to_numpy()).all()
    assert t.loc[t["attrited"] == 1, "profit_usd_ppp_month"].isna().all()
    assert t.loc[t["attrited"] == 1, "arm"].notna().all()
    assert ((t["business_closed"] == 1) == (r["Survivorship"] == 0).to_numpy()).all()
    assert int(((t.index.get_level_values("round") == 3) & (t["business_closed"] == 0)).sum()) == 476
    # baseline controls carried under canonical names, listed for estimation
    assert {"owner_age", "startup_capital", "sic83", "loan_formal_pre"} <= set(table.columns)
    assert "owner_age" in res["construct"]["summary"]["controls"]
    assert table["skills_index"].between(0, 1).all() or table["skills_index"].isna().any()


def test_field_analysis_table(results):
    res = results("field2013")
    raw = read_dta_independently("field2013")
    t = res["construct"]["analysis"].set_index("firm_id")
    r = raw.assign(firm_id=raw["slid"].astype(int).astype(str)).set_index("firm_id").loc[t.index]
    assert len(t) == 845 and (t["round"] == 0).all() and t["followup"].all()
    assert (t["treat_capital"] == r["sec_treat"]).all() and (t["treat_skills"] == 0).all()
    assert (t["arm_grace_period"] == r["sec_treat"]).all()
    assert (t["female_owner"] == 1).all()
    factor = load_study("field2013")["usd_ppp_per_lcu"]["value"]
    np.testing.assert_allclose(t["profit_usd_ppp_month"], r["Profit_TopCode"] * 52 / 12 * factor, rtol=1e-6)
    np.testing.assert_allclose(t["capital_stock_usd_ppp"], r["Capital_TopCode"] * factor, rtol=1e-6)
    assert int(t["attrited"].sum()) == 76 and t["stratum"].nunique() == 9
    # loan-group names replaced by salted hashes: same groups, no names
    assert t["cluster_id"].nunique() == raw["sec_group_name"].nunique() == 169
    assert t["cluster_id"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert pd.crosstab(t["cluster_id"], r["sec_group_name"]).gt(0).sum(axis=1).eq(1).all()


def test_berge_analysis_table(results):
    res = results("berge2015")
    raw = read_dta_independently("berge2015")
    t = res["construct"]["analysis"]
    assert len(t) == 644 and (t["round"] == 0).all() and t["firm_id"].is_unique
    r = raw.loc[t["firm_id"].astype(int).to_numpy()]     # no client id: firm_id is the row number
    # 2x2: training = skills, grant = capital, both = both
    assert (t["arm_training"].to_numpy() == r["trainonly"].to_numpy()).all()
    assert (t["arm_grant"].to_numpy() == r["bgonly"].to_numpy()).all()
    assert (t["arm_training_grant"].to_numpy() == r["dtreat_bg"].to_numpy()).all()
    assert (t["treat_skills"].to_numpy() == ((r["trainonly"] == 1) | (r["dtreat_bg"] == 1)).to_numpy()).all()
    assert (t["treat_capital"].to_numpy() == ((r["bgonly"] == 1) | (r["dtreat_bg"] == 1)).to_numpy()).all()
    assert (t["female_owner"].to_numpy() == r["female"].to_numpy()).all()
    # the authors' logs carried unchanged (money: false; pipeline winsorising off), not as USD PPP
    np.testing.assert_allclose(t["log_profit"], r["lnisoprofit0911f"], rtol=1e-6)
    np.testing.assert_allclose(t["log_revenue_unwinsorised"], r["lnisales0911f"], rtol=1e-6)
    assert not [c for c in t.columns if c.startswith("log_") and "usd_ppp" in c]
    assert t["cluster_id"].nunique() == 64 and t["stratum"].nunique() == 2
    assert int(t["attrited"].sum()) == int(r["atr0911"].sum()) == 36
    assert int(t["log_profit"].notna().sum()) == 602


@pytest.mark.parametrize("site", MEAGER_SITES)
def test_meager_analysis_table(site, results):
    study = f"meager_{site}"
    data_dir(study)
    t = results(study)["construct"]["analysis"]
    assert (t["treat_skills"] == 0).all() and set(t["treat_capital"]) == {0, 1}
    assert (t["arm_microcredit"] == t["treat_capital"]).all()
    targeted = meager_meta()[site]["targetwomen"] == "1"
    if targeted:
        assert (t["female_owner"] == 1).all()
    else:
        assert t["female_owner"].isna().all()   # not recorded: unknown, not guessed
    assert t["firm_id"].is_unique and (t["interviewed"] == 1).all()


# ---------------------------------------------------------------------------------------- privacy

@pytest.mark.parametrize("study", list(STUDIES))
def test_no_identifier_in_any_output(study, results, out_root):
    res = results(study)
    cfg = res["ingest"]["config"]
    for folder in (out_root / "interim" / study, out_root / "processed" / study):
        assert files_under(folder)
        assert_no_identifiers(folder, cfg=cfg)
        for path in folder.iterdir():
            assert SALT.encode() not in path.read_bytes()


def test_field_group_names_never_reach_an_output(results, out_root):
    results("field2013")
    raw = read_dta_independently("field2013")
    names = {n for n in raw["sec_group_name"].astype(str) if any(ch.isalpha() for ch in n)}  # not "111/2"
    assert len(names) >= 10
    for path in files_under(out_root):
        if "field2013" not in path or not path.endswith((".parquet", ".csv")):
            continue
        frame = (pd.read_parquet if path.endswith(".parquet") else pd.read_csv)(out_root / path)
        for col in frame.columns:
            if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col]):
                assert not set(frame[col].dropna().astype(str)) & names, (path, col)
    codebook = pd.read_csv(out_root / "interim" / "field2013" / "codebook.csv").set_index("column")
    assert codebook.loc["sec_loan_officer", "status"] == "dropped: direct identifier"
    assert codebook.loc["sec_group_name", "status"] == "kept: values replaced by a salted hash"


# ---------------------------------------------------------------------------------------- results

def test_published_headlines_are_reproduced(results):
    """The data README's reference estimates, from the analysis tables (HC1 / clustered OLS)."""
    import statsmodels.formula.api as smf

    acz = results("acz2018")["construct"]
    a = acz["analysis"]
    d = a[(a["round"] == 3) & (a["business_closed"] == 0)].assign(
        y=lambda x: x["profit_usd_ppp_month"] * 5.5, y_bl=lambda x: x["profit_usd_ppp_month_bl"] * 5.5)
    controls = " + ".join(acz["summary"]["controls"] + ["female_owner"])
    fit = smf.ols(f"y ~ arm_finance + arm_marketing + y_bl + {controls}", d).fit(cov_type="HC1")
    assert int(fit.nobs) == 476
    assert fit.params["arm_finance"] == pytest.approx(2706.5, abs=0.1)
    assert fit.params["arm_marketing"] == pytest.approx(4035.2, abs=0.1)
    assert fit.bse["arm_finance"] == pytest.approx(1239.4, abs=0.1)

    f = results("field2013")["construct"]["analysis"]
    factor = load_study("field2013")["usd_ppp_per_lcu"]["value"]
    f = f.assign(y=f["profit_usd_ppp_month"] / factor * 12 / 52).dropna(subset=["y"])
    fit = smf.ols("y ~ treat_capital + C(stratum)", f).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(f["cluster_id"])[0]})
    assert int(fit.nobs) == 752
    assert fit.params["treat_capital"] == pytest.approx(645.0, abs=0.1)
    assert fit.bse["treat_capital"] == pytest.approx(214.6, abs=0.1)

    for site, effect in {"karlan": 66.6, "attanasio": -0.34, "crepon": 17.5, "banerjee": 16.7}.items():
        m = results(f"meager_{site}")["construct"]["analysis"]
        fit = smf.ols("profit_usd_ppp_two_weeks_unwinsorised ~ treat_capital", m).fit()
        assert fit.params["treat_capital"] == pytest.approx(effect, abs=0.06), site
