"""Absorbing fixed effects (Frisch-Waugh-Lovell) and counting the absorbed degrees of freedom.

Used by :mod:`pipeline.estimation.ols` (the fit), :mod:`pipeline.estimation.design` (collinearity)
and :mod:`pipeline.estimation.wild` (the bootstrap): the columns are partialled off the fixed
effects and the intercept without building the dummies (time and memory O(n * k), not
O(n * (k + levels))), demeaned **in place** on the rows of a ``(m, n)`` float64 array.

* One fixed effect (and ``fe=None``, which absorbs only the intercept): exact (weighted) group
  demeaning with ``np.bincount``.
* Two fixed effects (``method="direct"``, the default): exact projection from grouped sufficient
  statistics. The larger FE (``L1`` levels) is demeaned by group means; the other one's dummies,
  demeaned by the first, have the small ``L2 x L2`` Gram matrix
  ``A = diag(s2) - C' diag(1/s1) C`` (``C`` the weighted ``L1 x L2`` cross-tabulation), so the
  projection needs one factorisation of ``A`` (one level per connected component of the
  bipartite level graph grounded, which removes exactly its null space) and one bincount per
  column. The projection is applied twice (one step of iterative refinement).
* Three or more fixed effects, or ``method="map"``: the method of alternating projections
  (group demeaning by each FE in turn) until the largest change in a sweep is below
  ``tol`` times the column's scale; ``RuntimeError`` after ``maxiter`` sweeps.

Absorbed degrees of freedom are counted as statsmodels would count a full-rank set of dummies
plus the intercept: the rank of ``[1, D1, ..., Dm]``. One FE: its number of levels. Two FEs:
``L1 + L2 - (connected components of the bipartite level graph)``. Three or more: the levels
of the largest FE plus the rank of the others' Gram matrix after projecting it out (from
counts; the smaller FEs may have up to ``MAX_DENSE_LEVELS`` levels in all, else ``ValueError``).
"""
from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg

# A regressor is collinear (ValueError) when the share of its (weighted) sum of squares not
# explained by the fixed effects, the intercept and the regressors before it is below this
# (the rule pipeline.estimation.design also drops collinear columns by).
COLLINEARITY_TOL = 1e-9
# Largest number of levels of the smaller FE (two FEs) solved with a dense Cholesky factor
# (sparse LU above), and of all FEs but the largest together for the rank count with three or
# more FEs.
MAX_DENSE_LEVELS = 2000


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def to_1d_float(v, what: str, n: int | None) -> np.ndarray:
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


def dense_codes(v, what: str, n: int) -> tuple[np.ndarray, int]:
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


def fe_list(fe, n: int) -> list[tuple[np.ndarray, int, str]]:
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
        codes, n_levels = dense_codes(v, f"fixed effect {name!r}", n)
        out.append((codes, n_levels, name))
    return out


# --------------------------------------------------------------------------------------------
# Absorbing fixed effects (in place on the rows of Z)
# --------------------------------------------------------------------------------------------
def _group_sum(codes: np.ndarray, z: np.ndarray, w: np.ndarray | None, n_levels: int):
    return np.bincount(codes, weights=z if w is None else z * w, minlength=n_levels)


def demean_one(Z: np.ndarray, codes: np.ndarray, n_levels: int, w: np.ndarray | None) -> None:
    s = np.bincount(codes, weights=w, minlength=n_levels).astype(np.float64)
    for j in range(Z.shape[0]):
        m = _group_sum(codes, Z[j], w, n_levels)
        m /= s
        Z[j] -= m[codes]


def bipartite_components(f1, L1, f2, L2) -> tuple[int, np.ndarray]:
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


@dataclass(frozen=True)
class TwoWayProjector:
    """What the exact two-way projection needs besides the data: the counts and cross-tabulation
    of the two fixed effects and the factorised Gram matrix of the grounded FE2 dummies
    (:func:`two_way_projector`)."""

    k_absorbed: int
    s1: np.ndarray
    kept: np.ndarray                # FE2 levels not grounded
    Ck: scipy.sparse.csr_matrix | None
    solve: Callable | None


# Projectors of the last few (FE1, FE2, weights): a fit absorbs X and y, the wild bootstrap the same
# design once per test, the simulation's outcomes the same sample, so the same codes come back and
# their setup (components, cross-tabulation, factorisation) was over half of an absorb call there.
# Keyed by a digest of the codes and weights (not the arrays: a cache entry holds no data).
_PROJECTOR_CACHE: OrderedDict = OrderedDict()
_PROJECTOR_CACHE_SIZE = 8
_PROJECTOR_LOCK = threading.Lock()


def _digest(*arrays) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for a in arrays:
        if a is None:
            h.update(b"none")
        else:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
    return h.digest()


def two_way_projector(f1, L1, f2, L2, w) -> TwoWayProjector:
    """:class:`TwoWayProjector` of FE1 (the larger) and FE2 with weights ``w``, computed once per
    distinct codes and weights among the last few (a pure function of them, so a cached one is the
    same)."""
    key = (int(L1), int(L2), _digest(f1, f2, w))
    with _PROJECTOR_LOCK:
        found = _PROJECTOR_CACHE.get(key)
        if found is not None:
            _PROJECTOR_CACHE.move_to_end(key)
            return found
    projector = _two_way_projector(f1, L1, f2, L2, w)
    with _PROJECTOR_LOCK:
        _PROJECTOR_CACHE[key] = projector
        while len(_PROJECTOR_CACHE) > _PROJECTOR_CACHE_SIZE:
            _PROJECTOR_CACHE.popitem(last=False)
    return projector


def _two_way_projector(f1, L1, f2, L2, w) -> TwoWayProjector:
    n_comp, comp2 = bipartite_components(f1, L1, f2, L2)
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
        return TwoWayProjector(k_absorbed, s1, kept, None, None)
    C = _crosstab(f1, L1, f2, L2, w)                        # L1 x L2
    Ck = C[:, kept]
    A = (scipy.sparse.diags(s2[kept]) - Ck.T @ scipy.sparse.diags(1.0 / s1) @ Ck)
    if kept.size <= MAX_DENSE_LEVELS:
        fac = scipy.linalg.cho_factor(A.toarray(), lower=True)
        # finiteness is checked once per call (demean_two_direct), not on every column's solve
        solve = functools.partial(scipy.linalg.cho_solve, fac, check_finite=False)
    else:
        solve = scipy.sparse.linalg.splu(A.tocsc()).solve
    return TwoWayProjector(k_absorbed, s1, kept, Ck.tocsr(), solve)


def demean_two_direct(Z, fe1, fe2, w) -> int:
    """Exact two-way projection from grouped sufficient statistics. Returns k_absorbed."""
    f1, L1, _ = fe1
    f2, L2, _ = fe2
    proj = two_way_projector(f1, L1, f2, L2, w)
    if proj.kept.size == 0:                     # FE2 nested in FE1: adds nothing
        demean_one(Z, f1, L1, w)
        return proj.k_absorbed
    s1, kept, Ck, solve = proj.s1, proj.kept, proj.Ck, proj.solve
    if not np.isfinite(Z).all():
        raise ValueError("array must not contain infs or NaNs")     # as the solve's own check said
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
    return proj.k_absorbed


def demean_map(Z, fes, w, tol: float, maxiter: int) -> int:
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


def rank_of_dummies(fes) -> int:
    """Rank of [D1 ... Dm] (which contains the intercept), m >= 2.

    The largest FE (L1 levels) is full rank; the others add the rank of their Gram matrix after
    projecting out the first, ``A = D_r'D_r - C' diag(1/n1) C`` (``C`` the cross-tabulations
    with the first FE), computed from counts. Eigenvalues below ``COLLINEARITY_TOL`` times the
    largest count as zero (the rule :mod:`pipeline.estimation.design` uses to drop collinear dummies).
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


@dataclass(frozen=True)
class Absorbed:
    """How the fixed effects were absorbed: the absorbed degrees of freedom (rank of
    [1, D1, ..., Dm]), the method and the sweeps of the alternating projections."""

    k_absorbed: int
    method: str            # "none" | "exact" | "direct" | "map"
    iterations: int = 0

    @property
    def is_exact(self) -> bool:
        """Partialled out exactly (not by alternating projections to a tolerance)."""
        return self.method != "map"


def absorb_in_place(Z: np.ndarray, fes, w: np.ndarray | None, *, method: str = "direct",
                    tol: float = 1e-12, maxiter: int = 10_000) -> Absorbed:
    """Partial the fixed effects ``fes`` (from :func:`fe_list`) and the intercept out of every row
    of ``Z`` (m, n), in place: one FE exactly, two by the direct projection (``method="direct"``),
    else alternating projections."""
    n = Z.shape[1]
    if not fes:
        demean_one(Z, np.zeros(n, dtype=np.intp), 1, w)
        return Absorbed(1, "none")
    if len(fes) == 1:
        codes, L, _ = fes[0]
        demean_one(Z, codes, L, w)
        return Absorbed(L, "exact")
    if len(fes) == 2 and method == "direct":
        fe1, fe2 = sorted(fes, key=lambda f: -f[1])      # larger FE demeaned by group means
        return Absorbed(demean_two_direct(Z, fe1, fe2, w), "direct")
    if len(fes) == 2:
        (f1, L1, _), (f2, L2, _) = fes
        k_absorbed = L1 + L2 - bipartite_components(f1, L1, f2, L2)[0]
    else:
        k_absorbed = rank_of_dummies(fes)
    iterations = demean_map(Z, sorted(fes, key=lambda f: -f[1]), w, tol, maxiter)
    return Absorbed(k_absorbed, "map", iterations)


def absorb(X, fe=None, weights=None, *, method: str = "direct", tol: float = 1e-12,
           maxiter: int = 10_000) -> tuple[np.ndarray, Absorbed]:
    """The columns of ``X`` (n, k) with the fixed effects (and intercept) partialled out, as a
    (k, n) array, and how (:class:`Absorbed`: the number of absorbed dummies, rank of [1, D1, ...])."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    n = X.shape[0]
    Z = np.ascontiguousarray(X.T).copy()
    w = None if weights is None else to_1d_float(weights, "weights", n)
    done = absorb_in_place(Z, fe_list(fe, n), w, method=method, tol=tol, maxiter=maxiter)
    return Z, done
