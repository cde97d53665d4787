"""OLS / WLS with the fixed effects absorbed and a covariance from :mod:`pipeline.estimation.variance`.

Gives the same numbers as statsmodels ``OLS`` / ``WLS`` with explicit fixed-effect dummies
(``fit(cov_type="cluster", cov_kwds={"groups": g}, use_t=True)``, or ``cov_type="HC1"``), without
building the dummies: time and memory are O(n * k) instead of O(n * (k + levels)). The regressors
and the outcome are stacked into one ``(k + 1, n)`` array demeaned in place
(:func:`pipeline.estimation.absorb.absorb_in_place`); coefficients by a Cholesky solve of the
demeaned ``X'WX``; residuals in place; the scores ``w_i u_i x~_i`` go to the covariance estimator.

The intercept is always in the model (absorbed by the fixed effects, or by the grand mean when
``fe=None``); it is not reported. Do not put a constant column in ``X`` (it would be collinear).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import scipy.linalg
from scipy import stats

from pipeline.estimation import variance
from pipeline.estimation.absorb import COLLINEARITY_TOL, absorb_in_place, dense_codes, fe_list, to_1d_float

@dataclass(frozen=True)
class FEResult:
    """Estimates for the regressors of interest (the fixed effects are not reported).

    ``df_resid = nobs - K`` (``K`` = regressors + absorbed fixed-effect dummies + intercept);
    ``df_inference`` is the t degrees of freedom: ``n_clusters - 1`` for cluster-robust,
    ``df_resid`` for HC1. CR2 tests each contrast with its own (Bell-McCaffrey) degrees of freedom:
    ``df_params`` per coefficient (``tvalues``, ``pvalues``, ``conf_int``), :meth:`contrast_df`
    for any contrast; otherwise both are ``df_inference``.
    """

    params: pd.Series
    bse: pd.Series
    cov: pd.DataFrame
    tvalues: pd.Series
    pvalues: pd.Series
    nobs: int
    df_resid: int
    df_inference: int
    n_clusters: int | None
    k_absorbed: int
    cov_type: str                      # the variance.REGISTRY name: "cluster" (CR1), "HC1", "CR2", "CR3"
    weighted: bool = False
    fe_method: str = "none"            # "none" | "exact" | "direct" | "map"
    fe_iterations: int = 0             # sweeps used by the alternating projections
    df_params: pd.Series | None = None  # t df per coefficient (None: df_inference)
    contrast_dfs: Callable[[np.ndarray], np.ndarray] | None = None   # CR2: contrasts -> their t df

    def contrast_df(self, R: np.ndarray) -> np.ndarray:
        """t degrees of freedom of the tests of r'b, one per row r of ``R`` (over ``params``)."""
        R = np.atleast_2d(np.asarray(R, float))
        if self.contrast_dfs is None:
            return np.full(len(R), float(self.df_inference))
        return self.contrast_dfs(R)

    @property
    def df_by_param(self) -> pd.Series:
        if self.df_params is not None:
            return self.df_params
        return pd.Series(float(self.df_inference), index=self.params.index)

    @property
    def k_params(self) -> int:
        """``K``: regressors of interest plus absorbed dummies (intercept included)."""
        return len(self.params) + self.k_absorbed

    @property
    def cov_params(self) -> pd.DataFrame:   # statsmodels-style alias
        return self.cov

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Confidence intervals (columns 0 and 1, as statsmodels), t(df_inference)."""
        q = stats.t.ppf(1.0 - alpha / 2.0, self.df_by_param.to_numpy()) if self.df_params is not None \
            else stats.t.ppf(1.0 - alpha / 2.0, self.df_inference)
        lo = self.params - q * self.bse
        hi = self.params + q * self.bse
        return pd.DataFrame({0: lo, 1: hi}, index=self.params.index)

    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        ci = self.conf_int(alpha)
        return pd.DataFrame({"coef": self.params, "std_err": self.bse, "t": self.tvalues,
                             "p_value": self.pvalues, "ci_low": ci[0], "ci_high": ci[1]})


class TTest(NamedTuple):
    estimate: float
    se: float
    t: float
    p: float
    ci_low: float
    ci_high: float


def t_test(result: FEResult, contrast: dict[str, float], alpha: float = 0.05) -> TTest:
    """Test of ``sum_j c_j * beta_j = 0`` (as statsmodels ``results.t_test``, same t df).

    ``contrast`` maps parameter names to their weights, e.g. ``{"a": 1.0, "b": -1.0}``.
    Returns ``(estimate, se, t, p, ci_low, ci_high)`` as a named tuple.
    """
    if not isinstance(contrast, dict) or not contrast:
        raise ValueError("contrast must be a non-empty dict {parameter name: weight}")
    names = list(result.params.index)
    r = np.zeros(len(names))
    for name, wgt in contrast.items():
        if name not in result.params.index:
            raise KeyError(f"{name!r} is not a parameter; parameters are {names}")
        wgt = float(wgt)
        if not np.isfinite(wgt):
            raise ValueError(f"contrast weight for {name!r} is not finite")
        r[names.index(name)] += wgt
    if not r.any():
        raise ValueError("the contrast has all weights zero")
    est = float(r @ result.params.to_numpy())
    var = float(r @ result.cov.to_numpy() @ r)
    se = float(np.sqrt(var)) if var > 0 else 0.0
    t = est / se if se > 0 else np.nan
    df = float(result.contrast_df(r)[0]) if result.contrast_dfs is not None else result.df_inference
    p = float(2.0 * stats.t.sf(abs(t), df)) if se > 0 else np.nan
    q = stats.t.ppf(1.0 - alpha / 2.0, df)
    return TTest(est, se, t, p, est - q * se, est + q * se)


def _stack(y, X) -> tuple[np.ndarray, list[str]]:
    """(k + 1, n) C-contiguous float64 array [y; X'] (a fresh copy) and the regressor names."""
    yv = to_1d_float(y, "y", None)
    n = yv.shape[0]
    if isinstance(X, pd.Series):
        X = X.to_frame(name=X.name if X.name is not None else "x1")
    if isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
        cols = [X.iloc[:, j] for j in range(X.shape[1])]
    else:
        a = np.asarray(X)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise ValueError(f"X must be 2-dimensional (n, k), got shape {a.shape}")
        names = [f"x{j + 1}" for j in range(a.shape[1])]
        cols = [a[:, j] for j in range(a.shape[1])]
    if not cols:
        raise ValueError("X has no columns: at least one regressor is needed")
    if len(set(names)) != len(names):
        raise ValueError(f"X has duplicate column names: {names}")
    Z = np.empty((len(cols) + 1, n), dtype=np.float64)
    Z[0] = yv
    for j, c in enumerate(cols):
        Z[j + 1] = to_1d_float(c, f"X column {names[j]!r}", n)
    for j in range(Z.shape[0]):
        if not np.isfinite(Z[j]).all():
            what = "y" if j == 0 else f"X column {names[j - 1]!r}"
            raise ValueError(f"{what} has missing (NaN) or infinite values")
    return Z, names


def fe_ols(y, X, fe=None, cluster=None, weights=None, *, method: str = "direct",
           tol: float = 1e-12, maxiter: int = 10_000, vcov: str = "CR1",
           partialled: np.ndarray | None = None) -> FEResult:
    """OLS (WLS with ``weights``) of ``y`` on ``X`` with the fixed effects ``fe`` absorbed.

    Parameters
    ----------
    y : (n,) numeric array or Series.
    X : (n, k) array or DataFrame of the regressors of interest and controls (named by the
        DataFrame columns, else ``x1..xk``). No constant column: the intercept is always in the
        model, absorbed by the fixed effects (or by the grand mean when ``fe`` is None).
    fe : None, one array/Series of group codes, a DataFrame (one FE per column) or a list of
        arrays. Any hashable codes; they are re-coded internally.
    cluster : None (HC1 covariance) or an array of cluster codes (CR1 covariance, t(G-1)).
    weights : None or positive finite WLS weights (statsmodels ``WLS`` convention).
    method : ``"direct"`` (exact, for two FEs) or ``"map"`` (alternating projections). One FE
        is always exact; three or more always use alternating projections.
    tol, maxiter : convergence of the alternating projections (largest change of a column in a
        sweep relative to its root mean square; sweeps before ``RuntimeError``).
    vcov : ``"CR1"`` (default; HC1 when ``cluster`` is None), ``"CR2"`` or ``"CR3"`` (need
        ``cluster``): see :mod:`pipeline.estimation.variance`.
    partialled : None, or the columns of ``X`` with ``fe`` and the intercept already partialled
        out, ``(k, n)``, as :func:`pipeline.estimation.absorb.absorb` gives them with the same
        ``fe`` and ``weights`` (``design.independent_absorbed``); then only ``y`` is absorbed
        here. Exact absorption only (at most two FEs, ``method="direct"``): each row is
        partialled on its own, so the rows are the ones absorbing them here would give.

    Raises ``ValueError`` for missing values, mismatched lengths, non-positive weights, a
    regressor collinear with the fixed effects or the other regressors, fewer than two clusters,
    or no residual degrees of freedom.
    """
    if method not in ("direct", "map"):
        raise ValueError(f"method must be 'direct' or 'map', got {method!r}")
    estimator = variance.estimator_name(vcov, clustered=cluster is not None)
    Z, names = _stack(y, X)
    Z0 = Z.copy() if estimator in ("CR2", "CR3") else None     # the raw data (CR2, CR3)
    k = len(names)
    n = Z.shape[1]
    if n == 0:
        raise ValueError("no observations")
    w = _checked_weights(weights, n)
    fes = fe_list(fe, n)
    groups, n_clusters = _cluster_codes(cluster, n)

    raw_ss = _raw_sums_of_squares(Z, w)
    if partialled is None:
        absorbed = absorb_in_place(Z, fes, w, method=method, tol=tol, maxiter=maxiter)
    else:
        if len(fes) > 2 or method != "direct" or partialled.shape != (k, n):
            raise ValueError(f"partialled: {k} x {n} rows of an exact absorption (at most two fixed "
                             f"effects, method='direct') expected, got shape {partialled.shape}")
        absorbed = absorb_in_place(Z[:1], fes, w, method=method, tol=tol, maxiter=maxiter)
        Z[1:] = partialled
    K = k + absorbed.k_absorbed
    _check_residual_df(n, k, absorbed.k_absorbed)

    XtX, Xty = _normal_equations(Z[1:], Z[0], w)
    _check_collinear(XtX, raw_ss, names)
    beta, bread = _solve(XtX, Xty)
    scores = _scores_in_place(Z, beta, w)

    refit = _refit(Z0, fes, w, method=method, tol=tol, maxiter=maxiter)
    c = variance.covariance(estimator, variance.Problem(
        bread=bread, scores=scores, beta=beta, n_obs=n, k_params=K, groups=groups, n_clusters=n_clusters,
        raw=Z0, fes=fes, weights=w, refit=refit))
    return _result(names, beta, c, n=n, K=K, n_clusters=n_clusters, absorbed=absorbed, weighted=w is not None)


def _checked_weights(weights, n: int) -> np.ndarray | None:
    """The WLS weights as a float array (None without weights); positive and finite or ValueError."""
    if weights is None:
        return None
    w = to_1d_float(weights, "weights", n)
    if not np.isfinite(w).all():
        raise ValueError("weights have missing (NaN) or infinite values")
    if not (w > 0).all():
        raise ValueError("weights must be positive")
    return w


def _cluster_codes(cluster, n: int) -> tuple[np.ndarray | None, int | None]:
    """(dense cluster codes, number of clusters), (None, None) without clusters; at least two."""
    if cluster is None:
        return None, None
    groups, n_clusters = dense_codes(cluster, "cluster", n)
    if n_clusters < 2:
        raise ValueError(f"too few clusters: {n_clusters} (cluster-robust standard errors "
                         f"need at least 2)")
    return groups, n_clusters


def _raw_sums_of_squares(Z: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Weighted raw sums of squares of the regressors (rows 1.. of ``Z``; the collinearity rule)."""
    return np.array([float(Z[j] @ Z[j]) if w is None else float((Z[j] * w) @ Z[j])
                     for j in range(1, Z.shape[0])])


def _check_residual_df(n: int, k: int, k_absorbed: int) -> None:
    """ValueError when the regressors and absorbed dummies leave no residual degrees of freedom."""
    K = k + k_absorbed
    if n - K <= 0:
        raise ValueError(f"{n} observations for {K} parameters ({k} regressors + "
                         f"{k_absorbed} absorbed): no residual degrees of freedom")


def _normal_equations(Xt: np.ndarray, yt: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(X'WX symmetrised, X'Wy) of the demeaned regressors ``Xt`` (k, n) and outcome ``yt``."""
    k = Xt.shape[0]
    if w is None:
        XtX = Xt @ Xt.T
        Xty = Xt @ yt
    else:
        XtX = np.empty((k, k))
        Xty = np.empty(k)
        for j in range(k):                      # O(n) temporaries, not O(n k)
            xw = Xt[j] * w
            XtX[j] = Xt @ xw
            Xty[j] = xw @ yt
    return (XtX + XtX.T) / 2.0, Xty


def _solve(XtX: np.ndarray, Xty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients, symmetrised inverse of X'WX) by one Cholesky factorisation."""
    fac = scipy.linalg.cho_factor(XtX, lower=True)
    beta = scipy.linalg.cho_solve(fac, Xty)
    bread = scipy.linalg.cho_solve(fac, np.eye(len(Xty)))
    return beta, (bread + bread.T) / 2.0


def _scores_in_place(Z: np.ndarray, beta: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """The scores w_i u_i x~_ij (k, n), overwriting the demeaned ``Z`` (row 0 becomes the residuals)."""
    Xt = Z[1:]
    u = Z[0]
    u -= beta @ Xt                               # residuals (weighted scale: sqrt(w) u)
    if w is not None:
        u *= w                                   # score weight w_i u_i
    Xt *= u                                      # rows: w_i u_i x~_ij
    return Xt


def _refit(Z0: np.ndarray | None, fes: list, w: np.ndarray | None, *, method: str, tol: float,
           maxiter: int) -> Callable[[np.ndarray], np.ndarray]:
    """The coefficients refitted on the rows ``keep`` of the raw data (CR3 with many fixed-effect levels)."""
    def refit(keep: np.ndarray) -> np.ndarray:
        return fe_ols(Z0[0][keep], Z0[1:, keep].T, fe=[c[keep] for c, _, _ in fes] or None,
                      weights=None if w is None else w[keep], method=method, tol=tol,
                      maxiter=maxiter).params.to_numpy()
    return refit


def _result(names: list[str], beta: np.ndarray, c, *, n: int, K: int, n_clusters: int | None, absorbed,
            weighted: bool) -> FEResult:
    """The FEResult of the coefficients ``beta`` and the covariance ``c`` (variance.covariance)."""
    cov, df_inf = c.cov, c.df
    df_params = None
    if c.contrast_df is not None:
        df_params = c.contrast_df(np.eye(len(names)))

    idx = pd.Index(names)
    params = pd.Series(beta, index=idx)
    bse = pd.Series(np.sqrt(np.clip(np.diag(cov), 0.0, None)), index=idx)
    with np.errstate(divide="ignore", invalid="ignore"):
        tvalues = params / bse
    pvalues = pd.Series(2.0 * stats.t.sf(np.abs(tvalues.to_numpy()), df_inf if df_params is None else df_params),
                        index=idx)
    return FEResult(
        params=params, bse=bse, cov=pd.DataFrame(cov, index=idx, columns=idx), tvalues=tvalues,
        pvalues=pvalues, nobs=n, df_resid=n - K, df_inference=int(df_inf),
        n_clusters=n_clusters, k_absorbed=int(absorbed.k_absorbed), cov_type=c.name,
        weighted=weighted, fe_method=absorbed.method, fe_iterations=absorbed.iterations,
        df_params=None if df_params is None else pd.Series(df_params, index=idx), contrast_dfs=c.contrast_df)


def _check_collinear(XtX: np.ndarray, raw_ss: np.ndarray, names: Sequence[str]) -> None:
    """Incremental Cholesky: the share of each regressor's sum of squares left after the fixed
    effects and the regressors before it must exceed COLLINEARITY_TOL."""
    k = len(names)
    L = np.zeros((k, k))
    for j in range(k):
        if raw_ss[j] <= 0:
            raise ValueError(f"regressor {names[j]!r} is all zero")
        v = scipy.linalg.solve_triangular(L[:j, :j], XtX[:j, j], lower=True) if j else np.zeros(0)
        d = XtX[j, j] - v @ v
        if d <= COLLINEARITY_TOL * raw_ss[j]:
            others = "the fixed effects / intercept" + (
                f" and {list(names[:j])}" if j else "")
            raise ValueError(f"regressor {names[j]!r} is collinear with {others} "
                             f"(no independent variation)")
        L[j, :j] = v
        L[j, j] = np.sqrt(d)
