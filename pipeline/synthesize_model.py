"""Cross-study synthesis: a Bayesian normal-normal hierarchical model, computed exactly.

    y_j ~ N(theta_j, se_j^2),  theta_j ~ N(mu, tau^2),  mu ~ N(m0, s0^2),
    tau ~ Uniform(0, U) | half-normal(0, s) | half-Cauchy(0, s)

(Rubin 1981; the "rubin" model of R's baggr, used by Meager 2019). Given tau, mu has a conjugate
normal posterior and p(y | tau) is closed form (mu integrated out against its normal prior), so the
posterior is a mixture over a one-dimensional grid of tau: deterministic, milliseconds per fit.

The tau grid: midpoints t_k = (k + 1/2) / n of (0, 1), mapped to tau = U t^2 for the uniform
prior and tau = s (t / (1 - t))^2 for the unbounded ones (s = the prior scale for the half-normal,
sqrt(prior scale x data scale) for the half-Cauchy, data scale = max(max se, sd y)); the map puts
points densely near 0 and reaches the heavy tail; the Jacobian enters the quadrature weights.
Quantiles of mu, theta_j and a new site's effect invert the normal mixture's CDF by bisection;
those of tau interpolate the grid CDF linearly within cells.

Every setting (priors, interval level, grid size) is an argument: the caller resolves config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

TAU_FAMILIES = ("uniform", "half_normal", "half_cauchy")


@dataclass(frozen=True)
class Priors:
    """mu ~ N(hypermean_mean, hypermean_sd^2); tau ~ hypersd_family with hypersd_scale (the
    upper bound of a uniform, the scale of a half-normal or half-Cauchy)."""
    hypermean_mean: float
    hypermean_sd: float
    hypersd_family: str
    hypersd_scale: float

    def __post_init__(self):
        if self.hypersd_family not in TAU_FAMILIES:
            raise ValueError(f"hypersd_family {self.hypersd_family!r}: one of {TAU_FAMILIES}")
        if not (np.isfinite(self.hypermean_mean) and self.hypermean_sd > 0 and self.hypersd_scale > 0
                and np.isfinite(self.hypermean_sd) and np.isfinite(self.hypersd_scale)):
            raise ValueError(f"priors need a finite mean and positive finite scales: {self}")


def baggr_default_priors(effects) -> Priors:
    """baggr's automatic priors for the rubin model on summary data (``prepare_prior`` in
    wwiecek/baggr, R/prepare_prior.R): hypermean ~ normal(0, 10 x max |tau_j|) and hypersd ~
    uniform(0, 10 x sd(tau_j)), sd with n - 1 as in R. baggr refuses to guess the hyper-SD prior
    for a single study ("specify hyper-SD prior"); so does this (ValueError), and for effects that
    are all equal (sd 0) or all zero, where the rule gives a degenerate prior."""
    y = np.asarray(effects, float)
    if len(y) < 2 or not np.all(np.isfinite(y)):
        raise ValueError("baggr_default_priors: needs at least 2 finite effects; set the hyper-SD prior explicitly")
    spread, largest = float(np.std(y, ddof=1)), float(np.max(np.abs(y)))
    if spread == 0 or largest == 0:
        raise ValueError("baggr_default_priors: effects are all equal (sd 0); set the priors explicitly")
    return Priors(0.0, 10.0 * largest, "uniform", 10.0 * spread)


def _validate(effects, ses, studies) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Float arrays and labels; ValueError naming every study with a non-finite effect or SE <= 0."""
    y, se, labels = np.asarray(effects, float).ravel(), np.asarray(ses, float).ravel(), [str(s) for s in studies]
    if not (len(y) == len(se) == len(labels)):
        raise ValueError(f"synthesize: {len(y)} effects, {len(se)} SEs and {len(labels)} study labels")
    if len(y) == 0:
        raise ValueError("synthesize: no studies to pool")
    bad = [lab for lab, a, b in zip(labels, y, se) if not (np.isfinite(a) and np.isfinite(b) and b > 0)]
    if bad:
        raise ValueError(f"synthesize: effects must be finite with SE > 0; offending studies: {bad}")
    return y, se, labels


@dataclass(frozen=True)
class TauPosterior:
    """The posterior on the tau grid for S meta-analyses at once (arrays S x K): tau nodes,
    normalised weights, and mu | tau, y ~ N(mu_mean, mu_var); ``scale`` (S,) maps t <-> tau."""
    tau: np.ndarray
    weight: np.ndarray
    mu_mean: np.ndarray
    mu_var: np.ndarray
    scale: np.ndarray
    family: str


def _tau_nodes(priors: Priors, data_scale: np.ndarray, n_grid: int):
    """tau nodes (S, K), log quadrature weights (prior density x Jacobian x dt) and the map's scale."""
    t = (np.arange(n_grid) + 0.5) / n_grid
    s, c = priors.hypersd_scale, data_scale[:, None]
    if priors.hypersd_family == "uniform":
        scale = np.full_like(c, s)
        tau, log_jac = scale * t ** 2, np.log(2 * scale * t)
        log_prior = -np.log(s)
    else:
        scale = np.full_like(c, s) if priors.hypersd_family == "half_normal" else np.sqrt(s * c)
        r = t / (1 - t)
        tau, log_jac = scale * r ** 2, np.log(2 * scale * r / (1 - t) ** 2)
        log_prior = (-0.5 * (tau / s) ** 2 if priors.hypersd_family == "half_normal"
                     else -np.log1p((tau / s) ** 2))
    return tau, log_prior + log_jac - np.log(n_grid), scale[:, 0]


def tau_posterior(effects, ses, priors: Priors, *, n_grid: int) -> TauPosterior:
    """Exact posterior over the tau grid; effects and ses are (J,) or (S, J) for S meta-analyses
    sharing one prior (vectorised: memory S x n_grid x J floats). Inputs are not validated here."""
    y, se = np.atleast_2d(np.asarray(effects, float)), np.atleast_2d(np.asarray(ses, float))
    data_scale = np.maximum(se.max(axis=1), y.std(axis=1, ddof=1) if y.shape[1] > 1 else 0.0)
    tau, log_q, scale = _tau_nodes(priors, data_scale, n_grid)
    m0, s0 = priors.hypermean_mean, priors.hypermean_sd
    v = se[:, None, :] ** 2 + tau[:, :, None] ** 2
    prec = 1.0 / s0 ** 2 + (1.0 / v).sum(axis=2)
    mu_mean = (m0 / s0 ** 2 + (y[:, None, :] / v).sum(axis=2)) / prec
    # log p(y | tau) up to a constant: N(y | m0 1, diag(v) + s0^2 11') in its conjugate form
    resid = ((y[:, None, :] - mu_mean[:, :, None]) ** 2 / v).sum(axis=2)
    log_ml = -0.5 * (np.log(v).sum(axis=2) + np.log(prec * s0 ** 2) + resid + (mu_mean - m0) ** 2 / s0 ** 2)
    log_w = log_ml + log_q
    weight = np.exp(log_w - special.logsumexp(log_w, axis=1, keepdims=True))
    return TauPosterior(tau, weight, mu_mean, 1.0 / prec, scale, priors.hypersd_family)


def mixture_cdf(weight, mean, sd, x) -> np.ndarray:
    """CDF of normal mixtures (rows of S x K arrays) at x: (S,) or (S, Q) values."""
    x = np.asarray(x, float)
    x2 = x[:, None] if x.ndim == 1 else x
    return np.einsum("sk,sqk->sq", weight, special.ndtr((x2[:, :, None] - mean[:, None, :]) / sd[:, None, :])).reshape(x.shape)


def mixture_quantile(weight, mean, sd, probs: Sequence[float]) -> np.ndarray:
    """Quantiles (S, Q) of normal mixtures by vectorised bisection of the CDF (60 halvings of a
    bracket of +-12 component SDs: exact to float precision)."""
    p = np.broadcast_to(np.asarray(probs, float), (len(weight), len(probs)))
    lo = np.broadcast_to((mean - 12 * sd).min(axis=1, keepdims=True), p.shape).copy()
    hi = np.broadcast_to((mean + 12 * sd).max(axis=1, keepdims=True), p.shape).copy()
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = mixture_cdf(weight, mean, sd, mid) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _t_of_tau(post: TauPosterior, tau) -> np.ndarray:
    u = np.asarray(tau, float) / post.scale
    return np.sqrt(u) if post.family == "uniform" else np.sqrt(u) / (1 + np.sqrt(u))


def tau_cdf(post: TauPosterior, tau) -> np.ndarray:
    """Posterior P(tau <= x) for each of the S fits (x of shape (S,)), linear within grid cells."""
    n = post.weight.shape[1]
    pos = np.clip(_t_of_tau(post, tau), 0, 1) * n
    idx = np.minimum(pos.astype(int), n - 1)
    cum = np.concatenate([np.zeros((len(idx), 1)), np.cumsum(post.weight, axis=1)], axis=1)
    rows = np.arange(len(idx))
    return np.minimum(cum[rows, idx] + (pos - idx) * post.weight[rows, idx], 1.0)


def tau_quantile(post: TauPosterior, probs: Sequence[float]) -> np.ndarray:
    """Posterior quantiles (S, Q) of tau: the grid CDF inverted within cells, mapped back to tau."""
    n = post.weight.shape[1]
    cum = np.cumsum(post.weight, axis=1)
    out = np.empty((len(cum), len(probs)))
    for q, p in enumerate(probs):
        idx = np.minimum((cum < p).sum(axis=1), n - 1)
        rows = np.arange(len(cum))
        start = cum[rows, idx] - post.weight[rows, idx]
        t = (idx + np.clip((p - start) / post.weight[rows, idx], 0, 1)) / n
        out[:, q] = post.scale * (t ** 2 if post.family == "uniform" else (t / (1 - t)) ** 2)
    return out


def _mixture_summary(weight, mean, var, interval: float, prefix: str) -> dict[str, np.ndarray]:
    """Mean, SD and equal-tailed interval of S normal mixtures, as ``{prefix}_mean`` etc."""
    m = (weight * mean).sum(axis=1)
    sd = np.sqrt(np.maximum((weight * (var + mean ** 2)).sum(axis=1) - m ** 2, 0.0))
    a = (1 - interval) / 2
    q = mixture_quantile(weight, mean, np.sqrt(var), [a, 1 - a])
    return {f"{prefix}_mean": m, f"{prefix}_sd": sd, f"{prefix}_lower": q[:, 0], f"{prefix}_upper": q[:, 1]}


POOLED_COLUMNS = ["n_studies", "mu_mean", "mu_sd", "mu_lower", "mu_upper", "mu_prob_positive", "tau_mean", "tau_median",
                  "tau_lower", "tau_upper", "predictive_mean", "predictive_sd", "predictive_lower", "predictive_upper",
                  "pooling_overall"]


def _pooled_summary(post: TauPosterior, se: np.ndarray, interval: float) -> pd.DataFrame:
    """The hyperparameters' summaries, one row per fit (POOLED_COLUMNS)."""
    a = (1 - interval) / 2
    out = _mixture_summary(post.weight, post.mu_mean, post.mu_var, interval, "mu")
    out |= _mixture_summary(post.weight, post.mu_mean, post.mu_var + post.tau ** 2, interval, "predictive")
    tq = tau_quantile(post, [0.5, a, 1 - a])
    mean_se2 = (se ** 2).mean(axis=1, keepdims=True)
    out |= {"n_studies": np.full(len(se), se.shape[1]),
            "mu_prob_positive": 1.0 - mixture_cdf(post.weight, post.mu_mean, np.sqrt(post.mu_var), np.zeros(len(se))),
            "tau_mean": (post.weight * post.tau).sum(axis=1), "tau_median": tq[:, 0], "tau_lower": tq[:, 1],
            "tau_upper": tq[:, 2],
            "pooling_overall": (post.weight * mean_se2 / (mean_se2 + post.tau ** 2)).sum(axis=1)}
    return pd.DataFrame(out)[POOLED_COLUMNS]


def fit_batch(effects, ses, priors: Priors, *, interval: float, n_grid: int) -> pd.DataFrame:
    """The pooled summaries (POOLED_COLUMNS) of S meta-analyses given as (S, J) arrays, one row
    each: for coverage and calibration simulations. Inputs must be finite with SE > 0."""
    y, se = np.atleast_2d(np.asarray(effects, float)), np.atleast_2d(np.asarray(ses, float))
    se = np.broadcast_to(se, y.shape)
    step = max(1, 2_000_000 // (n_grid * y.shape[1]))  # bounds memory; results do not depend on it
    parts = [_pooled_summary(tau_posterior(y[i:i + step], se[i:i + step], priors, n_grid=n_grid), se[i:i + step], interval)
             for i in range(0, len(y), step)]
    return pd.concat(parts, ignore_index=True)


@dataclass(frozen=True)
class HierarchicalFit:
    pooled: pd.DataFrame   # one row: POOLED_COLUMNS
    studies: pd.DataFrame  # one row per study, input order: STUDY_COLUMNS


STUDY_COLUMNS = ["study", "effect", "se", "theta_mean", "theta_sd", "theta_lower", "theta_upper", "pooling_factor"]


def fit_hierarchical(effects, ses, studies: Sequence[str], *, priors: Priors, interval: float, n_grid: int) -> HierarchicalFit:
    """Posterior of the hypermean mu, the between-study SD tau, each study's shrunk effect theta_j,
    the effect theta_new ~ N(mu, tau^2) of a new site, and pooling (Gelman & Pardoe 2006 as baggr
    reports it): per study p_j = E[se_j^2 / (se_j^2 + tau^2) | y]; overall, the same with the mean
    of se_j^2 in place of se_j^2 (baggr's ``heterogeneity``; 1 - p is the Bayesian I^2)."""
    y, se, labels = _validate(effects, ses, studies)
    post = tau_posterior(y, se, priors, n_grid=n_grid)
    b = se[None, :] ** 2 / (se[None, :] ** 2 + post.tau[0][:, None] ** 2)  # K x J shrinkage
    # theta_j | tau, y = N(b mu_m + (1 - b) y_j, (1 - b) se_j^2 + b^2 mu_v)
    means = (b * post.mu_mean[0][:, None] + (1 - b) * y).T
    var = ((1 - b) * se ** 2 + b ** 2 * post.mu_var[0][:, None]).T
    theta = _mixture_summary(np.broadcast_to(post.weight, means.shape), means, var, interval, "theta")
    table = pd.DataFrame({"study": labels, "effect": y, "se": se, **theta, "pooling_factor": post.weight[0] @ b})
    return HierarchicalFit(_pooled_summary(post, se[None, :], interval), table[STUDY_COLUMNS])


def leave_one_out(effects, ses, studies: Sequence[str], *, priors: Priors, interval: float, n_grid: int) -> pd.DataFrame:
    """For each study j: the model refitted without it (same priors) gives the predictive of a new
    site's effect theta_new (mean, SD, interval) and the log predictive density of the observed y_j
    under y_j ~ N(theta_new, se_j^2). Needs at least two studies."""
    y, se, labels = _validate(effects, ses, studies)
    if len(y) < 2:
        raise ValueError("leave_one_out: needs at least two studies")
    rows = []
    for j, label in enumerate(labels):
        keep = np.arange(len(y)) != j
        post = tau_posterior(y[keep], se[keep], priors, n_grid=n_grid)
        pred = _mixture_summary(post.weight, post.mu_mean, post.mu_var + post.tau ** 2, interval, "predictive")
        var_y = post.mu_var + post.tau ** 2 + se[j] ** 2
        log_dens = special.logsumexp(np.log(post.weight) + stats.norm.logpdf(y[j], post.mu_mean, np.sqrt(var_y)))
        rows.append({"left_out": label, "effect": y[j], "se": se[j], **{k: float(v[0]) for k, v in pred.items()},
                     "log_predictive_density": float(log_dens)})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class MetaRegressionFit:
    coefficients: pd.DataFrame  # term, mean, sd, lower, upper
    tau: pd.DataFrame           # one row: n_studies, tau_mean, tau_median, tau_lower, tau_upper


def meta_regression(effects, ses, moderators: pd.DataFrame, studies: Sequence[str], *, beta_mean, beta_sd,
                    tau_prior: Priors, interval: float, n_grid: int) -> MetaRegressionFit:
    """Bayesian meta-regression y_j ~ N(x_j' beta, se_j^2 + tau^2), x_j = (1, moderators_j),
    beta_i ~ N(beta_mean_i, beta_sd_i^2) independent (scalars or one per term, intercept first),
    tau from ``tau_prior`` (its hypermean fields are unused). Exact by integration over tau: given
    tau, beta is conjugate normal and p(y | tau) is closed form."""
    y, se, _ = _validate(effects, ses, studies)
    X = np.column_stack([np.ones(len(y)), moderators.to_numpy(float)])
    terms = ["intercept", *map(str, moderators.columns)]
    b0 = np.broadcast_to(np.asarray(beta_mean, float), (X.shape[1],))
    sb = np.broadcast_to(np.asarray(beta_sd, float), (X.shape[1],))
    if not np.all(np.isfinite(X)) or np.any(sb <= 0):
        raise ValueError("meta_regression: moderators must be finite and beta_sd positive")
    tau, log_q, scale = _tau_nodes(tau_prior, np.array([max(se.max(), y.std(ddof=1) if len(y) > 1 else 0.0)]), n_grid)
    w = 1.0 / (se[None, :] ** 2 + tau[0][:, None] ** 2)                               # K x J
    prec = np.einsum("kj,ja,jb->kab", w, X, X) + np.diag(1.0 / sb ** 2)              # K x p x p
    m = np.linalg.solve(prec, ((w * y) @ X + b0 / sb ** 2)[:, :, None])[:, :, 0]      # K x p
    cov = np.linalg.inv(prec)
    resid = (w * (y - m @ X.T) ** 2).sum(axis=1) + (((m - b0) / sb) ** 2).sum(axis=1)
    log_ml = -0.5 * (-np.log(w).sum(axis=1) + np.linalg.slogdet(prec)[1] + resid)
    log_w = log_ml + log_q[0]
    weight = np.exp(log_w - special.logsumexp(log_w))
    sd_k = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))                               # K x p
    coef = _mixture_summary(np.broadcast_to(weight, m.T.shape), m.T, sd_k.T ** 2, interval, "beta")
    coefficients = pd.DataFrame({"term": terms, **{k.removeprefix("beta_"): v for k, v in coef.items()}})
    post = TauPosterior(tau, weight[None, :], m[None, :, 0], sd_k[None, :, 0] ** 2, scale, tau_prior.hypersd_family)
    a = (1 - interval) / 2
    tq = tau_quantile(post, [0.5, a, 1 - a])[0]
    tau_row = pd.DataFrame([{"n_studies": len(y), "tau_mean": float(weight @ tau[0]), "tau_median": tq[0],
                             "tau_lower": tq[1], "tau_upper": tq[2]}])
    return MetaRegressionFit(coefficients, tau_row)


def interval_coverage(se, mu: float, tau: float, priors: Priors, *, interval: float, n_grid: int, draws: int,
                      seed_sequence: np.random.SeedSequence) -> dict:
    """Frequentist coverage of the pooled-mean interval at fixed (mu, tau) and the studies' own SEs:
    ``draws`` meta-analyses theta_j ~ N(mu, tau^2), y_j ~ N(theta_j, se_j^2), each fitted with the same
    (fixed) priors; the share whose interval contains mu, with its Monte Carlo SE."""
    se = np.asarray(se, float)
    rng = np.random.default_rng(seed_sequence)
    theta = mu + tau * rng.standard_normal((draws, len(se)))
    y = theta + se * rng.standard_normal((draws, len(se)))
    fits = fit_batch(y, se, priors, interval=interval, n_grid=n_grid)
    covered = ((fits["mu_lower"] <= mu) & (mu <= fits["mu_upper"])).to_numpy()
    share = float(covered.mean())
    return {"coverage_mu": share, "coverage_mu_mc_se": float(np.sqrt(share * (1 - share) / draws)),
            "coverage_at_mu": float(mu), "coverage_at_tau": float(tau), "coverage_draws": int(draws)}
