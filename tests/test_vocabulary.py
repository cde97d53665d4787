"""Tests for pipeline.vocabulary: the words the estimate stage writes are the words its readers and the
synthetic truth use (each checked on real output of the producing code, not on the constants alone)."""
from __future__ import annotations

from _estimation_data import Y, TREATS, make_data
from _params import make_spec, params_group, tidy_kw
from pipeline import harmonise, report_tables, synthetic, vocabulary
from pipeline.estimation.fit import fit
from pipeline.estimation.tables import tidy


def test_by_gender_terms_are_built_from_the_vocabulary_and_split_back():
    t = tidy(fit(make_data(seed=40, n_clusters=16), make_spec(Y, TREATS, vcov="CR1"), by_gender=True), **tidy_kw())
    terms = [*TREATS, vocabulary.INTERACTION_TERM]
    expected = [vocabulary.sex_term(term, s) for term in terms for s in (*vocabulary.SEXES, vocabulary.DIFF)]
    assert t["term"].tolist() == expected
    assert [vocabulary.split_sex_term(x) for x in expected] == [
        (term, s) for term in terms for s in (*vocabulary.SEXES, vocabulary.DIFF)]
    assert set(t["model"]) == {vocabulary.BY_GENDER}
    split = tidy(fit(make_data(seed=40, n_clusters=16), make_spec(Y, TREATS, vcov="CR1"), sample=vocabulary.MEN),
                 **tidy_kw())
    assert set(split["model"]) == {vocabulary.SAMPLE_MODELS[vocabulary.MEN]}


def test_the_synthetic_truth_uses_the_effect_keys_and_sexes():
    _, _, _, truth = synthetic.generate({**params_group("synthetic"), "n_firms": 80, "n_regions": 2, "n_sectors": 2})
    assert list(truth["itt"]) == list(vocabulary.EFFECT_KEYS.values())
    assert all(list(v) == list(vocabulary.SEXES) for v in truth["itt"].values())
    p = params_group("synthetic")
    assert truth["itt"]["capital"]["men"] == float(p["effect_grant_men"])
    assert truth["itt_difference_women_minus_men"]["skills"] == p["effect_training_women"] - p["effect_training_men"]


def test_readers_use_the_same_words():
    assert harmonise.GROUPS == vocabulary.SAMPLES
    assert harmonise.INTERVENTIONS == ("skills", "capital")
    assert list(report_tables.TERM_LABELS) == [*vocabulary.TREATMENTS, vocabulary.INTERACTION_TERM,
                                               "skills_arms_avg", "capital_arms_avg"]
    assert report_tables.SEX_LABELS == {"women": "women", "men": "men", "diff": "women − men"}
    assert report_tables.SEXES == {"women": "Women", "men": "Men"}


def test_attrition_note_states_the_joint_test_df():
    import pandas as pd
    row = pd.Series({"joint_p_value": 0.0123, "joint_df_num": 3, "joint_df_denom": 149})
    assert report_tables._joint_test_words(row) == "F(3, 149) p = 0.012"
    assert report_tables._joint_test_words(pd.Series({"joint_p_value": 0.5})) == "p = 0.500"
    refused = pd.Series({"joint_f_stat": float("nan"), "joint_p_value": float("nan"), "joint_df_num": 3,
                         "joint_df_denom": 14})
    assert report_tables._joint_test_words(refused) == "not reported (the covariance of the 3 tested terms is singular)"
