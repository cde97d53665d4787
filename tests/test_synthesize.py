"""The synthesis against published references and an independent brute-force grid."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import synthesize

META = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meta_reference"
needs_meta = pytest.mark.skipif(not META.exists() and not os.environ.get("CI"), reason="../shared/data not present")


def schools() -> pd.DataFrame:
    return pd.read_csv(META / "schools.csv")


@needs_meta
def test_eight_schools_matches_brms_within_baggr_tolerance():
    """brms (100,000 iterations) in ../shared/data/README.md; baggr's own tests accept +-0.25."""
    d = schools()
    fit = synthesize.fit_hierarchical(d["tau"], d["se"], list(d["group"]), priors=synthesize.baggr_default_priors(d["tau"]),
                                      interval=0.95, grid_points=4000)
    assert abs(fit.pooled["mu_mean"].iloc[0] - 7.88) < 0.25
    reference = [11.39, 7.86, 6.09, 7.63, 5.11, 6.12, 10.64, 8.42]
    assert np.allclose(fit.studies["theta_mean"], reference, atol=0.25)


@needs_meta
def test_bangert_drowns_dersimonian_laird_matches_metafor():
    d = pd.read_csv(META / "bangertdrowns2004.csv", sep=r"\s+")
    res = synthesize.frequentist_random_effects(d["tau"], d["se"], method="dl")
    assert (round(res["estimate"], 2), round(res["ci_low"], 2), round(res["ci_high"], 2)) == (0.22, 0.13, 0.31)


def brute_force_grid(y, se, priors, n=1500):
    """Independent two-dimensional grid over (mu, tau), theta integrated out analytically."""
    mu = np.linspace(priors.hypermean_mean - 60, priors.hypermean_mean + 60, n)
    tau = (np.arange(n) + 0.5) * priors.hypersd_upper / n
    M, T = np.meshgrid(mu, tau, indexing="ij")
    logp = -0.5 * ((M - priors.hypermean_mean) / priors.hypermean_sd) ** 2
    for yj, sj in zip(y, se):
        v = sj ** 2 + T ** 2
        logp = logp - 0.5 * np.log(v) - 0.5 * (yj - M) ** 2 / v
    w = np.exp(logp - logp.max())
    w /= w.sum()
    mu_mean = float((w * M).sum())
    theta = [float((w * ((sj ** 2 * M + T ** 2 * yj) / (sj ** 2 + T ** 2))).sum()) for yj, sj in zip(y, se)]
    return mu_mean, float(np.sqrt((w * (M - mu_mean) ** 2).sum())), float((w * T).sum()), theta


@pytest.mark.parametrize("y,se", [([28, 8, -3, 7, -1, 1, 18, 12], [15, 10, 16, 11, 9, 11, 10, 18]),
                                  ([1.0, 3.0, -2.0], [2.0, 1.5, 2.5])])
def test_exact_fit_equals_a_brute_force_two_dimensional_grid(y, se):
    priors = synthesize.Priors(0.0, 20.0, 30.0)
    fit = synthesize.fit_hierarchical(y, se, [str(i) for i in range(len(y))], priors=priors, interval=0.95, grid_points=4000)
    mu_mean, mu_sd, tau_mean, theta = brute_force_grid(np.array(y, float), np.array(se, float), priors)
    p = fit.pooled.iloc[0]
    assert p["mu_mean"] == pytest.approx(mu_mean, abs=0.02)
    assert p["mu_sd"] == pytest.approx(mu_sd, abs=0.02)
    assert p["tau_mean"] == pytest.approx(tau_mean, abs=0.05)
    assert np.allclose(fit.studies["theta_mean"], theta, atol=0.03)


def test_calibrated_on_meta_analyses_drawn_from_the_prior():
    """Simulation-based calibration (Talts et al. 2018): the posterior CDF of mu at the true mu is
    uniform and 95% intervals cover 95% over 1,000 meta-analyses drawn from the prior."""
    rng = np.random.default_rng(np.random.SeedSequence(20261202))
    priors = synthesize.Priors(0.0, 5.0, 5.0)
    se = np.array([1.0, 2.0, 1.5, 3.0, 1.0, 2.5, 2.0, 1.2])
    pit, covered = [], 0
    for _ in range(1000):
        mu, tau = rng.normal(0, 5), rng.uniform(0, 5)
        y = rng.normal(rng.normal(mu, tau, len(se)), se)
        tg, w, mm, mv = synthesize._tau_posterior(y, se, priors, 400)
        s = synthesize._mixture_summary(w, mm, mv, 0.95)
        pit.append(s["cdf"](mu))
        covered += s["lower"] <= mu <= s["upper"]
    counts, _ = np.histogram(pit, bins=10, range=(0, 1))
    from scipy import stats
    assert stats.chisquare(counts).pvalue > 0.001
    assert abs(covered / 1000 - 0.95) < 3 * np.sqrt(0.95 * 0.05 / 1000)


def test_invalid_standard_error_names_the_study():
    with pytest.raises(ValueError, match="bad"):
        synthesize.fit_hierarchical([1.0, 2.0], [1.0, 0.0], ["good", "bad"], priors=synthesize.Priors(0, 10, 10),
                                    interval=0.95, grid_points=100)


def test_a_single_study_is_shrunk_towards_the_prior_only_slightly():
    fit = synthesize.fit_hierarchical([5.0], [1.0], ["only"], priors=synthesize.baggr_default_priors(np.array([5.0])),
                                      interval=0.95, grid_points=2000)
    assert 3.5 < fit.pooled["mu_mean"].iloc[0] < 5.5
