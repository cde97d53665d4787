"""Fast OLS / WLS with absorbed fixed effects and cluster-robust (CR1) or HC1 covariance.

Gives the same numbers as statsmodels ``OLS`` / ``WLS`` with explicit fixed-effect dummies
(``fit(cov_type="cluster", cov_kwds={"groups": g}, use_t=True)``, or ``cov_type="HC1"``), without
building the dummies: time and memory are O(n * k) instead of O(n * (k + levels)).

How
---
* The regressors of interest ``X`` and the outcome ``y`` are stacked into one ``(k + 1, n)``
  float64 array that is demeaned **in place** (Frisch-Waugh-Lovell).

  - One fixed effect (and ``fe=None``, which absorbs only the intercept): exact (weighted) group
    demeaning with ``np.bincount``.
  - Two fixed effects (``method="direct"``, the default): exact projection from grouped sufficient
    statistics. The larger FE (``L1`` levels) is demeaned by group means; the other one's dummies,
    demeaned by the first, have the small ``L2 x L2`` Gram matrix
    ``A = diag(s2) - C' diag(1/s1) C`` (``C`` the weighted ``L1 x L2`` cross-tabulation), so the
    projection needs one factorisation of ``A`` (one level per connected component of the
    bipartite level graph grounded, which removes exactly its null space) and one bincount per
    column. The projection is applied twice (one step of iterative refinement).
  - Three or more fixed effects, or ``method="map"``: the method of alternating projections
    (group demeaning by each FE in turn) until the largest change in a sweep is below
    ``tol`` times the column's scale; ``RuntimeError`` after ``maxiter`` sweeps.

* Absorbed degrees of freedom are counted as statsmodels would count a full-rank set of dummies
  plus the intercept: the rank of ``[1, D1, ..., Dm]``. One FE: its number of levels. Two FEs:
  ``L1 + L2 - (connected components of the bipartite level graph)``. Three or more: the levels
  of the largest FE plus the rank of the others' Gram matrix after projecting it out (from
  counts; the smaller FEs may have up to ``MAX_DENSE_LEVELS`` levels in all, else ``ValueError``).
* Coefficients by a Cholesky solve of the demeaned ``X'WX``; residuals in place; cluster scores
  ``sum_{i in g} w_i x~_i u_i`` by one ``np.bincount`` per regressor over the cluster codes (no
  ``n x G`` matrix).
* Covariance: ``V = (X'WX)^-1 M (X'WX)^-1 * c`` with, for clusters, ``M = S'S`` and
  ``c = G/(G-1) * (N-1)/(N-K)``; for HC1 ``M = sum_i w_i^2 u_i^2 x~_i x~_i'`` and ``c = N/(N-K)``.
  ``K = k + k_absorbed`` counts every regressor including the fixed-effect dummies and the
  intercept (statsmodels' ``k_params`` with a full-rank dummy set). Inference with t(G-1)
  (cluster) or t(N-K) (HC1), as statsmodels' ``use_t=True``.

The intercept is always in the model (absorbed by the fixed effects, or by the grand mean when
``fe=None``); it is not reported. Do not put a constant column in ``X`` (it would be collinear).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg
from scipy import stats

__all__ = ["FEResult", "TTest", "fe_ols", "t_test", "absorb", "COLLINEARITY_TOL", "MAX_DENSE_LEVELS",
           "VCOV_TYPES"]

# A regressor is collinear (ValueError) when the share of its (weighted) sum of squares not
# explained by the fixed effects, the intercept and the regressors before it is below this
# (the same rule and tolerance as ``pipeline.estimate``).
COLLINEARITY_TOL = 1e-9
# Largest number of levels of the smaller FE (two FEs) solved with a dense Cholesky factor
# (sparse LU above), and of all FEs but the largest together for the rank count with three or
# more FEs.
MAX_DENSE_LEVELS = 2000
# Covariance estimators: CR1 (statsmodels' cluster default; HC1 without clusters) and CR3, the
# cluster jackknife (MacKinnon, Nielsen & Webb 2023):
#     V_CR3 = (G - 1) / G * sum_g (b_(g) - b)(b_(g) - b)'
# with b_(g) the estimate with cluster g left out, *refitted with the fixed effects* (exactly
# what leave-one-cluster-out refits of the dummy-variable regression give). Inference t(G - 1).
VCOV_TYPES = ("CR1", "CR2", "CR3")
# CR2 (Bell & McCaffrey 2002): V = B^-1 [sum_g X_g' A_g u_g u_g' A_g X_g] B^-1 with
# A_g = (I - H_gg)^(-1/2), H the hat matrix of the *full* model (fixed-effect dummies included,
# Pustejovsky & Tipton 2018), no further small-sample factor, t(G - 1) inference. Needs at most
# MAX_JACKKNIFE_DUMMIES fixed-effect levels (dense [X, dummies]).
# CR3: with at most this many fixed-effect levels in all, the leave-one-cluster-out estimates
# come from downdating the (k + levels)-square Gram matrix of [X, dummies] (fast); above it,
# from G refits with absorbed fixed effects.
MAX_JACKKNIFE_DUMMIES = 400


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FEResult:
    """Estimates for the regressors of interest (the fixed effects are not reported).

    ``df_resid = nobs - K`` (``K`` = regressors + absorbed fixed-effect dummies + intercept);
    ``df_inference`` is the t degrees of freedom: ``n_clusters - 1`` for cluster-robust,
    ``df_resid`` for HC1.
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
    cov_type: str                      # "cluster" (CR1), "CR3" (cluster jackknife) or "HC1"
    weighted: bool = False
    fe_method: str = "none"            # "none" | "exact" | "direct" | "map"
    fe_iterations: int = 0             # sweeps used by the alternating projections

    @property
    def k_params(self) -> int:
        """``K``: regressors of interest plus absorbed dummies (intercept included)."""
        return len(self.params) + self.k_absorbed

    @property
    def cov_params(self) -> pd.DataFrame:   # statsmodels-style alias
        return self.cov

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Confidence intervals (columns 0 and 1, as statsmodels), t(df_inference)."""
        q = stats.t.ppf(1.0 - alpha / 2.0, self.df_inference)
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
    df = result.df_inference
    p = float(2.0 * stats.t.sf(abs(t), df)) if se > 0 else np.nan
    q = stats.t.ppf(1.0 - alpha / 2.0, df)
    return TTest(est, se, t, p, est - q * se, est + q * se)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def _to_1d_float(v, what: str, n: int | None) -> np.ndarray:
    if isinstance(v, pd.DataFrame):
        if v.shape[1] != 1:
            raise ValueError(f"{what} must be one column, got {v.shape[1]}")
        v = v.iloc[:, 0]
    if isinstance(v, pd.Series):
        if not (pd.api.types.is_numeric_dtype(v.dtype) or pd.api.types.is_bool_dtype(v.dtype)):
            raise ValueError(f"{what} must be numeric, has dtype {v.dtype}")
        a = v.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        a = np.asarray(v)
        if a.dtype == object:
            a = pd.to_numeric(pd.Series(a.ravel()), errors="raise").to_numpy(
                dtype=np.float64, na_value=np.nan)
        a = a.astype(np.float64, copy=False)
    if a.ndim != 1:
        a = a.reshape(-1) if a.ndim == 2 and 1 in a.shape else a
        if a.ndim != 1:
            raise ValueError(f"{what} must be one-dimensional, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{what} has {a.shape[0]} rows, expected {n}")
    return a


def _stack(y, X) -> tuple[np.ndarray, list[str]]:
    """(k + 1, n) C-contiguous float64 array [y; X'] (a fresh copy) and the regressor names."""
    yv = _to_1d_float(y, "y", None)
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
        Z[j + 1] = _to_1d_float(c, f"X column {names[j]!r}", n)
    for j in range(Z.shape[0]):
        if not np.isfinite(Z[j]).all():
            what = "y" if j == 0 else f"X column {names[j - 1]!r}"
            raise ValueError(f"{what} has missing (NaN) or infinite values")
    return Z, names


def _codes(v, what: str, n: int) -> tuple[np.ndarray, int]:
    """Dense integer codes 0..L-1 (intp) of the levels present, and L."""
    if isinstance(v, pd.DataFrame):
        if v.shape[1] != 1:
            raise ValueError(f"{what} must be one column")
        v = v.iloc[:, 0]
    if isinstance(v, pd.Series):
        if v.isna().any():
            raise ValueError(f"{what} has missing values")
        if pd.api.types.is_integer_dtype(v.dtype) and not isinstance(v.dtype, pd.CategoricalDtype):
            a = v.to_numpy(dtype=np.int64)
        else:
            a = v.to_numpy()
    else:
        a = np.asarray(v)
    if a.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{what} has {a.shape[0]} rows, expected {n}")
    if a.dtype.kind in "iub":
        a = a.astype(np.intp, copy=False)
        if n == 0:
            return a, 0
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi < 4 * n + 1024:
            present = np.bincount(a, minlength=hi + 1) > 0
            n_levels = int(np.count_nonzero(present))
            if n_levels == hi + 1:
                return a, n_levels                      # already dense 0..L-1
            remap = np.cumsum(present, dtype=np.intp) - 1
            return remap[a], n_levels
    elif a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError(f"{what} has missing (NaN) values")
    codes, uniques = pd.factorize(a, sort=False, use_na_sentinel=True)
    if (codes < 0).any():
        raise ValueError(f"{what} has missing values")
    return codes.astype(np.intp, copy=False), len(uniques)


def _fe_list(fe, n: int) -> list[tuple[np.ndarray, int, str]]:
    if fe is None:
        return []
    if isinstance(fe, pd.DataFrame):
        items = [(fe[c], str(c)) for c in fe.columns]
    elif isinstance(fe, pd.Series):
        items = [(fe, str(fe.name))]
    elif isinstance(fe, np.ndarray) and fe.ndim == 1:
        items = [(fe, "fe1")]
    elif isinstance(fe, np.ndarray) and fe.ndim == 2:
        items = [(fe[:, j], f"fe{j + 1}") for j in range(fe.shape[1])]
    elif isinstance(fe, (list, tuple)):
        items = [(v, str(getattr(v, "name", None) or f"fe{j + 1}")) for j, v in enumerate(fe)]
    else:
        raise TypeError("fe must be None, an array, a DataFrame or a list of arrays")
    out = []
    for v, name in items:
        codes, n_levels = _codes(v, f"fixed effect {name!r}", n)
        out.append((codes, n_levels, name))
    return out


# --------------------------------------------------------------------------------------------
# Absorbing fixed effects (in place on the rows of Z)
# --------------------------------------------------------------------------------------------
def _group_sum(codes: np.ndarray, z: np.ndarray, w: np.ndarray | None, n_levels: int):
    return np.bincount(codes, weights=z if w is None else z * w, minlength=n_levels)


def _demean_one(Z: np.ndarray, codes: np.ndarray, n_levels: int, w: np.ndarray | None) -> None:
    s = np.bincount(codes, weights=w, minlength=n_levels).astype(np.float64)
    for j in range(Z.shape[0]):
        m = _group_sum(codes, Z[j], w, n_levels)
        m /= s
        Z[j] -= m[codes]


def _components(f1, L1, f2, L2) -> tuple[int, np.ndarray]:
    """Connected components of the bipartite graph of (FE1 level, FE2 level) pairs observed.
    Returns the count and, per FE2 level, its component label."""
    B = scipy.sparse.coo_matrix((np.ones(f1.shape[0], dtype=np.int8), (f1, f2)),
                                shape=(L1, L2)).tocsr()
    B.data[:] = 1
    adj = scipy.sparse.bmat([[None, B], [B.T, None]], format="csr")
    n_comp, labels = scipy.sparse.csgraph.connected_components(adj, directed=False)
    return int(n_comp), labels[L1:]


def _crosstab(f1, L1, f2, L2, w) -> scipy.sparse.csr_matrix:
    """Weighted L1 x L2 cross-tabulation as a sparse matrix."""
    n = f1.shape[0]
    if L1 * L2 <= max(4 * n, 1 << 20):
        dense = np.bincount(f1 * L2 + f2, weights=w, minlength=L1 * L2).astype(np.float64)
        idx = np.flatnonzero(dense)
        return scipy.sparse.csr_matrix((dense[idx], (idx // L2, idx % L2)), shape=(L1, L2))
    uniq, inv = np.unique(f1.astype(np.int64) * L2 + f2, return_inverse=True)
    sums = np.bincount(inv, weights=w, minlength=len(uniq)).astype(np.float64)
    return scipy.sparse.csr_matrix((sums, (uniq // L2, uniq % L2)), shape=(L1, L2))


def _demean_two_direct(Z, fe1, fe2, w) -> int:
    """Exact two-way projection from grouped sufficient statistics. Returns k_absorbed."""
    f1, L1, _ = fe1
    f2, L2, _ = fe2
    n_comp, comp2 = _components(f1, L1, f2, L2)
    k_absorbed = L1 + L2 - n_comp
    s1 = np.bincount(f1, weights=w, minlength=L1).astype(np.float64)
    s2 = np.bincount(f2, weights=w, minlength=L2).astype(np.float64)
    # Ground one FE2 level per component: the remaining columns of D2 (demeaned by FE1) are
    # linearly independent and span the same space.
    _, first = np.unique(comp2, return_index=True)   # first FE2 level of each component
    keep = np.ones(L2, dtype=bool)
    keep[first] = False
    kept = np.flatnonzero(keep)
    if kept.size == 0:                          # FE2 nested in FE1: adds nothing
        _demean_one(Z, f1, L1, w)
        return k_absorbed
    C = _crosstab(f1, L1, f2, L2, w)                        # L1 x L2
    Ck = C[:, kept]
    A = (scipy.sparse.diags(s2[kept]) - Ck.T @ scipy.sparse.diags(1.0 / s1) @ Ck)
    if kept.size <= MAX_DENSE_LEVELS:
        fac = scipy.linalg.cho_factor(A.toarray(), lower=True)
        solve = lambda r: scipy.linalg.cho_solve(fac, r)      # noqa: E731
    else:
        lu = scipy.sparse.linalg.splu(A.tocsc())
        solve = lu.solve
    Ck = Ck.tocsr()
    for j in range(Z.shape[0]):
        z = Z[j]
        for _ in range(2):                       # projection + one refinement step
            m1 = _group_sum(f1, z, w, L1)
            m1 /= s1
            z -= m1[f1]
            r2 = _group_sum(f2, z, w, L2)[kept]
            gam = solve(r2)
            g = np.zeros(L2)
            g[kept] = gam
            h = (Ck @ gam) / s1
            z -= g[f2]
            z += h[f1]
    return k_absorbed


def _demean_map(Z, fes, w, tol: float, maxiter: int) -> int:
    """Alternating projections, every row of Z to convergence. Returns the sweeps used."""
    sums = [np.bincount(c, weights=w, minlength=L).astype(np.float64) for c, L, _ in fes]
    sweeps_used = 0
    for j in range(Z.shape[0]):
        z = Z[j]
        scale = float(np.sqrt(np.mean(z * z))) if z.size else 0.0
        if scale == 0.0:
            continue
        for it in range(1, maxiter + 1):
            delta = 0.0
            for (c, L, _), s in zip(fes, sums):
                m = _group_sum(c, z, w, L)
                m /= s
                delta = max(delta, float(np.max(np.abs(m))))
                z -= m[c]
            if delta <= tol * scale:
                sweeps_used = max(sweeps_used, it)
                break
        else:
            raise RuntimeError(
                f"alternating projections did not converge to tol={tol:g} in {maxiter} sweeps "
                f"(last change {delta:.3g} relative {delta / scale:.3g}); raise maxiter or "
                f"use method='direct' with two fixed effects")
    return sweeps_used


def _rank_of_dummies(fes) -> int:
    """Rank of [D1 ... Dm] (which contains the intercept), m >= 2.

    The largest FE (L1 levels) is full rank; the others add the rank of their Gram matrix after
    projecting out the first, ``A = D_r'D_r - C' diag(1/n1) C`` (``C`` the cross-tabulations
    with the first FE), computed from counts. Eigenvalues below ``COLLINEARITY_TOL`` times the
    largest count as zero (the rule :mod:`pipeline.estimate` uses to drop collinear dummies).
    """
    fes = sorted(fes, key=lambda f: -f[1])
    (f1, L1, _), rest = fes[0], fes[1:]
    total = sum(L for _, L, _ in rest)
    if total > MAX_DENSE_LEVELS:
        raise ValueError(
            f"cannot count the absorbed degrees of freedom of {len(fes)} fixed effects: the "
            f"smaller ones have {total} levels in all (more than {MAX_DENSE_LEVELS}); "
            f"combine fixed effects")
    n1 = np.bincount(f1, minlength=L1).astype(np.float64)
    offsets = np.cumsum([0] + [L for _, L, _ in rest])
    A = np.zeros((total, total))
    Cs = [_crosstab(f1, L1, c, L, None) for c, L, _ in rest]
    for a, (ca, La, _) in enumerate(rest):
        for b, (cb, Lb, _) in enumerate(rest):
            if b < a:
                continue
            if a == b:
                block = np.diag(np.bincount(ca, minlength=La).astype(np.float64))
            else:
                block = np.bincount(ca * Lb + cb, minlength=La * Lb).reshape(La, Lb).astype(float)
            block = block - (Cs[a].T @ scipy.sparse.diags(1.0 / n1) @ Cs[b]).toarray()
            A[offsets[a]:offsets[a] + La, offsets[b]:offsets[b] + Lb] = block
            A[offsets[b]:offsets[b] + Lb, offsets[a]:offsets[a] + La] = block.T
    ev = np.linalg.eigvalsh(A)
    scale = max(float(np.max(np.diag(A))), 1.0)
    return L1 + int(np.count_nonzero(ev > COLLINEARITY_TOL * scale))


# --------------------------------------------------------------------------------------------
# Estimator
# --------------------------------------------------------------------------------------------
def fe_ols(y, X, fe=None, cluster=None, weights=None, *, method: str = "direct",
           tol: float = 1e-12, maxiter: int = 10_000, vcov: str = "CR1") -> FEResult:
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
    vcov : ``"CR1"`` (default; HC1 when ``cluster`` is None) or ``"CR3"`` (cluster jackknife,
        ``VCOV_TYPES``; needs ``cluster``): leave-one-cluster-out estimates with the fixed effects
        re-estimated, ``(G-1)/G * sum_g (b_(g) - b)(b_(g) - b)'``, t(G-1) inference.

    Raises ``ValueError`` for missing values, mismatched lengths, non-positive weights, a
    regressor collinear with the fixed effects or the other regressors, fewer than two clusters,
    or no residual degrees of freedom.
    """
    if method not in ("direct", "map"):
        raise ValueError(f"method must be 'direct' or 'map', got {method!r}")
    if vcov not in VCOV_TYPES:
        raise ValueError(f"vcov must be one of {VCOV_TYPES}, got {vcov!r}")
    if vcov in ("CR2", "CR3") and cluster is None:
        raise ValueError(f"vcov={vcov!r} (small-sample cluster-robust) needs cluster codes")
    Z, names = _stack(y, X)
    Z0 = Z.copy() if vcov in ("CR2", "CR3") else None     # the raw data, for the jackknife
    k = len(names)
    n = Z.shape[1]
    if n == 0:
        raise ValueError("no observations")

    w = None
    if weights is not None:
        w = _to_1d_float(weights, "weights", n)
        if not np.isfinite(w).all():
            raise ValueError("weights have missing (NaN) or infinite values")
        if not (w > 0).all():
            raise ValueError("weights must be positive")

    fes = _fe_list(fe, n)
    groups, n_clusters = None, None
    if cluster is not None:
        groups, n_clusters = _codes(cluster, "cluster", n)
        if n_clusters < 2:
            raise ValueError(f"too few clusters: {n_clusters} (cluster-robust standard errors "
                             f"need at least 2)")

    # Weighted raw sums of squares of the regressors (for the collinearity rule).
    raw_ss = np.array([float(Z[j] @ Z[j]) if w is None else float((Z[j] * w) @ Z[j])
                       for j in range(1, k + 1)])

    # --- absorb the fixed effects (and the intercept) in place ---------------------------
    iterations = 0
    if not fes:
        _demean_one(Z, np.zeros(n, dtype=np.intp), 1, w)
        k_absorbed, fe_method = 1, "none"
    elif len(fes) == 1:
        codes, L, _ = fes[0]
        _demean_one(Z, codes, L, w)
        k_absorbed, fe_method = L, "exact"
    elif len(fes) == 2 and method == "direct":
        fe1, fe2 = sorted(fes, key=lambda f: -f[1])      # larger FE demeaned by group means
        k_absorbed = _demean_two_direct(Z, fe1, fe2, w)
        fe_method = "direct"
    else:
        if len(fes) == 2:
            (f1, L1, _), (f2, L2, _) = fes
            k_absorbed = L1 + L2 - _components(f1, L1, f2, L2)[0]
        else:
            k_absorbed = _rank_of_dummies(fes)
        iterations = _demean_map(Z, sorted(fes, key=lambda f: -f[1]), w, tol, maxiter)
        fe_method = "map"

    K = k + k_absorbed
    if n - K <= 0:
        raise ValueError(f"{n} observations for {K} parameters ({k} regressors + "
                         f"{k_absorbed} absorbed): no residual degrees of freedom")

    # --- normal equations --------------------------------------------------------------
    Xt = Z[1:]
    yt = Z[0]
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
    XtX = (XtX + XtX.T) / 2.0
    _check_collinear(XtX, raw_ss, names)
    fac = scipy.linalg.cho_factor(XtX, lower=True)
    beta = scipy.linalg.cho_solve(fac, Xty)
    bread = scipy.linalg.cho_solve(fac, np.eye(k))
    bread = (bread + bread.T) / 2.0

    # --- residuals and scores, in place ---------------------------------------------------
    u = yt
    u -= beta @ Xt                               # residuals (weighted scale: sqrt(w) u)
    if w is not None:
        u *= w                                   # score weight w_i u_i
    Xt *= u                                      # rows: w_i u_i x~_ij

    if groups is not None:
        S = np.empty((n_clusters, k))
        for j in range(k):
            S[:, j] = np.bincount(groups, weights=Xt[j], minlength=n_clusters)
        meat = S.T @ S
        corr = n_clusters / (n_clusters - 1.0) * (n - 1.0) / (n - K)
        df_inf, cov_type = n_clusters - 1, "cluster"
    else:
        meat = Xt @ Xt.T
        corr = n / (n - K)
        df_inf, cov_type = n - K, "HC1"
    cov = bread @ meat @ bread * corr
    if vcov == "CR2":
        cov = _cr2_cov(Z0, fes, w, groups, n_clusters)
        cov_type = "CR2"
    if vcov == "CR3":
        loo = _loo_cluster_estimates(Z0, fes, w, groups, n_clusters, method, tol, maxiter)
        dev = loo - beta[None, :]
        cov = (n_clusters - 1.0) / n_clusters * (dev.T @ dev)
        cov_type = "CR3"
    cov = (cov + cov.T) / 2.0

    idx = pd.Index(names)
    params = pd.Series(beta, index=idx)
    bse = pd.Series(np.sqrt(np.clip(np.diag(cov), 0.0, None)), index=idx)
    with np.errstate(divide="ignore", invalid="ignore"):
        tvalues = params / bse
    pvalues = pd.Series(2.0 * stats.t.sf(np.abs(tvalues.to_numpy()), df_inf), index=idx)
    return FEResult(
        params=params, bse=bse, cov=pd.DataFrame(cov, index=idx, columns=idx), tvalues=tvalues,
        pvalues=pvalues, nobs=n, df_resid=n - K, df_inference=int(df_inf),
        n_clusters=n_clusters, k_absorbed=int(k_absorbed), cov_type=cov_type,
        weighted=w is not None, fe_method=fe_method, fe_iterations=iterations)


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


# --------------------------------------------------------------------------------------------
# Cluster jackknife (CR3)
# --------------------------------------------------------------------------------------------
def _loo_cluster_estimates(Z0, fes, w, groups, n_clusters, method, tol, maxiter) -> np.ndarray:
    """(G, k) leave-one-cluster-out coefficients, the fixed effects re-estimated without the
    cluster (the same as refitting the dummy-variable regression on the other clusters)."""
    k = Z0.shape[0] - 1
    n = Z0.shape[1]
    n_levels = sum(L for _, L, _ in fes)
    out = np.empty((n_clusters, k))
    order = np.argsort(groups, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(groups, minlength=n_clusters))])
    if n_levels <= MAX_JACKKNIFE_DUMMIES:
        # Downdate the Gram matrix of M = [X, every dummy of every FE] (or [X, 1]) cluster by
        # cluster. The dummies are linearly dependent (one per connected component, and levels
        # only present in the left-out cluster): minimum-norm least squares on the
        # Jacobi-scaled system, whose X block is unique while X is identified.
        M = _dense_design(Z0, fes)[order]
        yv = Z0[0][order]
        Mw = M if w is None else M * w[order][:, None]
        A = Mw.T @ M
        c = Mw.T @ yv
        # Jacobi scaling by the full-sample diagonal: a column that loses all its variation
        # without cluster g stays ~0 and is caught by the identification check.
        d = np.sqrt(np.diag(A))
        d[d == 0] = 1.0
        dd = np.outer(d, d)
        for g in range(n_clusters):
            a, b = bounds[g], bounds[g + 1]
            S = (A - Mw[a:b].T @ M[a:b]) / dd
            cg = (c - Mw[a:b].T @ yv[a:b]) / d
            _check_loo_identified(S, k, g)
            sol = np.linalg.lstsq(S, cg, rcond=1e-11)[0]
            out[g] = (sol / d)[:k]
        return out
    for g in range(n_clusters):
        keep = groups != g
        r = fe_ols(Z0[0][keep], Z0[1:, keep].T, fe=[c[keep] for c, _, _ in fes] or None,
                   weights=None if w is None else w[keep], method=method, tol=tol,
                   maxiter=maxiter)
        out[g] = r.params.to_numpy()
    return out


def _dense_design(Z0, fes) -> np.ndarray:
    """[X, every dummy of every FE] (or [X, 1] without FE), n x (k + levels)."""
    n = Z0.shape[1]
    blocks = [Z0[1:].T]
    if fes:
        for codes, L, _ in fes:
            D = np.zeros((n, L))
            D[np.arange(n), codes] = 1.0
            blocks.append(D)
    else:
        blocks.append(np.ones((n, 1)))
    return np.hstack(blocks)


def _cr2_cov(Z0, fes, w, groups, n_clusters) -> np.ndarray:
    """Bell-McCaffrey CR2 covariance of the X coefficients with the full-model hat matrix."""
    k = Z0.shape[0] - 1
    n_levels = sum(L for _, L, _ in fes)
    if n_levels > MAX_JACKKNIFE_DUMMIES:
        raise ValueError(f"vcov='CR2' supports at most {MAX_JACKKNIFE_DUMMIES} fixed-effect "
                         f"levels in all ({n_levels} here); use 'CR3'")
    M = _dense_design(Z0, fes)
    y = Z0[0].copy()
    if w is not None:
        sw = np.sqrt(w)
        M *= sw[:, None]
        y *= sw
    A = M.T @ M
    d = np.sqrt(np.diag(A))
    d[d == 0] = 1.0
    Ainv = np.linalg.pinv(A / np.outer(d, d), rcond=1e-11, hermitian=True) / np.outer(d, d)
    u = y - M @ (Ainv @ (M.T @ y))
    order = np.argsort(groups, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(groups, minlength=n_clusters))])
    meat = np.zeros((M.shape[1], M.shape[1]))
    for g in range(n_clusters):
        idx = order[bounds[g]:bounds[g + 1]]
        Mg = M[idx]
        H = Mg @ Ainv @ Mg.T
        ev, vec = np.linalg.eigh(np.eye(len(idx)) - (H + H.T) / 2.0)
        inv_sqrt = np.where(ev > 1e-12, 1.0 / np.sqrt(np.clip(ev, 1e-12, None)), 0.0)
        sg = Mg.T @ (vec @ (inv_sqrt * (vec.T @ u[idx])))
        meat += np.outer(sg, sg)
    V = Ainv @ meat @ Ainv
    return V[:k, :k]


def _check_loo_identified(S: np.ndarray, k: int, g: int) -> None:
    """ValueError when, without cluster g, a regressor is collinear with the others and the
    fixed effects (its leave-one-out estimate would not be identified): the Schur complement
    of the dummy block in the scaled Gram matrix ``S`` must stay positive definite."""
    Sxx, Sxd, Sdd = S[:k, :k], S[:k, k:], S[k:, k:]
    schur = Sxx - Sxd @ np.linalg.pinv(Sdd, rcond=1e-11, hermitian=True) @ Sxd.T
    if np.linalg.eigvalsh((schur + schur.T) / 2.0).min() <= COLLINEARITY_TOL:
        raise ValueError(f"CR3: the regressors are collinear (not identified) without "
                         f"cluster {g}; use vcov='CR1'")


def absorb(X, fe=None, weights=None, *, method: str = "direct", tol: float = 1e-12,
           maxiter: int = 10_000) -> tuple[np.ndarray, int]:
    """The columns of ``X`` (n, k) with the fixed effects (and intercept) partialled out, as a
    (k, n) array, and the number of absorbed dummies (rank of [1, D1, ...])."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    n = X.shape[0]
    Z = np.ascontiguousarray(X.T).copy()
    w = None if weights is None else _to_1d_float(weights, "weights", n)
    fes = _fe_list(fe, n)
    if not fes:
        _demean_one(Z, np.zeros(n, dtype=np.intp), 1, w)
        return Z, 1
    if len(fes) == 1:
        codes, L, _ = fes[0]
        _demean_one(Z, codes, L, w)
        return Z, L
    if len(fes) == 2 and method == "direct":
        fe1, fe2 = sorted(fes, key=lambda f: -f[1])
        return Z, _demean_two_direct(Z, fe1, fe2, w)
    if len(fes) == 2:
        (f1, L1, _), (f2, L2, _) = fes
        k_abs = L1 + L2 - _components(f1, L1, f2, L2)[0]
    else:
        k_abs = _rank_of_dummies(fes)
    _demean_map(Z, sorted(fes, key=lambda f: -f[1]), w, tol, maxiter)
    return Z, k_abs
