"""Covariance estimators of the coefficients, one function per estimator registered by name
(``REGISTRY``, in the style of linearmodels' ``COVARIANCE_ESTIMATORS``), used by every model.

Each estimator receives a :class:`Problem` (what a fit leaves: the bread ``(X~'WX~)^-1``, the
scores ``w_i u_i x~_i`` of the regressors with the fixed effects partialled out, the clusters and,
for CR2 / CR3, the raw data and the fixed-effect codes) and returns a :class:`Covariance`
(matrix, t degrees of freedom, name). ``K`` counts every regressor including the fixed-effect
dummies and the intercept (statsmodels' ``k_params`` with a full-rank dummy set).

``HC1``
    ``N/(N-K) B (sum_i s_i s_i') B``, t(N-K); the model without clusters.
``CR1``
    ``G/(G-1) (N-1)/(N-K) B (sum_g S_g S_g') B``, t(G-1): statsmodels' ``cov_type="cluster"``.
``CR2``
    Bell & McCaffrey (2002): ``B [sum_g X_g' A_g u_g u_g' A_g X_g] B`` with
    ``A_g = (I - H_gg)^(-1/2)``, ``H`` the hat matrix of the *full* model (fixed-effect dummies
    included, Pustejovsky & Tipton 2018), no further factor. Needs at most
    ``MAX_DENSE_DUMMIES`` fixed-effect levels (dense ``[X, dummies]``). ``A_g`` comes from an
    r x r eigenproblem when the cluster's rows use r <= n_g / 2 columns of ``[X, dummies]`` (fixed
    effects nested in the clusters), else from the n_g x n_g one. The t-test of each
    contrast c'b (each coefficient, each women - men difference) uses the Bell-McCaffrey degrees
    of freedom of that contrast (Imbens & Kolesar 2016; Pustejovsky & Tipton 2018), not G-1.
``CR3``
    The cluster jackknife (MacKinnon, Nielsen & Webb 2023),
    ``(G-1)/G sum_g (b_(g) - b)(b_(g) - b)'`` with ``b_(g)`` the estimate without cluster g,
    *refitted with the fixed effects* (what leave-one-cluster-out refits of the dummy-variable
    regression give), t(G-1). With at most ``MAX_DENSE_DUMMIES`` fixed-effect levels the
    leave-one-out estimates come from downdating the Gram matrix of ``[X, dummies]``; above it from
    G refits with absorbed fixed effects (``Problem.refit``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.estimation.absorb import COLLINEARITY_TOL

# The covariances a specification may ask for (``Spec.vcov``); without clusters CR1 is HC1.
VCOV_TYPES = ("CR1", "CR2", "CR3")
# Most fixed-effect levels for the dense [X, dummies] computations of CR2 and of CR3's downdates.
MAX_DENSE_DUMMIES = 400
# Relative tolerance of rank decisions: an eigenvalue of a correlation matrix, or a diagonal of the
# R of a pivoted QR of unit-norm columns, at most this counts as zero.
RANK_TOL = 1e-8


@dataclass(frozen=True)
class Problem:
    """What a covariance estimator may use from a fit of ``y = X b + D g + u`` (``D``: fixed
    effects, absorbed; ``X~``: X with them and the intercept partialled out)."""

    bread: np.ndarray                  # (k, k) (X~'WX~)^-1
    scores: np.ndarray                 # (k, n) rows w_i u_i x~_ij
    beta: np.ndarray                   # (k,)
    n_obs: int
    k_params: int                      # K: regressors + absorbed dummies (intercept included)
    groups: np.ndarray | None = None   # dense cluster codes 0..G-1
    n_clusters: int | None = None
    raw: np.ndarray | None = None      # (k + 1, n) [y; X'] before absorption (CR2, CR3)
    fes: list | None = None            # fixed effects as (codes, levels, name) (CR2, CR3)
    weights: np.ndarray | None = None
    refit: Callable[[np.ndarray], np.ndarray] | None = None   # rows kept -> b (CR3, many levels)


@dataclass(frozen=True)
class Covariance:
    cov: np.ndarray
    df: int                            # t degrees of freedom of the inference
    name: str                          # "HC1" | "cluster" (CR1) | "CR2" | "CR3"
    # t degrees of freedom of the tests of c'b, one per row c (CR2: Bell-McCaffrey); None: ``df``
    contrast_df: Callable[[np.ndarray], np.ndarray] | None = None


REGISTRY: dict[str, Callable[[Problem], Covariance]] = {}


def register(name: str):
    def add(estimator: Callable[[Problem], Covariance]) -> Callable[[Problem], Covariance]:
        REGISTRY[name] = estimator
        return estimator
    return add


def estimator_name(vcov: str, clustered: bool) -> str:
    """The registry entry for ``Spec.vcov``: CR1 without clusters is HC1."""
    if vcov not in VCOV_TYPES:
        raise ValueError(f"vcov must be one of {VCOV_TYPES}, got {vcov!r}")
    if not clustered:
        if vcov != "CR1":
            raise ValueError(f"vcov={vcov!r} (small-sample cluster-robust) needs cluster codes")
        return "HC1"
    return vcov


def covariance(name: str, problem: Problem) -> Covariance:
    """The covariance ``name`` (a ``REGISTRY`` key), symmetrised."""
    if name not in REGISTRY:
        raise ValueError(f"unknown covariance {name!r}; registered: {sorted(REGISTRY)}")
    c = REGISTRY[name](problem)
    return Covariance((c.cov + c.cov.T) / 2.0, c.df, c.name, c.contrast_df)


@register("HC1")
def hc1(p: Problem) -> Covariance:
    meat = p.scores @ p.scores.T
    corr = p.n_obs / (p.n_obs - p.k_params)
    return Covariance(p.bread @ meat @ p.bread * corr, p.n_obs - p.k_params, "HC1")


def cluster_scores(scores: np.ndarray, groups: np.ndarray, n_clusters: int) -> np.ndarray:
    """(G, k) sums of the score rows within each cluster (one bincount per regressor)."""
    k = scores.shape[0]
    S = np.empty((n_clusters, k))
    for j in range(k):
        S[:, j] = np.bincount(groups, weights=scores[j], minlength=n_clusters)
    return S


@register("CR1")
def cr1(p: Problem) -> Covariance:
    G = p.n_clusters
    S = cluster_scores(p.scores, p.groups, G)
    meat = S.T @ S
    corr = G / (G - 1.0) * (p.n_obs - 1.0) / (p.n_obs - p.k_params)
    return Covariance(p.bread @ meat @ p.bread * corr, G - 1, "cluster")


@register("CR2")
def cr2(p: Problem) -> Covariance:
    cov, contrast_df = _cr2_cov(p.raw, p.fes, p.weights, p.groups, p.n_clusters)
    return Covariance(cov, p.n_clusters - 1, "CR2", contrast_df)


@register("CR3")
def cr3(p: Problem) -> Covariance:
    G = p.n_clusters
    loo = _loo_cluster_estimates(p.raw, p.fes, p.weights, p.groups, G, p.refit)
    dev = loo - p.beta[None, :]
    return Covariance((G - 1.0) / G * (dev.T @ dev), G - 1, "CR3")


def _loo_cluster_estimates(Z0, fes, w, groups, n_clusters, refit) -> np.ndarray:
    """(G, k) leave-one-cluster-out coefficients, the fixed effects re-estimated without the
    cluster (the same as refitting the dummy-variable regression on the other clusters)."""
    k = Z0.shape[0] - 1
    n_levels = sum(L for _, L, _ in fes)
    out = np.empty((n_clusters, k))
    order = np.argsort(groups, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(groups, minlength=n_clusters))])
    if n_levels <= MAX_DENSE_DUMMIES:
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
        out[g] = refit(keep)
    return out


def _dense_design(Z0, fes) -> np.ndarray:
    """[X, every dummy of every FE] (or [X, 1] without FE), n x (k + levels)."""
    k, n = Z0.shape[0] - 1, Z0.shape[1]
    if not fes:
        return np.hstack([Z0[1:].T, np.ones((n, 1))])
    M = np.zeros((n, k + sum(L for _, L, _ in fes)))     # filled in place: no per-FE blocks stacked
    M[:, :k] = Z0[1:].T
    rows = np.arange(n)
    for codes, L, _ in fes:
        M[rows, k + codes] = 1.0
        k += L
    return M


def _cluster_blocks(groups: np.ndarray, n_clusters: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The clusters grouped by size, for batched linear algebra: ``[(clusters (B,), rows (B, size))]``,
    each cluster's rows in data order."""
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups, minlength=n_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return [(gs, order[starts[gs][:, None] + np.arange(size)])
            for size in np.unique(sizes) for gs in [np.flatnonzero(sizes == size)]]


def _cr2_cov(Z0, fes, w, groups, n_clusters) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Bell-McCaffrey CR2 covariance of the X coefficients with the full-model hat matrix, and the
    Bell-McCaffrey degrees of freedom of contrasts (:func:`_bell_mccaffrey_df`). The per-cluster
    ``A_g = (I - H_gg)^-1/2`` come from batched factorisations, one per block of equal-size clusters
    (:func:`_adjustment_blocks`)."""
    k = Z0.shape[0] - 1
    n_levels = sum(L for _, L, _ in fes)
    if n_levels > MAX_DENSE_DUMMIES:
        raise ValueError(f"vcov='CR2' supports at most {MAX_DENSE_DUMMIES} fixed-effect "
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
    scores = np.empty((n_clusters, M.shape[1]))
    adjust = list(_adjustment_blocks(M, Ainv, groups, n_clusters))
    for gs, rows, Mg, Q, f in adjust:
        scores[gs] = (Mg.transpose(0, 2, 1) @ _apply_adjustment(Q, f, u[rows][:, :, None]))[:, :, 0]
    meat = np.zeros((M.shape[1], M.shape[1]))
    for sg in scores:                            # summed in cluster order
        meat += np.outer(sg, sg)
    V = Ainv @ meat @ Ainv

    def contrast_df(C: np.ndarray) -> np.ndarray:
        C = np.atleast_2d(C)
        return _bell_mccaffrey_df(Ainv, adjust, n_clusters, np.hstack([C, np.zeros((len(C), M.shape[1] - k))]))
    return V[:k, :k], contrast_df


def _adjustment_blocks(M, Ainv, groups, n_clusters):
    """``(clusters (B,), rows (B, n_g), M_g, Q, f)`` per block of equal-size clusters, with
    ``A_g = (I - H_gg)^-1/2 = I + Q_g diag(f_g) Q_g'`` (:func:`_hat_eigen`): ``(1 - lam)^-1/2 - 1``
    on the eigenvalues ``lam`` of ``H_gg``, and ``-1`` (pseudo-inverse) where ``1 - lam <= 1e-12``
    (I - H_gg singular, e.g. a fixed-effect level observed in one cluster only). A size block is
    split in two where some of its clusters use the low-rank form and others not."""
    for gs, rows in _cluster_blocks(groups, n_clusters):
        Mg = M[rows]                                             # (B, n_g, p)
        used = (Mg != 0).any(axis=1)                             # (B, p) columns not all zero in g
        low_rank = 2 * used.sum(axis=1) <= rows.shape[1]
        for part, low in ((low_rank, True), (~low_rank, False)):
            if part.any():
                Q, lam = _hat_eigen(Mg[part], used[part] if low else None, Ainv)
                e = 1.0 - lam
                f = np.where(e > 1e-12, 1.0 / np.sqrt(np.clip(e, 1e-12, None)), 0.0) - 1.0
                yield gs[part], rows[part], Mg[part], Q, f


def _hat_eigen(Mg, used, Ainv) -> tuple[np.ndarray, np.ndarray]:
    """``(Q (B, n_g, r), lam (B, r))`` with orthonormal columns ``Q`` and ``H_gg = Q diag(lam) Q'``
    (``H_gg = M_g Ainv M_g'``) for a block of equal-size clusters ``Mg`` (B, n_g, p).

    ``used`` None: ``Q`` the eigenvectors of the n_g x n_g ``H_gg``. ``used`` (B, p), the columns
    not all zero in each cluster: only they enter ``H_gg``, so with the thin QR ``M_gc = Q_0 R`` of
    those columns (padded to a common width with columns that are zero in the cluster, which add
    nothing) ``H_gg = Q_0 (R Ainv_cc R') Q_0'`` and the r x r middle matrix's eigenvectors ``V``
    give ``Q = Q_0 V``; H_gg is 0 on the complement of ``Q``. With the fixed effects nested in the
    clusters r is about k + one level per fixed effect, far below n_g: an r x r eigh, not n_g x n_g."""
    if used is None:
        Q0, core = None, Mg @ Ainv @ Mg.transpose(0, 2, 1)
    else:
        # each cluster's used columns first (in order), then zero ones up to the widest cluster
        cols = np.argsort(~used, axis=1, kind="stable")[:, :used.sum(axis=1).max()]
        Q0, R = np.linalg.qr(np.take_along_axis(Mg, cols[:, None, :], axis=2))
        core = R @ Ainv[cols[:, :, None], cols[:, None, :]] @ R.transpose(0, 2, 1)
    lam, vec = np.linalg.eigh((core + core.transpose(0, 2, 1)) / 2.0)
    return (vec if Q0 is None else Q0 @ vec), lam


def _apply_adjustment(Q, f, v) -> np.ndarray:
    """``A_g v_g = v_g + Q_g diag(f_g) Q_g' v_g`` for a block: ``v`` (B, n_g, m)."""
    return v + Q @ (f[:, :, None] * (Q.transpose(0, 2, 1) @ v))


def _bell_mccaffrey_df(Ainv, adjust, n_clusters, C) -> np.ndarray:
    """Degrees of freedom of the CR2 t-tests of c'b for each row c of ``C`` (Bell & McCaffrey 2002;
    Imbens & Kolesar 2016, eq. 9; Pustejovsky & Tipton 2018 with the fixed effects in the hat
    matrix), under the working model of independent, homoskedastic errors (sqrt(w) metric): with
    ``G_g = (I - H)[:, g] q_g``, ``q_g = A_g M_g (M'M)^-1 c``, and ``l`` the eigenvalues of
    ``G'G``, ``df = (sum l)^2 / sum l^2 = tr(G'G)^2 / ||G'G||_F^2``. As I - H is a projection,
    ``G'G = D - R' Ainv R`` with ``D = diag(q_g'q_g)``, ``R = [M_g'q_g]_g`` (p x G), so, with
    ``h_g = R_g' Ainv R_g``, its diagonal is ``q_g'q_g - h_g`` and its off-diagonal squares sum to
    ``||R' Ainv R||_F^2 - sum h_g^2 = tr((Ainv S)^2) - sum h_g^2`` with ``S = R R'`` (p x p):
    neither an n x G nor a G x G matrix. ``adjust``: :func:`_adjustment_blocks`."""
    Bc = Ainv @ C.T                                          # (p, m)
    m = C.shape[0]
    qq = np.empty((m, n_clusters))
    R = np.empty((m, Ainv.shape[0], n_clusters))
    for gs, _, Mg, Q, f in adjust:
        q = _apply_adjustment(Q, f, Mg @ Bc)                 # (B, n_g, m)
        qq[:, gs] = np.einsum("bij,bij->jb", q, q)
        R[:, :, gs] = (Mg.transpose(0, 2, 1) @ q).transpose(2, 1, 0)
    h = np.einsum("jpg,jpg->jg", R, Ainv @ R)                # (m, G) diagonal of R' Ainv R
    AS = Ainv @ (R @ R.transpose(0, 2, 1))                   # (m, p, p)
    off_diagonal = np.einsum("jpq,jqp->j", AS, AS) - (h ** 2).sum(axis=1)
    diagonal = qq - h
    return diagonal.sum(axis=1) ** 2 / ((diagonal ** 2).sum(axis=1) + off_diagonal)


def _check_loo_identified(S: np.ndarray, k: int, g: int) -> None:
    """ValueError when, without cluster g, a regressor is collinear with the others and the
    fixed effects (its leave-one-out estimate would not be identified): the Schur complement
    of the dummy block in the scaled Gram matrix ``S`` must stay positive definite."""
    Sxx, Sxd, Sdd = S[:k, :k], S[:k, k:], S[k:, k:]
    schur = Sxx - Sxd @ np.linalg.pinv(Sdd, rcond=1e-11, hermitian=True) @ Sxd.T
    if np.linalg.eigvalsh((schur + schur.T) / 2.0).min() <= COLLINEARITY_TOL:
        raise ValueError(f"CR3: the regressors are collinear (not identified) without "
                         f"cluster {g}; use vcov='CR1'")


def wald_statistic(b: np.ndarray, V: np.ndarray) -> tuple[float, int]:
    """(b' V^-1 b, rank of V): the Wald statistic of H0: E b = 0 when b has covariance V, NaN when
    V's rank is below len(b). The rank is decided on V's correlation matrix (``RANK_TOL``), so that
    a coefficient's units (profit in shillings beside a 0/1 dummy) can neither hide a dimension nor
    keep a noise one; a zero variance counts as rank 0. Stata's rule: a test of more restrictions
    than the rank of their covariance (a cluster-robust one has rank at most G - 1, and a contrast
    can have no variance at all) is not reported, as a generalised inverse would test noise."""
    sd = np.sqrt(np.clip(np.diag(V), 0.0, None))
    if not (sd > 0).all():
        return np.nan, 0
    evals, evecs = np.linalg.eigh(V / np.outer(sd, sd))
    rank = int((evals > RANK_TOL).sum())
    if rank < len(b):
        return np.nan, rank
    z = evecs.T @ (b / sd)
    return float((z ** 2 / evals).sum()), rank
