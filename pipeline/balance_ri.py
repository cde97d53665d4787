"""Randomisation inference of the balance F-tests (:mod:`pipeline.balance`) for a chunk of
permutations at once.

:func:`permutation_f_stats` returns every permutation's F of one test. Each chunk of ``CHUNK``
permutations is computed with stacked numpy (:func:`covariate_f_batch`, :func:`joint_f_batch`:
P x n x k arrays, strata and cluster sums by ``np.add.reduceat`` over the rows sorted by stratum
then cluster, batched ``pinv`` / ``eigh``), step for step what :func:`pipeline.inference.cluster_wald`
does: unit-norm columns, ``pinv`` bread, CR1 factor G/(G-1) (N-1)/(N-K), the test on the
correlation scale. What the batched code does not mirror is recomputed by the scalar path
(``cluster_wald`` itself), so the statistics are today's by construction:

* a permutation in which ``cluster_wald`` would drop a column, refuse the test, return no test
  (G < 2, N <= K) or come near one of those decisions (within ``GUARD`` of its tolerance);
* an ill-conditioned X'X (``pinv`` may then cut a different singular value);
* an F within ``NEAR_OBSERVED`` (relative) of the observed one, so that the count of F* >= F
  (a tie when a permutation reproduces the observed design) is decided on the scalar value.

The batched F agree with the scalar ones to rounding (~1e-13 relative, ``tests/test_balance_ri.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.inference import RANK_TOL

# Permutations per chunk: the joint test holds a few P x n x k float arrays (n rows, k regressors).
CHUNK = 200
# ``cluster_wald``'s default column-dropping tolerance (its ``tol``).
DROP_TOL = 1e-10
# A decision of ``cluster_wald`` (column dropped, rank refused) closer than this factor to its
# threshold is left to the scalar path.
GUARD = 1e3
# Smallest eigenvalue ratio of the unit-norm X'X computed in batch (pinv's cut-off is 1e-15).
MIN_CONDITION = 1e-9
# Batched F this close (relative) to the observed F are recomputed by the scalar path.
NEAR_OBSERVED = 1e-8


@dataclass(frozen=True)
class RowLayout:
    """The rows sorted by stratum then cluster (clusters nested in strata), with the starts of the
    stratum and cluster segments in that order (``np.add.reduceat`` indices)."""

    order: np.ndarray
    strata_starts: np.ndarray
    strata_sizes: np.ndarray
    cluster_starts: np.ndarray

    @classmethod
    def of(cls, strata: np.ndarray, groups: np.ndarray) -> RowLayout:
        order = np.lexsort((groups, strata))
        s, g = strata[order], groups[order]
        new_stratum = np.r_[True, s[1:] != s[:-1]]
        new_cluster = new_stratum | np.r_[True, g[1:] != g[:-1]]
        cluster_starts = np.flatnonzero(new_cluster)
        if len(cluster_starts) != np.unique(groups).size:
            raise ValueError("balance randomisation inference: a cluster spans several strata")
        strata_starts = np.flatnonzero(new_stratum)
        return cls(order, strata_starts, np.diff(np.r_[strata_starts, len(s)]), cluster_starts)


def _strata_means(values: np.ndarray, layout: RowLayout, counts: np.ndarray) -> np.ndarray:
    """P x n (x k) stratum means of ``values`` (P x n (x k), rows in layout order) divided by
    ``counts`` (P x H, or H) and repeated over each stratum's rows."""
    sums = np.add.reduceat(values, layout.strata_starts, axis=1)
    c = counts if counts.ndim == 2 else np.broadcast_to(counts, sums.shape[:2])
    means = sums / np.maximum(c, 1).reshape(c.shape + (1,) * (sums.ndim - 2))
    return np.repeat(means, layout.strata_sizes, axis=1)


def _batched_wald(y: np.ndarray, X: np.ndarray, layout: RowLayout, n_obs: np.ndarray, k_extra: np.ndarray,
                  n_clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, exact) of P regressions y_p ~ X_p (P x n, P x n x k; rows in layout order, rows outside
    a regression zero), CR1 Wald test of all k coefficients as ``cluster_wald``; ``exact`` False
    where the scalar path must decide (module docstring)."""
    P, _, k = X.shape
    norms = np.sqrt((X ** 2).sum(axis=1))                                   # P x k
    floor = DROP_TOL * np.maximum(norms.max(axis=1), 1e-300)[:, None]
    exact = (norms > GUARD * floor).all(axis=1)
    exact &= (n_clusters >= 2) & (n_obs > k + k_extra)
    X = X / np.where(norms > 0, norms, 1.0)[:, None, :]
    Xt = X.transpose(0, 2, 1)
    gram = Xt @ X
    ev = np.linalg.eigvalsh(gram)
    exact &= ev[:, 0] > MIN_CONDITION * ev[:, -1]
    bread = np.linalg.pinv(gram)
    beta = (bread @ (Xt @ y[:, :, None]))[:, :, 0]
    u = y - (X @ beta[:, :, None])[:, :, 0]
    S = np.add.reduceat(X * u[:, :, None], layout.cluster_starts, axis=1)     # P x G x k
    G = n_clusters.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = G / (G - 1.0) * (n_obs - 1.0) / (n_obs - (k + k_extra))
    V = bread @ (S.transpose(0, 2, 1) @ S) @ bread * corr[:, None, None]
    V = (V + V.transpose(0, 2, 1)) / 2.0
    sd = np.sqrt(np.clip(np.diagonal(V, axis1=1, axis2=2), 0.0, None))
    exact &= (sd > 0).all(axis=1)
    sd = np.where(sd > 0, sd, 1.0)
    evals, evecs = np.linalg.eigh(V / (sd[:, :, None] * sd[:, None, :]))
    exact &= evals[:, 0] > GUARD * RANK_TOL
    z = (evecs.transpose(0, 2, 1) @ (beta / sd)[:, :, None])[:, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (z ** 2 / evals).sum(axis=1) / k
    return np.where(exact, f, np.nan), exact


def covariate_f_batch(x_demeaned: np.ndarray, arm_codes: np.ndarray, n_arms: int, layout: RowLayout,
                      n_strata: int) -> tuple[np.ndarray, np.ndarray]:
    """(F, exact) of ``balance._per_covariate_stat`` for each row of ``arm_codes`` (P x n, rows
    in data order): x (strata-demeaned) ~ strata-demeaned dummies of arms 1..n_arms-1, CR1."""
    P, n = arm_codes.shape
    codes = arm_codes[:, layout.order]
    D = (codes[:, :, None] == np.arange(1, n_arms)).astype(float)
    X = D - _strata_means(D, layout, layout.strata_sizes)
    y = np.broadcast_to(x_demeaned[layout.order], (P, n))
    return _batched_wald(y, X, layout, np.full(P, n), np.full(P, n_strata),
                         np.full(P, len(layout.cluster_starts)))


def joint_f_batch(Z: np.ndarray, arm_codes: np.ndarray, arm: int, layout: RowLayout) -> tuple[np.ndarray, np.ndarray]:
    """(F, exact) of ``balance._joint_stat`` for each row of ``arm_codes`` (P x n, rows in data
    order): 1{arm} ~ Z on the rows of ``arm`` or control (code 0), both demeaned within strata over
    those rows, CR1 with the strata and clusters present in them."""
    codes = arm_codes[:, layout.order]
    d = (codes == arm).astype(float)
    mask = d + (codes == 0)
    counts = np.add.reduceat(mask, layout.strata_starts, axis=1)            # P x H
    y = mask * (d - _strata_means(d, layout, counts))
    Zm = mask[:, :, None] * Z[layout.order][None, :, :]
    X = mask[:, :, None] * (Zm - _strata_means(Zm, layout, counts))
    in_cluster = np.add.reduceat(mask, layout.cluster_starts, axis=1)
    return _batched_wald(y, X, layout, mask.sum(axis=1), (counts > 0).sum(axis=1), (in_cluster > 0).sum(axis=1))


def permutation_f_stats(perms: np.ndarray, row_cluster: np.ndarray, f_observed: float,
                        batch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                        scalar: Callable[[np.ndarray], float], chunk: int = CHUNK) -> np.ndarray:
    """Every permutation's F of one test: ``perms`` (P x clusters) arm codes of the clusters,
    ``row_cluster`` the cluster of each row; ``batch`` maps a chunk's P x n arm codes of the rows
    to (F, exact), ``scalar`` one permutation's arm codes to its F (the reference path, used
    where ``batch`` is not exact or F is within ``NEAR_OBSERVED`` of ``f_observed``)."""
    out = np.empty(len(perms))
    for start in range(0, len(perms), chunk):
        codes = perms[start:start + chunk][:, row_cluster]
        f, exact = batch(codes)
        redo = ~exact | (np.abs(f - f_observed) <= NEAR_OBSERVED * abs(f_observed))
        for i in np.flatnonzero(redo):
            f[i] = scalar(codes[i])
        out[start:start + len(codes)] = f
    return out
