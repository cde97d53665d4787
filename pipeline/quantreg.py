"""Linear quantile regression solved exactly by the Frisch-Newton interior-point method.

``rq_fit(X, y, tau)`` minimises the check loss  sum_i rho_tau(y_i - x_i'b),
rho_tau(r) = r (tau - 1[r < 0]), through its linear-programming dual (Koenker & Portnoy 1997;
R quantreg's ``rq.fit.fn``, Fortran ``rqfnb``):

    max_a  y'a   s.t.  X'a = (1 - tau) X'1,  0 <= a <= 1,

by a primal-dual interior-point method with Mehrotra's predictor-corrector steps. The
coefficients are the (negated) Lagrange multipliers of the equality constraints. Each iteration
solves one p x p system X'DX (Cholesky) -- cheap for the small designs of the QTE (p ~ 10,
n ~ thousands) -- and every iterate stays primal and dual feasible, so the duality gap
bounds how far the check loss of the current coefficients is above the minimum. The method stops
when that gap is below ``tol`` times the loss (relative), and raises ``QuantRegNotConverged``
if it is not after ``max_iter`` iterations: it never returns a non-solution silently.

The interior-point solution is then moved onto the vertex next to it (``_vertex``, a crossover as
LP solvers do after an interior-point method): the basic solution through p rows the fit passes
through, kept when its fitted values are within ``VERTEX_TOL`` of y's scale of the interior-point
ones and its check loss is at most theirs by the solver's own criterion. Where the minimiser is
unique, that is it, as R's simplex (``rq(method = "br")``) gives: a quantile effect that is 0 in
the data (both arms' quantile at 0 profit) comes out as exactly 0, not as the 1e-10 left by the
interior-point tolerance, which also moved between machines. Where the minimiser is not unique
(e.g. an intercept-only fit with n tau an integer, any point between two order statistics
minimises), the interior-point path ends inside the set of minimisers, away from its vertices,
and is kept: which vertex a simplex method reaches depends on its pivoting.

y is divided by max|y| and each column of X by its norm before solving (the solution is
equivariant, the normal equations better conditioned), and the coefficients are scaled back.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.linalg import cho_factor, cho_solve, qr

STEP_BACKOFF = 0.99995   # fraction of the way to the boundary of the positive orthant (R's beta)
DEFAULT_TOL = 1e-10      # relative duality gap at which the solution is accepted
DEFAULT_MAX_ITER = 100   # R's rqfnb stops at 50; a well-scaled problem needs ~10-30
# Crossover to the vertex next to the interior-point solution: rows whose residual is within this
# share of max|y| are the candidate basis, and the vertex is kept only if its fitted values are
# that close to the interior-point ones (a minimiser that is not unique ends far from its vertices).
VERTEX_TOL = 1e-9


class QuantRegNotConverged(RuntimeError):
    """The interior-point iterations did not reach the tolerance within ``max_iter``."""


def check_loss(residuals: np.ndarray, tau: float) -> float:
    """sum_i rho_tau(r_i), the quantile-regression objective."""
    r = np.asarray(residuals, dtype=float)
    return float(np.sum(r * (tau - (r < 0))))


def independent_columns(X: np.ndarray) -> np.ndarray:
    """Indices of the columns of ``X`` not in the span of the columns before them (greedy in
    column order, from the diagonal of an unpivoted QR of the norm-scaled columns; the tolerance
    is numpy's ``matrix_rank`` default)."""
    X = np.asarray(X, dtype=float)
    norms = np.linalg.norm(X, axis=0)
    nonzero = norms > 0
    if not nonzero.any():
        return np.empty(0, dtype=int)
    r = np.linalg.qr(X[:, nonzero] / norms[nonzero], mode="r")
    r_diag = np.zeros(X.shape[1])
    diag = np.zeros(int(nonzero.sum()))
    diag[: min(r.shape)] = np.abs(np.diagonal(r))   # n < p: the last columns have no pivot
    r_diag[nonzero] = diag
    tol = r_diag.max() * max(X.shape) * np.finfo(float).eps
    return np.flatnonzero(r_diag > tol)


def _validated(X: np.ndarray, y: np.ndarray, taus: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be n x p and y of length n, got X {X.shape} and y {y.shape}")
    for tau in taus:
        if not 0 < tau < 1:
            raise ValueError(f"tau must be in (0, 1), got {tau}")
    n, p = X.shape
    if n <= p:
        raise ValueError(f"quantile regression needs more rows than columns, got {n} rows and {p} columns")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite")
    kept = independent_columns(X)
    if len(kept) < p:
        dependent = sorted(set(range(p)) - set(kept.tolist()))
        raise ValueError(f"X is rank-deficient: columns {dependent} are in the span of the columns before them")
    return X, y


def _max_step(v: np.ndarray, dv: np.ndarray, w: np.ndarray, dw: np.ndarray) -> float:
    """Largest step in (0, 1] keeping v + t dv and w + t dw positive, backed off from the boundary."""
    neg_v, neg_w = dv < 0, dw < 0
    t = np.inf
    if neg_v.any():
        t = min(t, float(np.min(-v[neg_v] / dv[neg_v])))
    if neg_w.any():
        t = min(t, float(np.min(-w[neg_w] / dw[neg_w])))
    return min(STEP_BACKOFF * t, 1.0)


def _factor(M: np.ndarray) -> tuple:
    """Factor the p x p normal matrix X'DX once per iteration. Near the solution of a problem whose
    minimiser is not unique (ties in y), D concentrates on fewer than p rows and X'DX becomes
    numerically singular: the matrix is scaled to unit diagonal (Jacobi) before Cholesky, and if
    Cholesky still fails the directions with eigenvalues below rounding level are dropped
    (pseudo-inverse: no step along the flat directions of the loss)."""
    diag = np.diag(M)
    scale = np.where(diag > 0, 1 / np.sqrt(np.where(diag > 0, diag, 1)), 1.0)
    scaled = M * scale[:, None] * scale[None, :]
    try:
        return scale, cho_factor(scaled, check_finite=False), None
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(scaled)
        keep = vals > vals[-1] * len(vals) * np.finfo(float).eps
        return scale, None, (vecs[:, keep], 1 / vals[keep])


def _solve(factor: tuple, rhs: np.ndarray) -> np.ndarray:
    scale, chol, eig = factor
    if chol is not None:
        return scale * cho_solve(chol, scale * rhs, check_finite=False)
    vecs, inv_vals = eig
    return scale * (vecs @ (inv_vals * (vecs.T @ (scale * rhs))))


def rq_fit(X: np.ndarray, y: np.ndarray, tau: float, *, tol: float = DEFAULT_TOL,
           max_iter: int = DEFAULT_MAX_ITER) -> np.ndarray:
    """Coefficients b minimising sum_i rho_tau(y_i - X_i b) (see the module docstring).

    Raises ``ValueError`` for bad input (n <= p, rank-deficient or non-finite X, tau outside
    (0, 1)) and ``QuantRegNotConverged`` after ``max_iter`` iterations without reaching ``tol``."""
    X, y = _validated(X, y, [tau])
    return _frisch_newton(X, y, tau, tol, max_iter)


def rq_fit_quantiles(X: np.ndarray, y: np.ndarray, taus: Sequence[float], *, tol: float = DEFAULT_TOL,
                     max_iter: int = DEFAULT_MAX_ITER) -> np.ndarray:
    """``rq_fit`` for each of ``taus`` on one design, checked once: a row of coefficients per tau,
    NaN where the solver did not converge or its p x p system was singular. Raises ``ValueError``
    for bad input, as ``rq_fit``."""
    X, y = _validated(X, y, taus)
    out = np.full((len(taus), X.shape[1]), np.nan)
    for i, tau in enumerate(taus):
        try:
            out[i] = _frisch_newton(X, y, tau, tol, max_iter)
        except (np.linalg.LinAlgError, QuantRegNotConverged):
            continue
    return out


def _frisch_newton(X: np.ndarray, y: np.ndarray, tau: float, tol: float, max_iter: int) -> np.ndarray:
    """The interior-point iterations on a validated design (:func:`_validated`)."""
    n = X.shape[0]
    col_scale = np.linalg.norm(X, axis=0)
    y_scale = float(np.max(np.abs(y))) or 1.0
    Xs, ys = X / col_scale, y / y_scale

    # Notation of rqfnb: A = X' (p x n), c = -y, b = (1 - tau) X'1; primal x in [0, 1] (x = a),
    # slack s = 1 - x; dual y_dual with reduced costs z - w = c - A'y_dual, z, w >= 0.
    c = -ys
    b = (1 - tau) * Xs.sum(axis=0)
    x = np.full(n, 1 - tau)
    s = np.full(n, tau)
    y_dual = _solve(_factor(Xs.T @ Xs), Xs.T @ c)        # least-squares start
    reduced = c - Xs @ y_dual
    tiny = np.abs(reduced) < tol
    z = np.maximum(reduced, 0) + tiny * tol
    w = np.maximum(-reduced, 0) + tiny * tol
    gap = x @ z + s @ w
    for _ in range(max_iter):
        loss = check_loss(ys + Xs @ y_dual, tau)       # residuals at b = -y_dual
        if gap <= tol * (1 + loss):
            return _vertex(X, y, tau, -y_dual * y_scale / col_scale, tol)
        # affine-scaling (predictor) direction
        d = 1 / (z / x + w / s)
        zw = z - w
        rhs = b - x @ Xs + (d * zw) @ Xs
        factor = _factor((Xs * d[:, None]).T @ Xs)
        dy = _solve(factor, rhs)
        dx = d * (Xs @ dy - zw)
        ds = -dx
        dz = -z * (dx / x + 1)
        dw = -w * (ds / s + 1)
        step_p = _max_step(x, dx, s, ds)
        step_d = _max_step(z, dz, w, dw)
        if min(step_p, step_d) < 1:
            # Mehrotra corrector: centring target from the predicted gap, second-order terms
            mu = gap
            g = (x + step_p * dx) @ (z + step_d * dz) + (s + step_p * ds) @ (w + step_d * dw)
            mu = mu * (g / mu) ** 3 / (2 * n)
            dxdz, dsdw = dx * dz, ds * dw
            dr = d * (mu * (1 / s - 1 / x) + dxdz / x - dsdw / s)
            dy = _solve(factor, rhs + dr @ Xs)
            dx = d * (Xs @ dy - zw) - dr
            ds = -dx
            dz = -z + (mu - z * dx - dxdz) / x
            dw = -w + (mu - w * ds - dsdw) / s
            step_p = _max_step(x, dx, s, ds)
            step_d = _max_step(z, dz, w, dw)
        x = x + step_p * dx
        s = s + step_p * ds
        y_dual = y_dual + step_d * dy
        z = z + step_d * dz
        w = w + step_d * dw
        gap = x @ z + s @ w
    loss = check_loss(ys + Xs @ y_dual, tau)
    if gap <= tol * (1 + loss):
        return _vertex(X, y, tau, -y_dual * y_scale / col_scale, tol)
    raise QuantRegNotConverged(
        f"Frisch-Newton quantile regression (tau={tau}, n={n}, p={X.shape[1]}) did not converge in "
        f"{max_iter} iterations: relative duality gap {gap / (1 + loss):.3g} > tol {tol:g}")


def _vertex(X: np.ndarray, y: np.ndarray, tau: float, b: np.ndarray, tol: float) -> np.ndarray:
    """The basic solution next to the interior-point solution ``b`` if it is as good, else ``b``.

    The candidate basis: the rows whose residual at ``b`` is within ``VERTEX_TOL`` of max|y|, in row
    order (not by residual size, whose last bits differ between machines); the first p of them if
    they are independent, else p independent ones by a pivoted QR. Kept when the vertex's fitted
    values are within ``VERTEX_TOL`` of max|y| of ``b``'s and its check loss exceeds ``b``'s by at
    most ``tol`` (relative, as the duality gap the iterations stop at)."""
    p = X.shape[1]
    y_scale = float(np.max(np.abs(y))) or 1.0
    near = VERTEX_TOL * y_scale
    candidates = np.flatnonzero(np.abs(y - X @ b) <= near)
    if len(candidates) < p:
        return b
    basis = candidates[:p]
    if np.linalg.matrix_rank(X[basis]) < p:
        _, r, pivots = qr(X[candidates].T, mode="economic", pivoting=True)
        if np.abs(np.diagonal(r))[p - 1] <= np.abs(r[0, 0]) * max(X.shape) * np.finfo(float).eps:
            return b
        basis = np.sort(candidates[pivots[:p]])
    try:
        vertex = np.linalg.solve(X[basis], y[basis]) + 0.0     # + 0.0: no -0.0 in the tables
    except np.linalg.LinAlgError:
        return b
    if not np.isfinite(vertex).all() or np.max(np.abs(X @ (vertex - b))) > near:
        return b
    loss_b = check_loss(y - X @ b, tau) / y_scale
    loss_vertex = check_loss(y - X @ vertex, tau) / y_scale
    return vertex if loss_vertex <= loss_b + tol * (1 + loss_b) else b
