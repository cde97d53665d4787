"""Tests for pipeline.estimation.sample: the estimation sample (clear errors naming the column) and the
outcome transforms, against hand computations.
"""
from __future__ import annotations

import numpy as np
import pytest

from _estimation_data import Y, TREATS, make_data, with_extras
from pipeline.estimation.fit import fit
from pipeline.estimation.sample import transform_outcome
from pipeline.estimation.tables import estimate_gender_effects, estimate_study
from _params import make_spec, params_group, study_kw


@pytest.mark.parametrize("column", ["cluster_id", "stratum", "treat_capital", Y, "followup"])
def test_missing_column_is_named(column):
    df = make_data(seed=11).drop(columns=[column])
    with pytest.raises(ValueError, match=column):
        fit(df, make_spec(Y, TREATS, vcov="CR1"))


def test_missing_gender_column_is_named():
    df = make_data(seed=11).drop(columns=["female_owner"])
    with pytest.raises(ValueError, match="female_owner"):
        estimate_gender_effects(df, make_spec(Y, TREATS, vcov="CR1"), alpha=study_kw()["alpha"], power=study_kw()["power"])


def test_half_baseline_columns_is_an_error():
    df = make_data(seed=11).drop(columns=[f"{Y}_bl_missing"])
    with pytest.raises(ValueError, match=f"{Y}_bl_missing"):
        fit(df, make_spec(Y, TREATS, vcov="CR1"))


def test_no_variation_is_named():
    df = make_data(seed=12)
    df["treat_skills"] = 0
    with pytest.raises(ValueError, match="treat_skills.*no variation"):
        fit(df, make_spec(Y, TREATS, vcov="CR1"))
    df = make_data(seed=12)
    df.loc[df["female_owner"] == 0, "treat_capital"] = 0     # no variation among men
    with pytest.raises(ValueError, match="treat_capital.*no variation"):
        fit(df, make_spec(Y, TREATS, interact_treatments=False, vcov="CR1"), by_gender=True)


def test_empty_outcome_is_named():
    df = make_data(seed=13)
    df.loc[df["followup"], Y] = np.nan
    with pytest.raises(ValueError, match=f"{Y}.*no non-missing"):
        estimate_study(df, [Y], params_group("estimate", treatments=TREATS, vcov="CR1"), "s", **study_kw())


def test_missing_design_values_are_errors():
    df = make_data(seed=14)
    df.loc[5, "cluster_id"] = None
    df.loc[5, "followup"] = True
    df.loc[5, Y] = 1.0
    with pytest.raises(ValueError, match="cluster_id"):
        fit(df, make_spec(Y, TREATS, vcov="CR1"))


def test_transform_outcome_by_hand():
    df = with_extras(make_data(seed=21, n_clusters=24), seed=1)
    df.loc[df.index[:40], Y] = -5.0       # some non-positive profits
    df.loc[df.index[40:50], Y] = 0.0
    d, name = transform_outcome(df, Y, "log", trim_top_pct=params_group("estimate")["trim_top_pct"])
    y = df[Y]
    np.testing.assert_allclose(d[name], np.log(y.where(y > 0)))
    assert d[name].isna().sum() == (y.isna() | (y <= 0)).sum()
    v = df[f"{Y}_bl"]
    ok = (df[f"{Y}_bl_missing"] == 0) & (v > 0)
    np.testing.assert_allclose(d[f"{name}_bl"], np.where(ok, np.log(v.where(ok)), 0.0))
    np.testing.assert_array_equal(d[f"{name}_bl_missing"], (~ok).astype(int))
    d, name = transform_outcome(df, Y, "ihs", trim_top_pct=params_group("estimate")["trim_top_pct"])
    np.testing.assert_allclose(d[name], np.arcsinh(y))
    d, name = transform_outcome(df, Y, "unwinsorised", trim_top_pct=params_group("estimate")["trim_top_pct"])
    np.testing.assert_array_equal(d[f"{name}_bl"], df[f"{Y}_unwinsorised_bl"])
    # trimmed: per round, values above the 90th percentile of that round (unwinsorised) dropped
    d, name = transform_outcome(df, Y, "trimmed", trim_top_pct=10)
    for _, g in df.groupby("round"):
        u = g[f"{Y}_unwinsorised"]
        thr = np.quantile(u.dropna(), 0.9)
        kept = d.loc[g.index, name]
        assert kept.notna().sum() == (u <= thr).sum()
        assert kept.max() <= thr
    np.testing.assert_array_equal(d[f"{name}_bl"], df[f"{Y}_bl"])
    d, name = transform_outcome(df, Y, "level", trim_top_pct=params_group("estimate")["trim_top_pct"])
    assert d is df and name == Y
    with pytest.raises(ValueError, match="unknown transform"):
        transform_outcome(df, Y, "sqrt", trim_top_pct=params_group("estimate")["trim_top_pct"])


def test_a_non_finite_value_names_the_study_column_and_rows():
    df = make_data(seed=11)
    df.insert(0, "study", "tiny")
    at = int(np.flatnonzero(df["followup"].to_numpy() == 1)[3])
    bad = df.copy()
    bad.loc[bad.index[at], Y] = np.inf
    with pytest.raises(ValueError, match=rf"tiny: column '{Y}' has infinite values at rows \[{at}\] of the "
                                         rf"analysis table"):
        fit(bad, make_spec(Y, TREATS, vcov="CR1"))
    bad = df.copy()
    bad.loc[bad.index[at], f"{Y}_bl"] = -np.inf
    with pytest.raises(ValueError, match=rf"tiny: column '{Y}_bl' has missing \(NaN\) or infinite values in the "
                                         rf"estimation sample of '{Y}' at rows \[{at}\] of the analysis table"):
        fit(bad, make_spec(Y, TREATS, vcov="CR1"))
