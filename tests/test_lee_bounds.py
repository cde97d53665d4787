"""Tests for pipeline.lee_bounds: hand computations and the closed form of normal-distribution
trimming."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from _arms_data import DESIGN, design_2x2, two_salt_designs

from pipeline import lee_bounds as lee

LEE = {**DESIGN, "cells": ("stratum",), "alpha": 0.05}       # trimming cells: strata (estimate.lee_cells)


# ------------------------------------------------------------------------------------------
# Lee bounds
# ------------------------------------------------------------------------------------------
def test_trimmed_mean_fractional_by_hand():
    v = [5, 1, 4, 2, 3]
    assert lee.trimmed_mean(v, 0.3, "top") == pytest.approx((1 + 2 + 3 + 0.5 * 4) / 3.5)
    assert lee.trimmed_mean(v, 0.3, "bottom") == pytest.approx((5 + 4 + 3 + 0.5 * 2) / 3.5)
    assert lee.trimmed_mean(v, 0.0, "top") == pytest.approx(3.0)
    assert lee.trimmed_mean(v, 0.4, "top") == pytest.approx(2.0)


def test_lee_bounds_by_hand():
    """Treated: 5 of 5 observed (1..5); control: 4 of 5 observed (1..4, mean 2.5).
    p = (1 - 0.8) / 1 = 0.2: trim one treated value. Lower: mean(1..4) - 2.5 = 0; upper:
    mean(2..5) - 2.5 = 1."""
    y = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, np.nan])
    t = np.array([1] * 5 + [0] * 5)
    b = lee.lee_bounds(y, ~np.isnan(y), t)
    assert (b["lower"], b["upper"], b["trim_share"]) == pytest.approx((0.0, 1.0, 0.2))
    assert b["trimmed_arm"] == "treated"
    # Mirror image: the controls are observed more -> trim the controls.
    b2 = lee.lee_bounds(y, ~np.isnan(y), 1 - t)
    assert (b2["lower"], b2["upper"]) == pytest.approx((-1.0, 0.0))
    assert b2["trimmed_arm"] == "control"


def test_lee_bounds_within_cells_by_hand():
    """Cell A: treated 1..5 all observed, controls 4 of 5 (mean 2.5): bounds [0, 1], p = 0.2,
    always-observed weight N_A q0_A = 10 x 0.8 = 8. Cell B: treated 10, 20 observed of 2, controls
    10 and 20 observed of 2 (p = 0): bounds [0, 0], weight 4 x 1 = 4. Pooled: [0, 8/12]."""
    y = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, np.nan, 10, 20, 10, 20], float)
    t = np.array([1] * 5 + [0] * 5 + [1, 1, 0, 0])
    cells = np.array(["A"] * 10 + ["B"] * 4)
    b = lee.lee_bounds(y, ~np.isnan(y), t, cells)
    assert b["lower"] == pytest.approx(0.0)
    assert b["upper"] == pytest.approx(8 / 12)
    assert b["trim_share"] == pytest.approx(0.2 * 8 / 12)


def test_lee_bounds_normal_closed_form():
    """Y0 ~ N(0,1), Y1 = Y0 + 1, controls missing at random with probability 0.2, treated all
    observed: p = 0.2, bounds 1 -+ phi(z_0.8) / 0.8 (mean of a normal truncated at its 80th
    percentile), which contain the true effect 1."""
    rng = np.random.default_rng(0)
    n = 400_000
    t = rng.integers(0, 2, n)
    y = rng.normal(size=n) + t
    observed = (t == 1) | (rng.random(n) < 0.8)
    b = lee.lee_bounds(y, observed, t)
    half = stats.norm.pdf(stats.norm.ppf(0.8)) / 0.8
    assert b["lower"] == pytest.approx(1 - half, abs=0.015)
    assert b["upper"] == pytest.approx(1 + half, abs=0.015)
    assert b["trim_share"] == pytest.approx(0.2, abs=0.005)


def test_lee_bounds_table_runs_with_bootstrap():
    df = design_2x2(seed=2, n_strata=3, clusters_per_arm=3, firms=8)
    rng = np.random.default_rng(1)
    df["y"] = rng.normal(size=len(df)) + df["treat_capital"]
    df.loc[(df["arm"] == "Control") & (rng.random(len(df)) < 0.3), "y"] = np.nan
    tab = lee.lee_bounds_table(df, "y", **LEE, reps=30, seed=3, samples=("all", "women"))
    assert len(tab) == 6 and (tab["lower"] <= tab["upper"]).all()
    assert (tab["ci_low"] <= tab["lower"]).all() and (tab["ci_high"] >= tab["upper"]).all()
    assert (tab["n_boot"] == 30).all() and (tab["trimmed_arm"] == "treated").all()
    again = lee.lee_bounds_table(df, "y", **LEE, reps=30, seed=3, samples=("all", "women"))
    pd.testing.assert_frame_equal(tab, again)


def test_lee_bounds_table_does_not_depend_on_the_hash_salt_of_cluster_and_stratum_ids():
    """Issue 8: with salted-hash cluster and stratum ids the bootstrap CIs followed the salt
    (clusters and strata numbered in sorted-hash order before drawing)."""
    one, other = two_salt_designs()
    a, b = (lee.lee_bounds_table(df, "y", **LEE, reps=40, seed=3, samples=("all", "women")) for df in (one, other))
    assert a["ci_low"].notna().all() and (a["n_boot"] > 30).all()
    pd.testing.assert_frame_equal(a, b, check_exact=True)
