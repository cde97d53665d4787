"""pipeline/arms.py and the arm averages of pipeline/estimation/arm_average.py: arms of one
intervention that share a control group are reported (and pooled) through one average whose
standard error comes from the joint covariance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from _estimation_data import Y, make_data, statsmodels_fit
from _params import make_spec, tidy_kw
from pipeline.arms import arm_average_term, arm_interventions, intervention_arm_groups
from pipeline.estimation.fit import fit
from pipeline.estimation.tables import tidy
from pipeline.harmonise import effect_terms

TWO_TRAININGS = {"control": {"slug": "control", "skills": 0, "capital": 0},
                 "FIN": {"slug": "finance", "skills": 1, "capital": 0},
                 "MKT": {"slug": "marketing", "skills": 1, "capital": 0}}
TWO_BY_TWO = {"c": {"slug": "control", "skills": 0, "capital": 0},
              "t": {"slug": "training", "skills": 1, "capital": 0},
              "g": {"slug": "grant", "skills": 0, "capital": 1},
              "tg": {"slug": "training_grant", "skills": 1, "capital": 1}}
GROUPS = {"skills": ("arm_finance", "arm_marketing")}


def two_arm_data(seed=0):
    """make_data's clusters re-labelled as control / finance / marketing (the 2x2's 'both' cells
    dropped), with different true effects per arm so that the average is not trivial."""
    df = make_data(seed=seed, n_clusters=48)
    df = df[~((df["treat_skills"] == 1) & (df["treat_capital"] == 1))].copy()
    df["arm_finance"] = ((df["treat_skills"] == 1) & (df["treat_capital"] == 0)).astype(int)
    df["arm_marketing"] = ((df["treat_skills"] == 0) & (df["treat_capital"] == 1)).astype(int)
    return df.drop(columns=["treat_skills", "treat_capital"]).reset_index(drop=True)


def test_groups_only_interventions_with_several_arms():
    assert intervention_arm_groups(TWO_TRAININGS) == GROUPS
    assert intervention_arm_groups(TWO_BY_TWO) == {}
    assert arm_interventions(TWO_BY_TWO) == {"treat_skills": "skills", "treat_capital": "capital",
                                             "arm_training": "skills", "arm_grant": "capital"}


def test_harmonise_takes_the_average_instead_of_correlated_arms():
    assert effect_terms(TWO_TRAININGS) == {"treat_skills": "skills", "treat_capital": "capital",
                                           arm_average_term("skills"): "skills"}
    assert effect_terms(TWO_BY_TWO) == arm_interventions(TWO_BY_TWO)


def test_average_matches_statsmodels_joint_covariance():
    """Estimate w'b and SE sqrt(w'Vw) with w the arms' treated counts, against statsmodels with
    explicit dummies and its own CR1 covariance (an independent implementation)."""
    df = two_arm_data()
    spec = make_spec(Y, ["arm_finance", "arm_marketing"], vcov="CR1")
    row = tidy(fit(df, spec), "s", arm_groups=GROUPS, **tidy_kw()).set_index("term").loc["skills_arms_avg"]
    ref, _ = statsmodels_fit(df, spec)
    sample = df.loc[df["followup"] & df[Y].notna()]
    n = np.array([sample["arm_finance"].sum(), sample["arm_marketing"].sum()], dtype=float)
    w = pd.Series(n / n.sum(), index=["arm_finance", "arm_marketing"])
    cov = ref.cov_params().loc[w.index, w.index]
    assert row["estimate"] == pytest.approx(float(w @ ref.params[w.index]), rel=1e-9)
    assert row["std_error"] == pytest.approx(float(np.sqrt(w @ cov @ w)), rel=1e-8)
    # the shared control makes the arms positively correlated: the average's SE exceeds what
    # independence would give
    assert row["std_error"] > np.sqrt((w ** 2 * np.diag(cov)).sum())


def test_average_equals_the_pooled_treatment_dummy_without_covariates():
    """Closed form: with no controls or fixed effects each arm coefficient is a difference of means,
    and their count-weighted average is the coefficient of one 'any skills arm' dummy."""
    df = two_arm_data(seed=4)
    spec = make_spec(Y, ["arm_finance", "arm_marketing"], fixed_effects=[], baseline_control=False,
                     vcov="CR1")
    row = tidy(fit(df, spec), "s", arm_groups=GROUPS, **tidy_kw()).set_index("term").loc["skills_arms_avg"]
    sample = df.loc[df["followup"] & df[Y].notna()]
    any_arm = sample["arm_finance"] + sample["arm_marketing"]
    pooled = sm.OLS(sample[Y].to_numpy(), sm.add_constant(any_arm.to_numpy(dtype=float))).fit()
    assert row["estimate"] == pytest.approx(pooled.params[1], rel=1e-10)


def test_by_gender_averages_and_their_difference():
    """With every regressor interacted with gender, the women's (men's) average equals that of the
    women-only (men-only) fit, and the _diff row is their difference."""
    df = two_arm_data(seed=2)
    spec = make_spec(Y, ["arm_finance", "arm_marketing"], vcov="CR1")
    by_gender = tidy(fit(df, spec, by_gender=True), "s", arm_groups=GROUPS, **tidy_kw()).set_index("term")
    for sex in ("women", "men"):
        alone = tidy(fit(df, spec, sample=sex), "s", arm_groups=GROUPS, **tidy_kw()).set_index("term")
        assert by_gender.loc[f"skills_arms_avg_{sex}", "estimate"] == pytest.approx(
            alone.loc["skills_arms_avg", "estimate"], rel=1e-9)
    diff = by_gender.loc["skills_arms_avg_women", "estimate"] - by_gender.loc["skills_arms_avg_men", "estimate"]
    assert by_gender.loc["skills_arms_avg_diff", "estimate"] == pytest.approx(diff, rel=1e-9)


def test_no_average_without_groups_or_when_an_arm_is_absent():
    df = two_arm_data()
    spec = make_spec(Y, ["arm_finance"], vcov="CR1")
    terms = set(tidy(fit(df, spec), "s", arm_groups=GROUPS, **tidy_kw())["term"])
    assert terms == {"arm_finance"}
    spec = make_spec(Y, ["arm_finance", "arm_marketing"], vcov="CR1")
    assert set(tidy(fit(df, spec), "s", **tidy_kw())["term"]) == {"arm_finance", "arm_marketing"}
