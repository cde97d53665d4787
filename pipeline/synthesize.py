"""Cross-study synthesis: a Bayesian normal-normal hierarchical model, computed exactly.

    y_j ~ N(theta_j, se_j^2),  theta_j ~ N(mu, tau^2),  mu ~ N(m0, s0^2),  tau ~ Uniform(0, upper)

(Rubin 1981; the "rubin" model of R's baggr, used by Meager 2019). Given tau, mu has a conjugate
normal posterior and p(y | tau) is closed form, so the posterior is a one-dimensional mixture over
a grid of tau: deterministic, and milliseconds per fit. Quantiles of mu and theta_j are those of
the normal mixture (its CDF inverted by bisection).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats


@dataclass(frozen=True)
class Priors:
    hypermean_mean: float
    hypermean_sd: float
    hypersd_upper: float  # tau ~ Uniform(0, hypersd_upper)


def baggr_default_priors(effects: np.ndarray) -> Priors:
    """baggr's defaults for the rubin model on summary data: hypermean ~ normal(0, 10 x max |y|),
    hypersd ~ uniform(0, 10 x sd(y)) (baggr's prepare_prior); with one study, sd(y) is replaced by |y|."""
    y = np.asarray(effects, float)
    spread = float(np.std(y, ddof=1)) if len(y) > 1 and np.std(y) > 0 else float(max(np.abs(y).max(), 1e-8))
    return Priors(0.0, 10.0 * float(max(np.abs(y).max(), 1e-8)), 10.0 * spread)


def _validate(y, se, labels) -> tuple[np.ndarray, np.ndarray]:
    y, se = np.asarray(y, float), np.asarray(se, float)
    bad = [str(l) for l, a, b in zip(labels, y, se) if not (np.isfinite(a) and np.isfinite(b) and b > 0)]
    if bad or len(y) == 0:
        raise ValueError(f"synthesize: effects must be finite with SE > 0; offending studies: {bad or 'none given'}")
    return y, se


def _tau_posterior(y, se, priors: Priors, grid_points: int):
    """Grid of tau, normalised posterior weights, and mu | tau, y (mean, variance) on the grid."""
    tau = (np.arange(grid_points) + 0.5) * priors.hypersd_upper / grid_points  # midpoint rule, uniform prior
    v = se[None, :] ** 2 + tau[:, None] ** 2
    prec = 1.0 / priors.hypermean_sd ** 2 + (1.0 / v).sum(axis=1)
    mu_var = 1.0 / prec
    mu_mean = mu_var * (priors.hypermean_mean / priors.hypermean_sd ** 2 + (y[None, :] / v).sum(axis=1))
    # log p(y | tau) with mu integrated out (Gelman et al., BDA3 eq. 5.21, with a proper prior on mu)
    log_ml = (0.5 * np.log(mu_var) - 0.5 * np.log(v).sum(axis=1) - 0.5 * (y[None, :] ** 2 / v).sum(axis=1)
              - 0.5 * priors.hypermean_mean ** 2 / priors.hypermean_sd ** 2 + 0.5 * mu_mean ** 2 / mu_var)
    w = np.exp(log_ml - special.logsumexp(log_ml))
    return tau, w / w.sum(), mu_mean, mu_var


def _mixture_summary(w, means, variances, level: float) -> dict:
    mean = float(np.sum(w * means))
    var = float(np.sum(w * (variances + means ** 2)) - mean ** 2)
    sd_each = np.sqrt(variances)

    def cdf(x):
        return float(np.sum(w * stats.norm.cdf((x - means) / sd_each)))

    def quantile(p):
        lo, hi = float(np.min(means - 12 * sd_each)), float(np.max(means + 12 * sd_each))
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
        return 0.5 * (lo + hi)

    a = (1 - level) / 2
    return {"mean": mean, "sd": float(np.sqrt(max(var, 0.0))), "lower": quantile(a), "upper": quantile(1 - a), "cdf": cdf}


def _grid_quantile(tau, w, p):
    return float(np.interp(p, np.cumsum(w), tau))


@dataclass(frozen=True)
class HierarchicalFit:
    pooled: pd.DataFrame   # one row
    studies: pd.DataFrame  # one row per study, input order


def fit_hierarchical(effects, ses, labels: Sequence[str], *, priors: Priors, interval: float,
                     grid_points: int) -> HierarchicalFit:
    """Posterior of the hypermean, the between-study SD, each study's shrunk effect, pooling
    factors (Gelman & Pardoe 2006: E[se_j^2 / (se_j^2 + tau^2)]) and the predictive for a new site."""
    y, se = _validate(effects, ses, labels)
    tau, w, mu_m, mu_v = _tau_posterior(y, se, priors, grid_points)
    mu = _mixture_summary(w, mu_m, mu_v, interval)
    pred = _mixture_summary(w, mu_m, mu_v + tau ** 2, interval)
    a = (1 - interval) / 2
    pooling = se[None, :] ** 2 / (se[None, :] ** 2 + tau[:, None] ** 2)
    rows = []
    for j, label in enumerate(labels):
        b = pooling[:, j]  # theta_j | mu, tau, y = N(b mu + (1-b) y_j, (1-b) se_j^2); mu | tau ~ N(mu_m, mu_v)
        th = _mixture_summary(w, b * mu_m + (1 - b) * y[j], (1 - b) * se[j] ** 2 + b ** 2 * mu_v, interval)
        rows.append({"study": label, "effect": y[j], "se": se[j], "theta_mean": th["mean"], "theta_sd": th["sd"],
                     "theta_lower": th["lower"], "theta_upper": th["upper"], "pooling_factor": float(np.sum(w * b))})
    pooled = pd.DataFrame([{
        "n_studies": len(y), "mu_mean": mu["mean"], "mu_sd": mu["sd"], "mu_lower": mu["lower"], "mu_upper": mu["upper"],
        "mu_prob_positive": 1.0 - mu["cdf"](0.0), "tau_mean": float(np.sum(w * tau)), "tau_median": _grid_quantile(tau, w, 0.5),
        "tau_lower": _grid_quantile(tau, w, a), "tau_upper": _grid_quantile(tau, w, 1 - a),
        "predictive_mean": pred["mean"], "predictive_sd": pred["sd"], "predictive_lower": pred["lower"],
        "predictive_upper": pred["upper"], "pooling_overall": float(np.sum(w * pooling.mean(axis=1)))}])
    return HierarchicalFit(pooled, pd.DataFrame(rows))


def leave_one_out(effects, ses, labels: Sequence[str], *, priors: Priors, interval: float, grid_points: int) -> pd.DataFrame:
    """For each study: the predictive for a new site from the others, and the log predictive
    density of its own estimate (y_j ~ N(theta_new, se_j^2)). Priors stay those of the full data."""
    y, se = _validate(effects, ses, labels)
    rows = []
    for j, label in enumerate(labels):
        keep = np.arange(len(y)) != j
        if keep.sum() == 0:
            continue
        tau, w, mu_m, mu_v = _tau_posterior(y[keep], se[keep], priors, grid_points)
        pred = _mixture_summary(w, mu_m, mu_v + tau ** 2, interval)
        dens = np.sum(w * stats.norm.pdf(y[j], mu_m, np.sqrt(mu_v + tau ** 2 + se[j] ** 2)))
        rows.append({"left_out": label, "effect": y[j], "se": se[j], "predictive_mean": pred["mean"],
                     "predictive_sd": pred["sd"], "predictive_lower": pred["lower"], "predictive_upper": pred["upper"],
                     "log_predictive_density": float(np.log(dens))})
    return pd.DataFrame(rows, columns=["left_out", "effect", "se", "predictive_mean", "predictive_sd", "predictive_lower",
                                       "predictive_upper", "log_predictive_density"])


def frequentist_random_effects(effects, ses, *, method: str) -> dict:
    """Random-effects pooled estimate: DerSimonian-Laird (tau^2 truncated at 0, as metafor) or
    Paule-Mandel, via statsmodels' combine_effects."""
    from statsmodels.stats.meta_analysis import combine_effects

    y, se = np.asarray(effects, float), np.asarray(ses, float)
    if len(y) < 2:
        return {"estimate": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan, "tau2": np.nan}
    res = combine_effects(y, se ** 2, method_re={"dl": "chi2", "pm": "iterated"}[method])
    tau2 = max(float(res.tau2), 0.0)
    wts = 1.0 / (se ** 2 + tau2)  # recomputed so that a negative DL tau^2 is truncated at zero
    est, sd = float(np.sum(wts * y) / wts.sum()), float(np.sqrt(1.0 / wts.sum()))
    z = stats.norm.ppf(0.975)
    return {"estimate": est, "se": sd, "ci_low": est - z * sd, "ci_high": est + z * sd, "tau2": tau2}


def meta_regression(effects, ses, moderators: pd.DataFrame) -> pd.DataFrame:
    """Frequentist mixed-effects meta-regression (method-of-moments tau^2, DerSimonian-Laird
    generalised): effect ~ 1 + moderators, weights 1 / (se^2 + tau^2)."""
    y, se = np.asarray(effects, float), np.asarray(ses, float)
    X = np.column_stack([np.ones(len(y)), moderators.to_numpy(float)])
    names = ["intercept", *moderators.columns]
    k, p = X.shape
    if k <= p or np.linalg.matrix_rank(X) < p:
        return pd.DataFrame(columns=["term", "estimate", "std_error", "ci_low", "ci_high", "tau2", "n_studies"])
    w = 1.0 / se ** 2
    W = np.diag(w)
    beta_fe = np.linalg.solve(X.T @ W @ X, X.T @ W @ y)
    q = float(np.sum(w * (y - X @ beta_fe) ** 2))
    P = W - W @ X @ np.linalg.solve(X.T @ W @ X, X.T @ W)
    tau2 = max(0.0, (q - (k - p)) / float(np.trace(P)))
    W2 = np.diag(1.0 / (se ** 2 + tau2))
    cov = np.linalg.inv(X.T @ W2 @ X)
    beta = cov @ X.T @ W2 @ y
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


def pool_group(effects: pd.DataFrame, key: tuple[str, str, str], settings: Mapping) -> dict:
    """Pool one (scale, intervention, group): the hierarchical model, its leave-one-out and the
    frequentist random-effects cross-checks."""
    y = effects["effect"].to_numpy(float)
    se = effects["std_error"].to_numpy(float)
    labels = [f"{s}:{a}" for s, a in zip(effects["study"], effects["arm"])]
    priors = resolve_priors(y, settings["prior_hypermean"], settings["prior_hypersd"])
    fit = fit_hierarchical(y, se, labels, priors=priors, interval=settings["interval_level"],
                           grid_points=settings["tau_grid_points"])
    ids = dict(zip(("scale", "intervention", "group"), key))
    pooled = fit.pooled.assign(**ids)
    for method in ("dl", "pm"):
        fre = frequentist_random_effects(y, se, method=method)
        for name, value in fre.items():
            pooled[f"re_{method}_{name}"] = value
    studies = fit.studies.assign(**ids, arm=list(effects["arm"]))
    loo = leave_one_out(y, se, labels, priors=priors, interval=settings["interval_level"],
                        grid_points=settings["tau_grid_points"]).assign(**ids)
    return {"pooled": pooled, "shrunk": studies, "leave_one_out": loo, "priors": priors}


def _study_inputs(study: str) -> dict:
    """What harmonising one study needs, read from its recorded stage outputs and its YAML."""
    from pipeline import paths
    from pipeline.io import read_json
    from pipeline.study import load_study

    cfg = load_study(study)
    summary = read_json(paths.processed_dir(study) / "estimate_summary.json")
    construct = read_json(paths.processed_dir(study) / "construct_summary.json")
    primary = summary["primary_outcome"]
    outcome_cfg = cfg["outcomes"].get(primary) or {}
    non_money = outcome_cfg.get("money") is False
    return {"cfg": cfg, "results": pd.read_csv(paths.processed_dir(study) / "results.csv"), "primary": primary,
            "outcome_is_log": non_money and primary.startswith("log"), "non_money_not_log": non_money and not primary.startswith("log"),
            "share_female": float(construct.get("female_owner_share") if construct.get("female_owner_share") is not None else np.nan)}


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
                                      citation=" ".join(str(s["cfg"].get("citation") or "").split()))
        if eff.empty:
            left_out.append(f"{study}: no single-intervention arm estimated on {s['primary']}")
        frames.append(eff)
    if not published.empty:
        frames.append(harmonise.published_effects(published, published_source))
    frames = [f for f in frames if not f.empty]
    effects = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=harmonise.EFFECT_COLUMNS)
    return effects, left_out


def synthesize(effects: pd.DataFrame, settings: Mapping) -> dict:
    """Pool every (scale, intervention, group) with at least ``min_studies`` distinct studies."""
    from pipeline import harmonise

    pooled, shrunk, loo, meta, not_pooled, priors = [], [], [], [], [], {}
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
        share = group["share_female_owners"]
        if share.notna().all() and share.nunique() > 1:
            meta.append(meta_regression(group["effect"], group["std_error"], group[["share_female_owners"]]).assign(
                scale=key[0], intervention=key[1], group=key[2]))
    cat = lambda frames: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()  # noqa: E731
    return {"pooled": cat(pooled), "shrunk": cat(shrunk), "leave_one_out": cat(loo), "meta_regression": cat(meta),
            "not_pooled": not_pooled, "priors": priors}


def run(studies: Sequence[str], params: Mapping) -> dict:
    """The synthesize stage: harmonise, pool, write data/synthesis/ (all files or none)."""
    from pipeline import paths
    from pipeline.io import REPO_ROOT, write_csv, write_json

    source = str(params["published_effects"])
    published = pd.read_csv(REPO_ROOT / source)
    effects, left_out = collect_effects(studies, published, source)
    out = synthesize(effects, params)
    frequentist = out["pooled"].filter(regex="^(scale|intervention|group|n_studies|re_)") if not out["pooled"].empty else out["pooled"]
    summary = {"studies": list(studies), "published_effects": source, "n_published": int(len(published)),
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
