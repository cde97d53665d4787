"""Tests for pipeline.qte: a location-scale simulation's known quantile effects and bootstrap SE, and
the difference of sample quantiles without controls."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from _arms_data import two_salt_designs

from pipeline import qte, quantreg

# The specification the estimate stage resolves for a study like these (params: estimate group).
SPEC = {"cluster": "cluster_id", "baseline_control": True, "interact": True, "followup_only": True,
        "listwise_baseline": False, "alpha": 0.05, "study": None}


# ------------------------------------------------------------------------------------------
# Quantile treatment effects
# ------------------------------------------------------------------------------------------
def _qte_data(seed=0, n_clusters=120, firms=25, shift=2.0, scale=1.0):
    """Y0 = e, Y1 = shift + (1 + scale) e, e ~ N(0, 1), one follow-up round, treatment by
    cluster within 4 strata, both sexes with identical effects except women get + 1 shift."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_clusters), firms)
    strata = g % 4
    tc = np.empty(n_clusters, int)
    for s in range(4):                       # half the clusters of each stratum treated
        members = np.flatnonzero(np.arange(n_clusters) % 4 == s)
        tc[members] = rng.permutation(np.arange(len(members)) % 2)
    d = tc[g]
    female = rng.integers(0, 2, len(g))
    e = rng.normal(size=len(g))
    y = np.where(d == 1, shift + female + (1 + scale) * e, e)
    return pd.DataFrame({"followup": True, "round": 1, "stratum": [f"S{s}" for s in strata],
                         "cluster_id": [f"C{c:03d}" for c in g], "female_owner": female.astype(float),
                         "treat_capital": d, "y": y})


def test_qte_recovers_location_scale_quantile_effects_with_right_bootstrap_se():
    """QTE(tau) = shift (+1 for women) + scale * z_tau. Asymptotic SE of a difference of two
    sample quantiles: sqrt(tau (1 - tau)) * sqrt(1/(n1 f1^2) + 1/(n0 f0^2)) (independent units)."""
    df = _qte_data(seed=4)
    quantiles = [0.25, 0.5, 0.75]
    tab = qte.qte_table(df, "y", ["treat_capital"], quantiles, **SPEC, reps=60, seed=5, fixed_effects=(),
                        samples=("women", "men"))
    for _, r in tab.iterrows():
        z = stats.norm.ppf(r["quantile"])
        truth = {"women": 3 + z, "men": 2 + z, "diff": 1.0}[r["sample"]]
        assert abs(r["estimate"] - truth) < 4 * r["std_error"], (r["sample"], r["quantile"])
        if r["sample"] != "diff":
            sub = df[df["female_owner"] == (1 if r["sample"] == "women" else 0)]
            n1, n0 = (sub["treat_capital"] == 1).sum(), (sub["treat_capital"] == 0).sum()
            tau = r["quantile"]
            f0 = stats.norm.pdf(z)
            f1 = stats.norm.pdf(z) / 2            # Y1 has sd 2 at its tau-quantile
            se = np.sqrt(tau * (1 - tau)) * np.sqrt(1 / (n1 * f1 ** 2) + 1 / (n0 * f0 ** 2))
            assert r["std_error"] == pytest.approx(se, rel=0.35)
            assert r["ci_low"] < r["estimate"] < r["ci_high"]
    diff = tab[tab["sample"] == "diff"].set_index("quantile")["estimate"]
    w = tab[tab["sample"] == "women"].set_index("quantile")["estimate"]
    m = tab[tab["sample"] == "men"].set_index("quantile")["estimate"]
    np.testing.assert_allclose(diff, w - m, rtol=1e-12)


def test_qte_without_controls_is_the_difference_of_sample_quantiles_and_deterministic():
    df = _qte_data(seed=6, n_clusters=40, firms=11)
    df = df[df["female_owner"] == 1]
    tab = qte.qte_table(df, "y", ["treat_capital"], [0.5], **SPEC, reps=8, seed=1, fixed_effects=(),
                        samples=("women",))
    y1 = df.loc[df["treat_capital"] == 1, "y"]
    y0 = df.loc[df["treat_capital"] == 0, "y"]
    # any point between order statistics minimises; the exact solver lands inside that set
    lo = np.quantile(y1, 0.5, method="inverted_cdf") - np.quantile(y0, 0.5, method="higher")
    hi = np.quantile(y1, 0.5, method="higher") - np.quantile(y0, 0.5, method="inverted_cdf")
    est = tab["estimate"].iloc[0]
    assert min(lo, hi) - 1e-9 <= est <= max(lo, hi) + 1e-9
    again = qte.qte_table(df, "y", ["treat_capital"], [0.5], **SPEC, reps=8, seed=1, fixed_effects=(),
                          samples=("women",))
    pd.testing.assert_frame_equal(tab, again)


def _bootstrap_by_hand(df, quantiles, reps, seed):
    """The bootstrap written out for one treatment, no baseline, no fixed effects, one sample:
    clusters (numbered by first appearance) resampled within strata by the stage's stream
    (inference.stratified_cluster_draws), each resample's rows refitted by the solver (``quantreg.rq_fit``, tested on its own in test_quantreg)."""
    import statsmodels.api as sm

    from pipeline import inference, quantreg

    codes, levels = pd.factorize(df["cluster_id"])
    strata = df.groupby(codes)["stratum"].first().astype(str).to_numpy()
    y, X = df["y"].to_numpy(), sm.add_constant(df["treat_capital"].to_numpy(dtype=float))
    boot = np.empty((reps, len(quantiles)))
    for b, draw in enumerate(inference.stratified_cluster_draws(strata, reps, seed)):
        rows = np.concatenate([np.flatnonzero(codes == c) for c in draw])
        boot[b] = [quantreg.rq_fit(X[rows], y[rows], q)[1] for q in quantiles]
    return boot


def test_qte_bootstrap_is_the_same_here_on_workers_and_on_a_remote_scheduler(dask_clients, loopback_scheduler,
                                                                              monkeypatch):
    """The replications in chunks of 2 give the table of the loop written out by hand, and the same table to the
    last bit here, on LocalClusters of 1 and 2 workers and on a loopback "remote" scheduler."""
    from pipeline import parallel

    df = _qte_data(seed=8, n_clusters=24, firms=6)
    df = df[df["female_owner"] == 1]
    quantiles, reps = [0.25, 0.5], 7
    kwargs = {**SPEC, "baseline_control": False, "interact": False, "reps": reps, "seed": 3, "fixed_effects": (),
              "samples": ("women",)}
    monkeypatch.setattr(qte, "CHUNK_REPS", 2)
    here = qte.qte_table(df, "y", ["treat_capital"], quantiles, **kwargs)
    boot = _bootstrap_by_hand(df, quantiles, reps, 3)
    # the hand-built design differs from the stage's in its last bits, and the interior-point solution moves with
    # them within the solver's accuracy (its stop is a relative duality gap of 1e-10 on the loss)
    np.testing.assert_allclose(here["std_error"], boot.std(axis=0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(here["ci_low"], np.quantile(boot, 0.025, axis=0), rtol=1e-6)
    np.testing.assert_allclose(here["ci_high"], np.quantile(boot, 0.975, axis=0), rtol=1e-6)
    for n in (1, 2):
        with parallel.Workers(n, client=dask_clients[n]) as workers:
            pd.testing.assert_frame_equal(qte.qte_table(df, "y", ["treat_capital"], quantiles, **kwargs,
                                                        workers=workers), here, check_exact=True)
    monkeypatch.setattr(parallel, "PAYS_OFF_SECONDS", 0.0)
    with parallel.Workers(2, address=loopback_scheduler) as remote:
        pd.testing.assert_frame_equal(qte.qte_table(df, "y", ["treat_capital"], quantiles, **kwargs,
                                                    workers=remote), here, check_exact=True)
        assert remote.started


def test_qte_table_does_not_depend_on_the_hash_salt_of_cluster_and_stratum_ids():
    """Issue 8: with salted-hash cluster and stratum ids the bootstrap CIs followed the salt
    (clusters numbered in sorted-hash order before drawing; strata dummies in sorted order)."""
    one, other = two_salt_designs()
    a, b = (qte.qte_table(df.dropna(subset=["y"]), "y", ["treat_skills", "treat_capital"], [0.25, 0.5], **SPEC,
                          reps=30, seed=2, fixed_effects=("stratum",), samples=("women", "men"))
            for df in (one, other))
    assert a["ci_low"].notna().all() and set(a["sample"]) == {"women", "men", "diff"}
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_fit_quantiles_leaves_out_aliased_columns_and_gives_nan_where_a_term_is_not_identified():
    """A dummy without variation in a resample does not change the fit; an aliased term has no
    coefficient; too few rows give NaN, not an error."""
    rng = np.random.default_rng(11)
    n = 200
    t = rng.integers(0, 2, (n, 2)).astype(float)
    y = 1 + t @ [2.0, -1.0] + rng.normal(size=n)
    X = np.c_[np.ones(n), t, rng.normal(size=n)]
    full = qte._fit_quantiles(y, X, [0.25, 0.5], 2)
    for q, row in zip([0.25, 0.5], full):
        np.testing.assert_allclose(row, quantreg.rq_fit(X, y, q)[1:3], rtol=1e-7)
    with_empty_dummy = qte._fit_quantiles(y, np.c_[X, np.zeros(n)], [0.25, 0.5], 2)
    np.testing.assert_allclose(with_empty_dummy, full, rtol=1e-7)
    aliased = np.c_[np.ones(n), t[:, 0], t[:, 0], X[:, 3]]      # the second term equal to the first
    out = qte._fit_quantiles(y, aliased, [0.5], 2)
    assert np.isfinite(out[0, 0]) and np.isnan(out[0, 1])
    assert np.isnan(qte._fit_quantiles(y[:3], X[:3], [0.5], 2)).all()
