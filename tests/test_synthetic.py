"""Tests of pipeline.synthetic against independent references.

References used: a second draw with one kind of mess switched off (same seed; the
generator keeps every other variable identical), the raw file read back with
pandas and pyreadstat, and plain estimates computed here from the survey columns
(difference in means with market-clustered standard errors via statsmodels).
"""
from __future__ import annotations

import re
import time
import warnings

import numpy as np
import pandas as pd
import pyreadstat
import pytest
import statsmodels.api as sm
from _params import params_group

from pipeline import synthetic
from pipeline.stage_context import build

SMALL = params_group(
    "synthetic", seed=7, n_firms=400,
    # more mess than params.yaml's so that a small draw has enough of each kind
    share_duplicate_identical=0.04, share_duplicate_conflicting=0.04, share_typo_extra_zero=0.03,
    share_missing_code=0.05,
)
NO_MESS = {
    "share_duplicate_identical": 0.0,
    "share_duplicate_conflicting": 0.0,
    "share_typo_extra_zero": 0.0,
    "share_missing_code": 0.0,
}
SUBMISSION_META = ["submission_id", "submitted_at"]
CODES = [-99, -98, -88]
KEY = ["firm_id", "round"]


@pytest.fixture(scope="module")
def small():
    return synthetic.generate(SMALL)


@pytest.fixture(scope="module")
def large():
    """A large draw with duplicates, typos and missing codes off (attrition and closures on)."""
    return synthetic.generate(params_group("synthetic", seed=11, n_firms=60000, **NO_MESS))


def latest(survey: pd.DataFrame) -> pd.DataFrame:
    """One row per firm-round: the latest submission (the cleaning rule)."""
    return (survey.sort_values(["submitted_at", "submission_id"])
            .drop_duplicates(KEY, keep="last").set_index(KEY).sort_index())


def monthly_profit_usd(survey: pd.DataFrame, lcu_per_usd: float) -> pd.Series:
    """Monthly profit in USD PPP from the raw answers; closed businesses = 0."""
    per_month = np.where(survey["recall_period"] == 1, 52 / 12, 1.0)
    usd = survey["profit"].to_numpy() * per_month / lcu_per_usd
    return pd.Series(np.where(survey["business_open"] == 0, 0.0, usd), index=survey.index)


# --------------------------------------------------------------------------- determinism, files

def test_generate_is_deterministic(small):
    again = synthetic.generate(SMALL)
    pd.testing.assert_frame_equal(small[0], again[0])
    assert small[1:] == again[1:]
    other = synthetic.generate({**SMALL, "seed": 8})[0]
    assert not other["profit"].equals(small[0]["profit"])


def test_write_is_byte_identical_and_atomic(small, tmp_path):
    first = tmp_path / "a"
    synthetic.write(*small, first)
    # the context the stage runner builds from dvc.yaml, rooted in tmp_path (its output names)
    context = build("synthetic", group=SMALL, root=tmp_path)
    second = context.outputs["raw/synthetic"]
    assert second == tmp_path / "data" / "raw" / "synthetic"
    summary = synthetic.run(context)
    for name in ("survey.dta", "truth.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    synthetic.write(*small, first)  # overwrite in place: same bytes, no temporary files left
    assert (first / "survey.dta").read_bytes() == (second / "survey.dta").read_bytes()
    assert sorted(p.name for p in first.iterdir()) == ["survey.dta", "truth.json"]
    assert summary["rows"] == len(small[0])
    assert summary["firms"] == SMALL["n_firms"]
    assert summary["duplicates"] == (small[3]["mess"]["duplicates_identical"]
                                     + small[3]["mess"]["duplicates_conflicting"])


def test_unknown_or_invalid_params_are_rejected():
    with pytest.raises(ValueError, match="unknown"):
        synthetic.generate({**params_group("synthetic"), "n_firm": 10})
    with pytest.raises(ValueError):
        synthetic.generate(params_group("synthetic", share_female=1.5))
    with pytest.raises(ValueError):
        synthetic.generate(params_group("synthetic", n_firms=50))  # fewer than 4 firms per stratum


def test_default_generation_is_fast():
    start = time.perf_counter()
    survey, *_ = synthetic.generate(params_group("synthetic"))
    assert time.perf_counter() - start < 5.0
    assert survey["firm_id"].nunique() == 3000


# --------------------------------------------------------------------------- file layout

def test_columns_order_and_submission_metadata(small):
    survey, _, _, truth = small
    expected = (["submission_id", "submitted_at", "enumerator_id", "firm_id", "round", "region",
                 "sector", "market_id", "owner_sex", "owner_age", "owner_educ_years", "hh_size",
                 "owner_name", "phone", "notes", "treat_arm", "took_training", "received_grant",
                 "business_open", "recall_period", "profit", "revenue", "costs", "capital_stock",
                 "hours_week"] + [f"bp_{j:02d}" for j in range(1, 27)] + ["loan_any"])
    assert list(survey.columns) == expected
    assert survey["submission_id"].is_unique
    assert survey["submission_id"].str.fullmatch(r"uuid:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}").all()
    assert survey["submitted_at"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
    # server export order
    order = survey.sort_values(["submitted_at", "submission_id"]).index
    assert (order == survey.index).all()
    # rounds are fielded in separate, ordered windows
    times = pd.to_datetime(survey["submitted_at"])
    window = times.groupby(survey["round"]).agg(["min", "max"])
    assert (window["min"].iloc[1:].to_numpy() > window["max"].iloc[:-1].to_numpy()).all()
    assert ((window["max"] - window["min"]) < pd.Timedelta(days=60)).all()
    assert set(survey["round"]) == set(range(SMALL["n_followups"] + 1)) == set(truth["design"]["rounds"])


def test_labels_read_back_from_dta(small, tmp_path):
    survey, value_labels, variable_labels, _ = small
    synthetic.write(*small, tmp_path)
    raw, meta = pyreadstat.read_dta(tmp_path / "survey.dta")
    assert meta.column_names == list(survey.columns)
    assert all(meta.column_names_to_labels[c] for c in survey.columns)  # every column labelled
    vvl = meta.variable_value_labels
    assert vvl["owner_sex"] == {1: "Male", 2: "Female"}
    assert vvl["treat_arm"] == {1: "Control", 2: "Training only", 3: "Grant only", 4: "Training + grant"}
    assert vvl["business_open"] == {0: "No", 1: "Yes"}
    assert vvl["recall_period"][1] == "Last week" and vvl["recall_period"][2] == "Last month"
    assert vvl["bp_01"][1] == "Yes" and vvl["bp_01"][0] == "No" and vvl["bp_01"][-98] == "Don't know"
    for col in ("round", "region", "sector", "loan_any", "took_training", "received_grant"):
        assert col in vvl
    assert raw["profit"].astype("int64").tolist() == survey["profit"].tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. values without a label would warn
        labelled = pd.read_stata(tmp_path / "survey.dta")
    assert set(labelled["treat_arm"].astype(str)) == set(value_labels["treat_arm"].values())
    assert set(labelled["owner_sex"].astype(str)) == {"Male", "Female"}
    assert labelled["notes"].astype(str).tolist() == survey["notes"].tolist()
    assert (tmp_path / "survey.dta").read_bytes().startswith(b"<stata_dta><header><release>118</release>")
    assert variable_labels["profit"] == meta.column_names_to_labels["profit"]


# --------------------------------------------------------------------------- design

def test_every_stratum_has_every_arm_and_assignment_is_market_level(small):
    survey, _, _, truth = small
    markets = survey.groupby("market_id")[["region", "sector", "treat_arm"]].nunique()
    assert (markets == 1).all().all()  # one stratum and one arm per market
    assert (survey.groupby("firm_id")[["market_id", "treat_arm", "owner_sex"]].nunique() == 1).all().all()
    market_table = survey.drop_duplicates("market_id")
    arms_per_stratum = market_table.groupby(["region", "sector"])["treat_arm"].value_counts().unstack(fill_value=0)
    assert arms_per_stratum.shape == (4 * 5, 4)
    assert (arms_per_stratum >= 1).all().all()
    assert (arms_per_stratum.max(axis=1) - arms_per_stratum.min(axis=1) <= 1).all()  # balanced
    assert truth["design"]["n_markets"] == survey["market_id"].nunique()


def test_market_sizes_and_arm_balance_at_default_size():
    survey, _, _, truth = synthetic.generate(params_group("synthetic"))
    baseline = survey[survey["round"] == 0].drop_duplicates("firm_id")
    assert len(baseline) == 3000  # baseline is complete
    sizes = baseline.groupby("market_id").size()
    assert sizes.max() - sizes.min() <= 1 and 15 <= sizes.mean() <= 25
    by_arm = baseline["treat_arm"].value_counts()
    assert by_arm.min() / by_arm.max() > 0.85
    assert abs((baseline["owner_sex"] == 2).mean() - 0.5) < 0.04


def test_takeup_only_among_assigned_and_after_baseline(large):
    survey, _, _, truth = large
    train_arm = survey["treat_arm"].isin([2, 4])
    grant_arm = survey["treat_arm"].isin([3, 4])
    assert (survey.loc[~train_arm, "took_training"] == 0).all()
    assert (survey.loc[~grant_arm, "received_grant"] == 0).all()
    baseline = survey["round"] == 0
    assert (survey.loc[baseline, ["took_training", "received_grant"]] == 0).all().all()
    follow = survey[~baseline]
    assert (follow.groupby("firm_id")[["took_training", "received_grant"]].nunique() == 1).all().all()
    firms = follow.drop_duplicates("firm_id")
    for col, arm, rate in (("took_training", firms["treat_arm"].isin([2, 4]), 0.7),
                           ("received_grant", firms["treat_arm"].isin([3, 4]), 0.9)):
        share = firms.loc[arm, col].mean()
        se = np.sqrt(rate * (1 - rate) / arm.sum())
        assert abs(share - rate) < 4 * se
    assert truth["takeup"]["training"]["rate"] == 0.7


# --------------------------------------------------------------------------- mess

def test_duplicates_match_truth_and_latest_is_correct(small):
    survey, _, _, truth = small
    reference = latest(synthetic.generate({**SMALL, "share_duplicate_conflicting": 0.0})[0])
    sizes = survey.groupby(KEY).size()
    assert sizes.max() == 2
    pairs = survey[survey.set_index(KEY).index.isin(sizes[sizes == 2].index)]
    answers = [c for c in survey.columns if c not in SUBMISSION_META + KEY]
    n_distinct = pairs.groupby(KEY)[answers].nunique(dropna=False).max(axis=1)
    identical, conflicting = int((n_distinct == 1).sum()), int((n_distinct > 1).sum())
    assert identical == truth["mess"]["duplicates_identical"] > 0
    assert conflicting == truth["mess"]["duplicates_conflicting"] > 0
    # the later submission of a conflicting pair holds the answers of the mess-free reference
    conflict_keys = n_distinct[n_distinct > 1].index
    kept = latest(survey).loc[conflict_keys, answers]
    pd.testing.assert_frame_equal(kept, reference.loc[conflict_keys, answers])
    # copies never change the time order the wrong way round
    first_last = pairs.groupby(KEY)["submitted_at"].agg(["min", "max"])
    assert (first_last["min"] < first_last["max"]).all()


def test_typos_and_missing_codes_match_truth(small):
    survey, _, _, truth = small
    kept = latest(survey)
    no_typos = latest(synthetic.generate({**SMALL, "share_typo_extra_zero": 0.0})[0])
    changed = kept["profit"] != no_typos["profit"]
    assert int(changed.sum()) == truth["mess"]["typo_extra_zero"] > 0
    assert (kept.loc[changed, "profit"] == 10 * no_typos.loc[changed, "profit"]).all()

    no_missing = latest(synthetic.generate({**SMALL, "share_missing_code": 0.0})[0])
    for col, counts in truth["mess"]["missing_codes"].items():
        coded = kept[col].isin([-99, -98]) & ~no_missing[col].isin([-99, -98])
        assert int(coded.sum()) == counts["total"] > 0, col
        assert int((coded & (kept[col] == -99)).sum()) == counts["refused"], col
        share = coded.sum() / kept[col].ne(-88).sum()
        assert 0.02 < share < 0.09, col  # about share_missing_code = 0.05
    # practices: "don't know" only where the reference has an answer
    bp = [f"bp_{j:02d}" for j in range(1, 27)]
    assert int((kept[bp] == -98).sum().sum()) == truth["mess"]["bp_dont_know"]
    assert not (no_missing[bp] == -98).any().any()


def test_closures_coded_not_applicable_and_absorbing(small):
    survey, _, _, truth = small
    kept = latest(survey)
    closed = kept["business_open"] == 0
    assert int(closed.sum()) == truth["mess"]["closed_firm_rounds_interviewed"] > 0
    for col in ("profit", "revenue", "costs", "capital_stock", "hours_week", "recall_period"):
        assert (kept.loc[closed, col] == -88).all()
        assert (kept.loc[~closed, col] != -88).all()
    assert (kept.loc[kept.index.get_level_values("round") == 0, "business_open"] == 1).all()
    ever_closed = closed.groupby(level="firm_id").cummax()
    assert (kept.loc[ever_closed, "business_open"] == 0).all()  # absorbing
    for col in ("revenue", "costs", "capital_stock"):
        values = kept[col]
        assert (values[~values.isin(CODES)] >= 0).all()
    assert set(kept["recall_period"]) <= {1, 2, -88}


def test_attrition_counts_match_truth(small):
    survey, _, _, truth = small
    n_rounds = 4
    interviews = survey.drop_duplicates(KEY)
    assert (interviews["round"] == 0).sum() == SMALL["n_firms"]
    arm_of_firm = interviews.drop_duplicates("firm_id").set_index("firm_id")["treat_arm"]
    present = interviews[interviews["round"] > 0].groupby("treat_arm").size()
    planned = arm_of_firm.value_counts() * (n_rounds - 1)
    missing = (planned - present).rename(synthetic.ARM_KEYS).to_dict()
    assert missing == truth["mess"]["attrited_firm_rounds"]
    assert truth["mess"]["interviews"] == len(interviews)
    assert truth["mess"]["rows"] == len(survey)


def test_attrition_rate_by_arm_near_params(large):
    survey, _, _, truth = large
    firms = survey[survey["round"] == 0].set_index("firm_id")["treat_arm"]
    follow = survey[survey["round"] > 0]
    for arms, rate in (([1], 0.12), ([2, 3, 4], 0.07)):
        planned = firms.isin(arms).sum() * 3
        observed = follow["treat_arm"].isin(arms).sum()
        share = 1 - observed / planned
        assert abs(share - rate) < 4 * np.sqrt(rate * (1 - rate) / planned), arms


# --------------------------------------------------------------------------- the truth

def test_truth_contents(small):
    truth = small[3]
    assert truth["units"] == "USD PPP per month"
    assert truth["itt"]["skills"] == {"women": 4.0, "men": 5.0}
    assert truth["itt"]["capital"] == {"women": 8.0, "men": 30.0}
    assert truth["itt"]["skills_x_capital"] == {"women": 12.0, "men": 0.0}
    assert truth["itt_difference_women_minus_men"] == {"skills": -1.0, "capital": -22.0, "skills_x_capital": 12.0}
    assert truth["lcu_per_usd_ppp"] == 40.0
    assert truth["weeks_per_month"] == pytest.approx(52 / 12)
    assert truth["params"]["n_firms"] == 400 and truth["params"]["seed"] == 7
    assert "closed" in truth["estimand"] and "intention-to-treat" in truth["estimand"].lower()


def test_itt_truth_holds_on_a_large_clean_draw(large):
    """Plain differences in mean monthly profit at follow-up, by gender, vs the true ITT."""
    survey, _, _, truth = large
    assert not survey.duplicated(KEY).any()
    assert not survey[["profit", "revenue", "costs"]].isin([-99, -98]).any().any()
    follow = survey[survey["round"] > 0].copy()
    follow["y"] = monthly_profit_usd(follow, truth["lcu_per_usd_ppp"])
    arm = follow["treat_arm"]
    for gender, sex in (("women", 2), ("men", 1)):
        g = follow[follow["owner_sex"] == sex]
        # arm dummies vs control
        X = sm.add_constant(pd.get_dummies(g["treat_arm"], prefix="arm", drop_first=True, dtype=float))
        fit = sm.OLS(g["y"], X).fit(cov_type="cluster", cov_kwds={"groups": g["market_id"]})
        expected = {
            "arm_2": truth["itt"]["skills"][gender],
            "arm_3": truth["itt"]["capital"][gender],
            "arm_4": truth["itt_by_arm"]["training_and_grant"][gender],
        }
        for name, value in expected.items():
            assert abs(fit.params[name] - value) < 3 * fit.bse[name], (gender, name, fit.params[name], fit.bse[name])
            assert fit.bse[name] < 4.0  # the check has power
        # factorial form: the interaction coefficient is the skills x capital ITT
        skills = g["treat_arm"].isin([2, 4]).astype(float)
        capital = g["treat_arm"].isin([3, 4]).astype(float)
        Xf = sm.add_constant(pd.DataFrame({"skills": skills, "capital": capital, "both": skills * capital}))
        fit_f = sm.OLS(g["y"], Xf).fit(cov_type="cluster", cov_kwds={"groups": g["market_id"]})
        value = truth["itt"]["skills_x_capital"][gender]
        assert abs(fit_f.params["both"] - value) < 3 * fit_f.bse["both"], (gender, fit_f.params["both"])
    assert arm.nunique() == 4


def test_profit_distribution_is_realistic(large):
    survey, _, _, truth = large
    baseline = survey[survey["round"] == 0].copy()
    baseline["y"] = monthly_profit_usd(baseline, truth["lcu_per_usd_ppp"])
    means = baseline.groupby("owner_sex")["y"].mean()
    assert means[2] == pytest.approx(80, rel=0.06) and means[1] == pytest.approx(120, rel=0.06)
    assert 0.005 < (baseline["y"] < 0).mean() < 0.10  # occasional losses
    assert baseline["y"].skew() > 2  # heavy right tail
    # revenue - costs is not the profit answer
    open_ = survey[survey["business_open"] == 1]
    assert (open_["revenue"] - open_["costs"] != open_["profit"]).mean() > 0.9
    # market ICC (one-way ANOVA) and round-to-round correlation in the control arm
    groups = baseline.groupby("market_id")["y"]
    k, n = groups.ngroups, len(baseline)
    msb = (groups.size() * (groups.mean() - baseline["y"].mean()) ** 2).sum() / (k - 1)
    msw = ((baseline["y"] - groups.transform("mean")) ** 2).sum() / (n - k)
    icc = (msb - msw) / (msb + (n / k - 1) * msw)
    assert 0.02 < icc < 0.10
    control = survey[(survey["treat_arm"] == 1) & (survey["business_open"] == 1)].copy()
    control["y"] = monthly_profit_usd(control, truth["lcu_per_usd_ppp"])
    wide = control.pivot_table(index="firm_id", columns="round", values="y")
    assert 0.25 < wide[0].corr(wide[1]) < 0.55
    # training raises the share of business practices used; the grant raises capital
    follow = survey[(survey["round"] > 0) & (survey["business_open"] == 1)]
    bp = follow[[f"bp_{j:02d}" for j in range(1, 27)]].mean(axis=1)
    assert bp[follow["took_training"] == 1].mean() > bp[follow["treat_arm"] == 1].mean() + 0.05
    capital = follow["capital_stock"]
    assert capital[follow["treat_arm"] == 3].median() > capital[follow["treat_arm"] == 1].median()


# --------------------------------------------------------------------------- identifiers

def test_identifiers_only_in_identifier_columns(small):
    survey = small[0]
    names = set(survey["owner_name"])
    phone_digits = set(survey["phone"].str.replace(r"\D", "", regex=True).str[-9:])
    assert all(re.fullmatch(r"\+254 7\d\d \d{3} \d{3}", p) for p in survey["phone"])
    others = [c for c in survey.columns if c not in ("owner_name", "phone", "notes")]
    for col in others:
        text = survey[col].astype(str)
        digits = text.str.replace(r"\D", "", regex=True)
        assert not text.isin(names).any(), col
        assert not any(n in t for t in text.unique() for n in names), col
        assert not digits.apply(lambda d: any(p in d for p in phone_digits)).any(), col
    # notes do carry identifiers sometimes (so that ingest must drop them), always the firm's own
    notes = survey["notes"]
    assert (notes == "").mean() > 0.5
    local_phone = "0" + survey["phone"].str[5:]
    has_phone = notes.str.contains(r"\d{4} \d{3} \d{3}", regex=True)
    has_name = notes.str.contains("spoke with", regex=False)
    assert has_phone.any() and has_name.any()
    assert (notes[has_phone] == "call back on " + local_phone[has_phone]).all()
    assert (notes[has_name] == "spoke with " + survey["owner_name"][has_name] + " at the stall").all()


@pytest.mark.parametrize("n, distinct_seconds", [(2000, 40), (2000, 10**7), (1, 3), (0, 3)])
def test_submission_order_is_time_then_id(n, distinct_seconds):
    """The export order equals numpy's lexsort by (time, id), with and without many rows in the same second."""
    from pipeline import synthetic_mess
    rng = np.random.default_rng(n + distinct_seconds)
    seconds = rng.integers(0, distinct_seconds, n)
    ids = pd.Series(synthetic_mess._hex_ids(rng.integers(0, 256, (n, 16), dtype=np.uint8)), dtype="str")
    np.testing.assert_array_equal(synthetic_mess.submission_order(seconds, ids),
                                  np.lexsort((ids.to_numpy(dtype="U41"), seconds)))


@pytest.mark.parametrize("overrides", [[{"share_typo_extra_zero": 0.0}, {}, {"share_typo_extra_zero": 0.05}],
                                       [{}, {"seed": 11}, {"n_regions": 3}]])
def test_variants_sharing_a_world_equal_separate_surveys(overrides):
    """generate_variants = generate per variant (survey, labels, truth), whether the latent world is
    shared (typo share only) or not (seed, design)."""
    base = {**params_group("synthetic"), "n_firms": 300, "seed": 5}
    for got, override in zip(synthetic.generate_variants(base, overrides), overrides):
        expected = synthetic.generate({**base, **override})
        pd.testing.assert_frame_equal(got[0], expected[0], check_exact=True)
        assert got[1:] == expected[1:]
