"""Tests for pipeline.quantreg against independent references: the exact LP solved by HiGHS
(scipy.optimize.linprog), statsmodels' QuantReg where its IRLS converges, and closed forms (sample
quantiles)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import statsmodels.api as sm
from scipy.optimize import linprog

from pipeline import quantreg
from pipeline.quantreg import (QuantRegNotConverged, _factor, _solve, check_loss, independent_columns, rq_fit,
                              rq_fit_quantiles)

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def lp_fit(X: np.ndarray, y: np.ndarray, tau: float) -> tuple[np.ndarray, float]:
    """min tau 1'u + (1 - tau) 1'v  s.t.  X b + u - v = y,  u, v >= 0  (HiGHS): (b, minimum)."""
    n, p = X.shape
    cost = np.r_[np.zeros(p), np.full(n, tau), np.full(n, 1 - tau)]
    res = linprog(cost, A_eq=np.hstack([X, np.eye(n), -np.eye(n)]), b_eq=y,
                  bounds=[(None, None)] * p + [(0, None)] * (2 * n), method="highs")
    assert res.status == 0, res.message
    return res.x[:p], float(res.fun)


def interior_point_fit(X: np.ndarray, y: np.ndarray, tau: float) -> np.ndarray:
    """``rq_fit`` without the crossover: the interior point's own solution."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantreg, "_vertex", lambda X, y, tau, b, tol: b)
        return rq_fit(X, y, tau)


def assert_no_worse_than_the_interior_point(X: np.ndarray, y: np.ndarray, tau: float, abs_tol: float = 1e-12):
    """rq_fit's loss is at most the interior point's (by the solver's tolerance) and equals the LP
    minimum (relative 1e-9, absolute ``abs_tol``: pytest's default); returns (rq_fit's
    coefficients, the interior point's)."""
    b, raw = rq_fit(X, y, tau), interior_point_fit(X, y, tau)
    loss, raw_loss = check_loss(y - X @ b, tau), check_loss(y - X @ raw, tau)
    assert loss <= raw_loss + 1e-10 * (1 + raw_loss)
    assert loss == pytest.approx(lp_fit(X, y, tau)[1], rel=1e-9, abs=abs_tol)
    return b, raw


def _design(rng, n, kind):
    """(X, y) of a few kinds: continuous, heavy ties, discrete y with dummies, n barely > p."""
    if kind == "continuous":
        X = np.c_[np.ones(n), rng.normal(size=(n, 3)), rng.exponential(1000, n)]
        y = X @ np.array([5.0, 1.0, -2.0, 0.5, 0.01]) + rng.standard_t(3, n) * 10
    elif kind == "ties":         # profit-like: many exact zeros, rounded values, binary treatments
        t = rng.integers(0, 2, (n, 2))
        X = np.c_[np.ones(n), t, t[:, 0] * t[:, 1], rng.integers(0, 2, n)]
        y = np.where(rng.random(n) < 0.3, 0.0, np.round(rng.lognormal(4, 1, n) + 20 * t[:, 0], -1))
    elif kind == "discrete":     # y in {0, ..., 4}, round dummies
        rnd = rng.integers(0, 3, n)
        X = np.c_[np.ones(n), rng.integers(0, 2, n), rnd == 1, rnd == 2].astype(float)
        y = rng.integers(0, 5, n).astype(float)
    else:                        # n barely above p
        X = np.c_[np.ones(n), rng.normal(size=(n, n - 3))]
        y = rng.normal(size=n)
    return X, y


@pytest.mark.parametrize("kind,n", [("continuous", 300), ("ties", 250), ("discrete", 200), ("few_rows", 9)])
def test_loss_equals_the_exact_lp_minimum(kind, n):
    rng = np.random.default_rng(len(kind) + n)
    for _ in range(2):
        X, y = _design(rng, n, kind)
        for tau in QUANTILES:
            _, minimum = lp_fit(X, y, tau)
            loss = check_loss(y - X @ rq_fit(X, y, tau), tau)
            assert loss == pytest.approx(minimum, rel=1e-8, abs=1e-9), (kind, tau)


def test_coefficients_equal_the_lp_and_statsmodels_where_the_minimiser_is_unique():
    """Continuous data, n tau not an integer: a unique minimiser (a vertex). statsmodels' IRLS
    only where it reports convergence, to its own precision."""
    rng = np.random.default_rng(3)
    n = 301
    X = np.c_[np.ones(n), rng.normal(size=(n, 2)), rng.integers(0, 2, n)]
    y = X @ np.array([1.0, 2.0, -1.0, 3.0]) + rng.normal(size=n) * (1 + X[:, 3])
    for tau in (0.1, 0.3, 0.5, 0.7, 0.9):
        b = rq_fit(X, y, tau)
        b_lp, _ = lp_fit(X, y, tau)
        np.testing.assert_allclose(b, b_lp, rtol=1e-8, atol=1e-8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            irls = sm.QuantReg(y, X).fit(q=tau, max_iter=5000, p_tol=1e-10)
        assert irls.iterations < 5000
        np.testing.assert_allclose(b, irls.params, atol=1e-5)


def test_coefficients_scale_with_y_and_columns():
    """Equivariance: b(c y, X diag(s)) = c b(y, X) / s, which the internal scaling must keep."""
    rng = np.random.default_rng(8)
    X, y = _design(rng, 200, "continuous")
    s = np.array([1.0, 1e3, 1e-3, 1.0, 10.0])
    for tau in (0.25, 0.75):
        np.testing.assert_allclose(rq_fit(X * s, 1e4 * y, tau), 1e4 * rq_fit(X, y, tau) / s, rtol=1e-7)


def test_intercept_only_is_a_sample_quantile():
    rng = np.random.default_rng(5)
    y = rng.normal(size=101)
    ones = np.ones((101, 1))
    for tau in (0.1, 0.3, 0.5, 0.77):    # n tau not an integer: the ceil(n tau)-th order statistic
        assert rq_fit(ones, y, tau)[0] == pytest.approx(np.quantile(y, tau, method="inverted_cdf"), abs=1e-9)
    y = y[:100]                          # n tau = 50: every point between the 50th and 51st minimises
    b = rq_fit(ones[:100], y, 0.5)[0]
    lo, hi = np.sort(y)[[49, 50]]
    assert lo - 1e-9 <= b <= hi + 1e-9
    assert check_loss(y - b, 0.5) == pytest.approx(check_loss(y - lo, 0.5), rel=1e-12)
    discrete = rng.integers(0, 4, 203).astype(float)     # heavy ties
    for tau in QUANTILES:
        assert rq_fit(np.ones((203, 1)), discrete, tau)[0] == pytest.approx(
            np.quantile(discrete, tau, method="inverted_cdf"), abs=1e-8)


def test_binary_regressor_gives_the_difference_of_group_quantiles():
    rng = np.random.default_rng(6)
    g = np.r_[np.zeros(71), np.ones(93)]
    y = np.where(g == 1, 2 + 3 * rng.exponential(size=g.size), rng.normal(size=g.size))
    X = np.c_[np.ones(g.size), g]
    for tau in (0.1, 0.25, 0.6, 0.9):    # 71 tau and 93 tau not integers: unique group quantiles
        q0 = np.quantile(y[g == 0], tau, method="inverted_cdf")
        q1 = np.quantile(y[g == 1], tau, method="inverted_cdf")
        np.testing.assert_allclose(rq_fit(X, y, tau), [q0, q1 - q0], atol=1e-9)


def test_degenerate_input_raises_a_clear_error():
    rng = np.random.default_rng(7)
    X, y = _design(rng, 50, "continuous")
    with pytest.raises(ValueError, match=r"rank-deficient: columns \[5\]"):
        rq_fit(np.c_[X, 2 * X[:, 1]], y, 0.5)
    with pytest.raises(ValueError, match=r"rank-deficient: columns \[2\]"):
        rq_fit(np.c_[X[:, :2], np.zeros(50)], y, 0.5)
    with pytest.raises(ValueError, match="more rows than columns"):
        rq_fit(X[:5], y[:5], 0.5)
    with pytest.raises(ValueError, match="tau"):
        rq_fit(X, y, 1.0)
    with pytest.raises(ValueError, match="finite"):
        rq_fit(X, np.r_[np.nan, y[1:]], 0.5)
    with pytest.raises(QuantRegNotConverged, match="did not converge in 2 iterations"):
        rq_fit(X, y, 0.5, max_iter=2)


def test_many_quantiles_are_the_single_fits_checked_once():
    """rq_fit_quantiles: row i is rq_fit at taus[i] (to the bit: the same iterations), a quantile that
    does not converge is a NaN row while the others are kept, and bad input raises as rq_fit does."""
    rng = np.random.default_rng(8)
    X, y = _design(rng, 250, "ties")
    taus = [0.1, 0.5, 0.9]
    np.testing.assert_array_equal(rq_fit_quantiles(X, y, taus), np.vstack([rq_fit(X, y, t) for t in taus]))
    iters = {}
    for t in taus:                                 # the fewest iterations each quantile needs
        iters[t] = next(m for m in range(1, 101) if _converges(X, y, t, m))
    cap = sorted(iters.values())[1]                # enough for the easier quantiles only
    out = rq_fit_quantiles(X, y, taus, max_iter=cap)
    for i, t in enumerate(taus):
        assert np.isnan(out[i]).all() == (iters[t] > cap)
    assert np.isnan(out).any() and not np.isnan(out).all()
    with pytest.raises(ValueError, match="tau"):
        rq_fit_quantiles(X, y, [0.5, 0.0])
    with pytest.raises(ValueError, match=r"rank-deficient: columns \[5\]"):
        rq_fit_quantiles(np.c_[X, X[:, 1]], y, taus)


def _converges(X, y, tau, max_iter):
    try:
        rq_fit(X, y, tau, max_iter=max_iter)
        return True
    except QuantRegNotConverged:
        return False


def test_independent_columns_keeps_the_first_of_aliased_columns():
    rng = np.random.default_rng(9)
    x, z = rng.normal(size=(2, 40))
    X = np.c_[np.ones(40), x, 3 * x - 1, np.zeros(40), z, x + z]
    assert independent_columns(X).tolist() == [0, 1, 4]


def test_normal_equations_fall_back_to_the_pseudo_inverse_when_singular():
    """Near a non-unique minimiser X'DX is numerically singular (seen in 3 of 2010 bootstrap fits
    of the synthetic study): the fallback still solves the system, without a step blown up along
    the null space."""
    rng = np.random.default_rng(10)
    B = rng.normal(size=(4, 2)) * [1e4, 1e-3]
    M = B @ B.T                                   # rank 2, badly scaled
    rhs = M @ rng.normal(size=4)
    factor = _factor(M)
    assert factor[1] is None                      # Cholesky failed, the eigen fallback was used
    v = _solve(factor, rhs)
    np.testing.assert_allclose(M @ v, rhs, rtol=1e-8, atol=1e-8 * np.abs(rhs).max())
    assert np.linalg.norm(v) < 10 * np.linalg.norm(np.linalg.pinv(M, rcond=1e-12) @ rhs)
    C = rng.normal(size=(4, 4))
    d = np.sqrt([1e8, 1.0, 1e-4, 10.0])
    full = d[:, None] * (np.eye(4) + 0.1 * (C + C.T)) * d[None, :]   # badly scaled, well conditioned once scaled
    np.testing.assert_allclose(_solve(_factor(full), rhs), np.linalg.solve(full, rhs), rtol=1e-10)


def test_effects_that_are_zero_in_the_data_come_out_exactly_zero():
    """Profit-like data with many exact zeros in both arms: at low quantiles both arms' quantile
    is 0, so the minimiser is b = (0, 0), a vertex. The crossover returns it exactly (R's simplex
    does too); the interior point alone stops about 1e-10 away (checked, so the test can fail)."""
    rng = np.random.default_rng(11)
    n = 4000
    treated = rng.integers(0, 2, n).astype(float)
    y = np.where(rng.random(n) < 0.35, 0.0, np.round(rng.lognormal(5, 1.2, n), 2))
    X = np.c_[np.ones(n), treated]
    for tau in (0.1, 0.2, 0.3):
        b = rq_fit(X, y, tau)
        assert b[0] == 0.0 and b[1] == 0.0 and not np.signbit(b).any(), (tau, b)
        assert check_loss(y - X @ b, tau) == pytest.approx(lp_fit(X, y, tau)[1], rel=1e-12)
    assert np.abs(interior_point_fit(X, y, 0.1)).max() > 0


def test_unique_group_quantiles_are_exact_with_ties():
    """Discrete y, a binary regressor, n_g tau not integers: the minimiser is the unique vertex
    (q0, q1 - q0), returned exactly, not to a tolerance."""
    rng = np.random.default_rng(12)
    g = np.r_[np.zeros(301), np.ones(457)]
    y = rng.integers(0, 6, g.size).astype(float) * 12.5 + 40 * g
    X = np.c_[np.ones(g.size), g]
    for tau in (0.1, 0.25, 0.5, 0.75, 0.9):
        q0 = np.quantile(y[g == 0], tau, method="inverted_cdf")
        q1 = np.quantile(y[g == 1], tau, method="inverted_cdf")
        assert list(rq_fit(X, y, tau)) == [q0, q1 - q0], tau


def test_a_minimiser_that_is_not_unique_is_not_moved_to_a_vertex():
    """n tau an integer: every point between two order statistics minimises. The interior-point
    solution ends inside that interval, away from both ends, and stays there (which end a simplex
    reaches depends on its pivoting, so a crossover would pick one by rounding)."""
    y = np.random.default_rng(13).normal(size=100)
    lo, hi = np.sort(y)[[49, 50]]
    b = rq_fit(np.ones((100, 1)), y, 0.5)[0]
    margin = 1e-3 * (hi - lo)
    assert lo + margin < b < hi - margin


@pytest.mark.parametrize("kind,n", [("continuous", 300), ("ties", 250), ("discrete", 200)])
def test_the_crossover_never_worsens_the_loss(kind, n):
    """Whatever the data, the returned coefficients' loss is at most the interior point's (by the
    solver's tolerance) and equals the LP minimum."""
    rng = np.random.default_rng(len(kind) * 7 + n)
    X, y = _design(rng, n, kind)
    for tau in QUANTILES:
        assert_no_worse_than_the_interior_point(X, y, tau)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(12, 120), p=st.integers(1, 4),
       tau=st.sampled_from(QUANTILES), levels=st.integers(2, 8))
def test_crossover_invariants_on_any_tied_design(seed, n, p, tau, levels):
    """For any design with heavy ties (y on a few levels, 0/1 regressors beside an intercept): the
    returned loss is the LP minimum and never above the interior point's, and a result moved off
    the interior point is a vertex, passing exactly (to rounding) through p independent rows."""
    rng = np.random.default_rng(seed)
    X = np.c_[np.ones(n), rng.integers(0, 2, (n, p - 1))].astype(float)
    y = rng.integers(0, levels, n) * 25.0 - 20.0
    if len(independent_columns(X)) < p:
        return                                        # rank-deficient draw: rq_fit refuses it (tested above)
    b, raw = assert_no_worse_than_the_interior_point(X, y, tau, abs_tol=1e-9)    # loss 0 when y is constant
    if not np.array_equal(b, raw):
        through = np.abs(y - X @ b) <= 1e-9 * np.abs(y).max()
        assert np.linalg.matrix_rank(X[through]) == p
