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
from typing import Mapping, Sequence

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
    b0, sb = np.broadcast_to(np.asarray(beta_mean, float), (X.shape[1],)), np.broadcast_to(np.asarray(beta_sd, float), (X.shape[1],))
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


def frequentist_random_effects(effects, ses, *, method: str, interval: float) -> dict:
    """Random-effects pooled estimate via statsmodels' ``combine_effects``: "dl" DerSimonian-Laird
    (statsmodels does not truncate a negative tau^2; here it is truncated at 0 and the estimate
    recomputed, as metafor does) or "pm" Paule-Mandel (iterated to |Q - (k-1)| < 1e-10).
    Normal-theory (z) interval. Fewer than two studies: NaNs."""
    from statsmodels.stats.meta_analysis import combine_effects

    y, se = np.asarray(effects, float), np.asarray(ses, float)
    if len(y) < 2:
        return {"estimate": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan, "tau2": np.nan}
    if method not in ("dl", "pm"):
        raise ValueError(f"frequentist_random_effects: method {method!r}: 'dl' or 'pm'")
    with np.errstate(invalid="ignore"):  # statsmodels' HKSJ SD of a negative DL tau^2 (unused here)
        res = (combine_effects(y, se ** 2, method_re="dl") if method == "dl"
               else combine_effects(y, se ** 2, method_re="pm", atol=1e-10, maxiter=1000))
    tau2 = max(float(res.tau2), 0.0)
    wts = 1.0 / (se ** 2 + tau2)
    est, sd = float(np.sum(wts * y) / wts.sum()), float(np.sqrt(1.0 / wts.sum()))
    z = stats.norm.ppf(0.5 + interval / 2)
    return {"estimate": est, "se": sd, "ci_low": float(est - z * sd), "ci_high": float(est + z * sd), "tau2": tau2}


def frequentist_meta_regression(effects, ses, moderators: pd.DataFrame) -> pd.DataFrame:
    """Mixed-effects meta-regression, tau^2 by the method of moments (DerSimonian-Laird
    generalised, truncated at 0), weights 1 / (se^2 + tau^2), z intervals (95%)."""
    y, se = np.asarray(effects, float), np.asarray(ses, float)
    X = np.column_stack([np.ones(len(y)), moderators.to_numpy(float)])
    names = ["intercept", *moderators.columns]
    k, p = X.shape
    if k <= p or np.linalg.matrix_rank(X) < p:
        return pd.DataFrame(columns=["term", "estimate", "std_error", "ci_low", "ci_high", "tau2", "n_studies"])
    w = 1.0 / se ** 2
    xtwx = X.T @ (w[:, None] * X)
    q = float(np.sum(w * (y - X @ np.linalg.solve(xtwx, X.T @ (w * y))) ** 2))
    trace_p = w.sum() - np.trace(np.linalg.solve(xtwx, X.T @ (w[:, None] ** 2 * X)))
    tau2 = max(0.0, (q - (k - p)) / trace_p)
    w2 = 1.0 / (se ** 2 + tau2)
    cov = np.linalg.inv(X.T @ (w2[:, None] * X))
    beta = cov @ X.T @ (w2 * y)
    sd = np.sqrt(np.diag(cov))
    z = stats.norm.ppf(0.975)
    return pd.DataFrame({"term": names, "estimate": beta, "std_error": sd, "ci_low": beta - z * sd,
                         "ci_high": beta + z * sd, "tau2": tau2, "n_studies": k})


# ------------------------------------------------------------------------------------------
# The synthesize stage: every study's effects on one scale, pooled per (scale, intervention,
# owners), written to data/synthesis/.
# ------------------------------------------------------------------------------------------
def resolve_priors(effects: np.ndarray, hypermean: str, hypersd: str) -> "Priors":
    """The priors of one synthesis: ``baggr`` applies baggr's default rule to these effects."""
    if hypermean != "baggr" or hypersd != "baggr":
        raise ValueError(f"synthesize: prior_hypermean / prior_hypersd {hypermean!r}/{hypersd!r}: only 'baggr' "
                         "(baggr's defaults) is implemented")
    return baggr_default_priors(effects)


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


def group_seed(seed: int, key: tuple[str, ...]) -> np.random.SeedSequence:
    """A seed per synthesis group from the params seed and the group's name (not its position, so
    adding a group leaves the others' draws unchanged)."""
    import zlib
    return np.random.SeedSequence([int(seed), zlib.crc32("/".join(key).encode())])


def pool_group(effects: pd.DataFrame, key: tuple[str, str, str], settings: Mapping) -> dict:
    """Pool one (scale, intervention, group): the hierarchical model, its leave-one-out and the
    frequentist random-effects cross-checks."""
    y = effects["effect"].to_numpy(float)
    se = effects["std_error"].to_numpy(float)
    labels = [f"{s}:{a}" for s, a in zip(effects["study"], effects["arm"])]
    priors = resolve_priors(y, settings["prior_hypermean"], settings["prior_hypersd"])
    fit = fit_hierarchical(y, se, labels, priors=priors, interval=settings["interval_level"],
                           n_grid=settings["tau_grid_points"])
    ids = dict(zip(("scale", "intervention", "group"), key))
    # the model pools effects (arms); a study with two arms is still one study in what is reported
    pooled = fit.pooled.assign(**ids, n_effects=len(y), n_studies=effects["study"].nunique())
    for method in ("dl", "pm"):
        fre = frequentist_random_effects(y, se, method=method, interval=settings["interval_level"])
        for name, value in fre.items():
            pooled[f"re_{method}_{name}"] = value
    if settings["coverage_draws"]:
        # at the posterior mean of mu and median of tau: how often would this interval cover?
        row = fit.pooled.iloc[0]
        coverage = interval_coverage(se, float(row["mu_mean"]), float(row["tau_median"]), priors,
                                     interval=settings["interval_level"], n_grid=settings["tau_grid_points"],
                                     draws=int(settings["coverage_draws"]), seed_sequence=group_seed(settings["seed"], key))
        for name, value in coverage.items():
            pooled[name] = value
    studies = fit.studies.assign(**ids, arm=list(effects["arm"]))
    loo = leave_one_out(y, se, labels, priors=priors, interval=settings["interval_level"],
                        n_grid=settings["tau_grid_points"]).assign(**ids)
    return {"pooled": pooled, "shrunk": studies, "leave_one_out": loo, "priors": priors}


def _study_inputs(study: str) -> dict:
    """What harmonising one study needs, read from its recorded stage outputs and its YAML."""
    from pipeline import harmonise, paths
    from pipeline.io import read_json
    from pipeline.study import load_study

    cfg = load_study(study)
    needed = [paths.processed_dir(study) / name for name in ("estimate_summary.json", "construct_summary.json", "results.csv")]
    missing = [p.relative_to(paths.REPO_ROOT).as_posix() for p in needed if not p.exists()]
    if missing:  # the synthesis reads what the evidence pipeline wrote; say how to get it
        raise FileNotFoundError(f"synthesize: study {study!r} has no estimate outputs ({', '.join(missing)}); "
                                "run `make evidence` (dvc repro evidence/dvc.yaml) first, or drop it from evidence.studies")
    summary = read_json(paths.processed_dir(study) / "estimate_summary.json")
    construct = read_json(paths.processed_dir(study) / "construct_summary.json")
    primary = summary["primary_outcome"]
    outcome_cfg = cfg["outcomes"].get(primary) or {}
    non_money = outcome_cfg.get("money") is False
    return {"cfg": cfg, "results": pd.read_csv(paths.processed_dir(study) / "results.csv"), "primary": primary,
            "outcome_is_log": non_money and primary.startswith("log"), "non_money_not_log": non_money and not primary.startswith("log"),
            "share_female": float(construct.get("female_owner_share") if construct.get("female_owner_share") is not None else np.nan),
            "native": harmonise.native_unit(construct.get("currency"), construct.get("usd_ppp_per_lcu"), cfg["recall_period"])}


def collect_effects(studies: Sequence[str], published: pd.DataFrame, published_source: str) -> tuple[pd.DataFrame, list[str]]:
    """Every study's harmonised effects (microdata, then publications) and the studies left out, with why."""
    from pipeline import harmonise

    frames, left_out = [], []
    for study in studies:
        s = _study_inputs(study)
        if s["non_money_not_log"]:
            left_out.append(f"{study}: primary outcome {s['primary']} is neither a money flow nor a log")
            continue
        eff = harmonise.study_effects(s["results"], study=study, arms=s["cfg"]["treatment"]["arms"],
                                      primary_outcome=s["primary"], outcome_is_log=s["outcome_is_log"],
                                      share_female_owners=s["share_female"], lender_targeted_women=np.nan,
                                      citation=" ".join(str(s["cfg"].get("citation") or "").split()), native=s["native"])
        if eff.empty:
            left_out.append(f"{study}: no single-intervention arm estimated on {s['primary']}")
        frames.append(eff)
    if not published.empty:
        frames.append(harmonise.published_effects(published, published_source))
    frames = [f for f in frames if not f.empty]
    effects = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=harmonise.EFFECT_COLUMNS)
    return effects, left_out


# Study moderators of the meta-regression: each alone (a handful of studies supports one slope),
# across skills and capital studies together so that the intervention type is one of them.
MODERATORS = ("capital_intervention", "share_female_owners", "lender_targeted_women")


def moderator_regressions(effects: pd.DataFrame) -> pd.DataFrame:
    """Per (scale, owners) and moderator: the mixed-effects meta-regression of the study effects on
    the moderator, over the effects where it is recorded, when it varies among at least three
    studies. Arms of one study enter as separate effects (their correlation is ignored: stated in
    ``note``)."""
    frames = []
    effects = effects.assign(capital_intervention=(effects["intervention"] == "capital").astype(float))
    for (scale, group), rows in effects.groupby(["scale", "group"], sort=True):
        for moderator in MODERATORS:
            known = rows[rows[moderator].notna()]
            if known["study"].nunique() < 3 or known[moderator].nunique() < 2:
                continue
            fit = frequentist_meta_regression(known["effect"], known["std_error"], known[[moderator]])
            if fit.empty:
                continue
            several_arms = known["study"].duplicated().any()
            frames.append(fit.assign(scale=scale, group=group, moderator=moderator,
                                     studies=", ".join(sorted(known["study"].unique())),
                                     note="arms of one study treated as independent" if several_arms else ""))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def attach_moderators(effects: pd.DataFrame, moderators: pd.DataFrame, source: str,
                      known_studies: Sequence[str]) -> pd.DataFrame:
    """Study-level moderators from the moderators file (one row per study) onto the microdata
    studies' effects; a value in the effects (a publication's own row) is kept."""
    required = ["study", "lender_targeted_women", "source"]
    missing = [c for c in required if c not in moderators.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; expected {required}")
    dup = moderators[moderators["study"].duplicated(keep=False)]
    if not dup.empty:
        raise ValueError(f"{source}: studies listed more than once (file lines {list(dup.index + 2)})")
    values = pd.to_numeric(moderators["lender_targeted_women"], errors="coerce")
    bad = moderators[(moderators["lender_targeted_women"].notna() & values.isna()) | ~values.isin([0, 1]) & values.notna()]
    if not bad.empty:
        raise ValueError(f"{source}: lender_targeted_women must be 0, 1 or empty (file lines {list(bad.index + 2)})")
    unknown = sorted(set(moderators["study"]) - set(known_studies))
    if unknown:
        raise ValueError(f"{source}: studies {unknown} are neither configured (studies/<name>.yaml) nor in the "
                         "published effects (misspelt?)")
    mapped = effects["study"].map(dict(zip(moderators["study"], values)))
    return effects.assign(lender_targeted_women=effects["lender_targeted_women"].astype(float).fillna(mapped))


def synthesize(effects: pd.DataFrame, settings: Mapping) -> dict:
    """Pool every (scale, intervention, group) with at least ``min_studies`` distinct studies."""
    from pipeline import harmonise

    pooled, shrunk, loo, not_pooled, priors = [], [], [], [], {}
    effects = effects[effects["scale"].isin(settings["scales"])]
    for key in harmonise.synthesis_groups(effects):
        mask = (effects["scale"] == key[0]) & (effects["intervention"] == key[1]) & (effects["group"] == key[2])
        group = effects[mask]
        if group["study"].nunique() < settings["min_studies"]:
            not_pooled.append(f"{key[1]}, {key[2]}, {key[0]}: {group['study'].nunique()} study "
                              f"(fewer than min_studies = {settings['min_studies']})")
            continue
        out = pool_group(group, key, settings)
        pooled.append(out["pooled"]), shrunk.append(out["shrunk"]), loo.append(out["leave_one_out"])
        priors["/".join(key)] = vars(out["priors"])
    meta = moderator_regressions(effects)
    cat = lambda frames: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()  # noqa: E731
    return {"pooled": cat(pooled), "shrunk": cat(shrunk), "leave_one_out": cat(loo), "meta_regression": meta,
            "not_pooled": not_pooled, "priors": priors}


def run(studies: Sequence[str], params: Mapping) -> dict:
    """The synthesize stage: harmonise, pool, write data/synthesis/ (all files or none)."""
    from pipeline import paths
    from pipeline.io import REPO_ROOT, write_csv, write_json

    source = str(params["published_effects"])
    published = pd.read_csv(REPO_ROOT / source)
    effects, left_out = collect_effects(studies, published, source)
    moderators_source = str(params["moderators"])
    configured = [p.stem for p in (REPO_ROOT / "studies").glob("*.yaml")]
    effects = attach_moderators(effects, pd.read_csv(REPO_ROOT / moderators_source), moderators_source,
                                [*configured, *published["study"]])
    out = synthesize(effects, params)
    frequentist = out["pooled"].filter(regex="^(scale|intervention|group|n_studies|re_)") if not out["pooled"].empty else out["pooled"]
    summary = {"studies": list(studies), "published_effects": source, "n_published": int(len(published)),
               "moderators": {"file": moderators_source, "regressed_on": list(MODERATORS),
                              "note": "one moderator per regression, skills and capital studies together"},
               "settings": dict(params), "left_out": left_out, "not_pooled": out["not_pooled"], "priors": out["priors"],
               "priors_note": "Priors: baggr's defaults for the rubin model, per group: hypermean ~ normal(0, 10 × max |effect|), "
                              "between-study SD ~ uniform(0, 10 × SD of the effects)."}
    tables = {"study_effects.csv": effects, "pooled.csv": out["pooled"], "shrunk.csv": out["shrunk"],
              "leave_one_out.csv": out["leave_one_out"], "meta_regression.csv": out["meta_regression"],
              "frequentist.csv": frequentist}
    folder = paths.synthesis_dir()
    for name, table in tables.items():
        write_csv(folder / name, table if len(table.columns) else pd.DataFrame({"status": ["nothing to pool"]}))
    write_json(folder / "synthesize_summary.json", summary)
    return {**out, "study_effects": effects, "summary": summary}
