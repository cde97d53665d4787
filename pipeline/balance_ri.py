"""Randomisation inference of the balance F-tests (:mod:`pipeline.balance`) for a chunk of
permutations at once.

:func:`permutation_f_stats` returns every permutation's F of one test. A chunk of permutations
(``CHUNK_BYTES``) is computed with stacked numpy (:func:`covariate_f_batch`, :func:`joint_f_batch`).
The arms are assigned by cluster, so each permutation's X'X, X'y and cluster sums of the scores
follow from per-cluster sums (sizes, means, within-cluster scatter; P x clusters x k arrays,
strata sums by ``np.add.reduceat`` over the clusters sorted by stratum). From there the steps are
those of :func:`pipeline.inference.cluster_wald`: unit-norm columns, batched ``pinv`` bread, CR1
factor G/(G-1) (N-1)/(N-K) with the strata and clusters present, the test on the correlation
scale (batched ``eigh``). What the batched code does not mirror is recomputed by the scalar path
(``cluster_wald`` itself), so the statistics are today's by construction:

* a permutation in which ``cluster_wald`` would drop a column, refuse the test, return no test
  (G < 2, N <= K) or come near one of those decisions (within ``GUARD`` of its tolerance);
* an ill-conditioned X'X (``pinv`` may then cut a different singular value);
* an F within ``NEAR_OBSERVED`` (relative) of the observed one, so that the count of F* >= F
  (a tie when a permutation reproduces the observed design) is decided on the scalar value;
* an F below ``SMALL_F`` (its relative rounding error is no longer small).

The batched F agree with the scalar ones to rounding (~1e-13 relative, ``tests/test_balance_ri.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.estimation.variance import RANK_TOL

# Memory budget of one chunk of permutations (P x clusters x regressors arrays, a few of them).
CHUNK_BYTES = 100e6
# ``cluster_wald``'s default column-dropping tolerance (its ``tol``).
DROP_TOL = 1e-10
# A decision of ``cluster_wald`` (column dropped, rank refused) closer than this factor to its
# threshold is left to the scalar path.
GUARD = 1e3
# Smallest eigenvalue ratio of the unit-norm X'X computed in batch (pinv's cut-off is 1e-15).
MIN_CONDITION = 1e-9
# Batched F this close (relative) to the observed F are recomputed by the scalar path.
NEAR_OBSERVED = 1e-8
# Batched F below this are recomputed by the scalar path: the relative rounding error of F grows
# as 1/sqrt(F) (an F of ~1e-30 is rounding noise around a zero difference, which the scalar path
# and the batch do not round alike).
SMALL_F = 1e-6


@dataclass(frozen=True)
class ClusterLayout:
    """The clusters of a test's rows sorted by stratum (clusters nested in strata), as the batched
    statistics use them: arms are constant within a cluster, so each permutation's regression
    is a function of per-cluster sums (sizes, means, within-cluster scatter)."""

    clusters: np.ndarray        # the cluster codes present, sorted by stratum then first appearance
    row_position: np.ndarray    # each row's position in ``clusters``
    sizes: np.ndarray           # rows per cluster
    strata_starts: np.ndarray   # ``np.add.reduceat`` starts of the strata in ``clusters``
    strata_sizes: np.ndarray    # clusters per stratum

    @classmethod
    def of(cls, strata: np.ndarray, groups: np.ndarray) -> ClusterLayout:
        clusters, first, position = np.unique(groups, return_index=True, return_inverse=True)
        cluster_stratum = strata[first]
        if (cluster_stratum[position] != strata).any():
            raise ValueError("balance randomisation inference: a cluster spans several strata")
        order = np.lexsort((first, cluster_stratum))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        s = cluster_stratum[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        return cls(clusters[order], rank[position], np.bincount(rank[position]).astype(float), starts,
                   np.diff(np.r_[starts, len(s)]))

    def cluster_means(self, values: np.ndarray) -> np.ndarray:
        """C x k cluster means of ``values`` (n x k)."""
        sums = np.stack([np.bincount(self.row_position, weights=v, minlength=len(self.clusters))
                         for v in values.T], axis=1)
        return sums / self.sizes[:, None]

    def strata_to_clusters(self, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """P x C (x k): each cluster's stratum mean of ``values`` (P x C (x k)) weighted by
        ``weights`` (P x C; a stratum without weight gets 0)."""
        w = weights.reshape(weights.shape + (1,) * (values.ndim - 2))
        sums = np.add.reduceat(values * w, self.strata_starts, axis=1)
        total = np.add.reduceat(w, self.strata_starts, axis=1)
        return np.repeat(sums / np.maximum(total, 1), self.strata_sizes, axis=1)


def _batched_wald(gram: np.ndarray, xy: np.ndarray, scores: Callable[[np.ndarray], np.ndarray],
                  n_obs: np.ndarray, k_extra: np.ndarray, n_clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, exact) of P regressions, CR1 Wald test of all k coefficients as ``cluster_wald``, from
    X'X (P x k x k), X'y (P x k) and ``scores``: coefficients (P x k) -> cluster sums of the
    scores x_i u_i (P x G x k); ``exact`` False where the scalar path must decide (module docstring)."""
    k = gram.shape[1]
    norms = np.sqrt(np.clip(np.diagonal(gram, axis1=1, axis2=2), 0.0, None))        # P x k
    floor = DROP_TOL * np.maximum(norms.max(axis=1), 1e-300)[:, None]
    exact = (norms > GUARD * floor).all(axis=1) & (n_clusters >= 2) & (n_obs > k + k_extra)
    norms = np.where(norms > 0, norms, 1.0)
    gram = gram / (norms[:, :, None] * norms[:, None, :])       # unit-norm columns, as cluster_wald
    ev = np.linalg.eigvalsh(gram)
    exact &= ev[:, 0] > MIN_CONDITION * ev[:, -1]
    bread = np.linalg.pinv(gram)
    beta = (bread @ (xy / norms)[:, :, None])[:, :, 0]
    S = scores(beta / norms) / norms[:, None, :]
    G = n_clusters.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(exact, G / (G - 1.0) * (n_obs - 1.0) / (n_obs - (k + k_extra)), 1.0)
    V = bread @ (S.transpose(0, 2, 1) @ S) @ bread * corr[:, None, None]
    V = (V + V.transpose(0, 2, 1)) / 2.0
    finite = np.isfinite(V).all(axis=(1, 2))
    exact &= finite
    V[~finite] = np.eye(k)                    # (left to the scalar path; keeps eigh defined)
    sd = np.sqrt(np.clip(np.diagonal(V, axis1=1, axis2=2), 0.0, None))
    exact &= (sd > 0).all(axis=1)
    sd = np.where(sd > 0, sd, 1.0)
    evals, evecs = np.linalg.eigh(V / (sd[:, :, None] * sd[:, None, :]))
    exact &= evals[:, 0] > GUARD * RANK_TOL
    z = (evecs.transpose(0, 2, 1) @ (beta / sd)[:, :, None])[:, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (z ** 2 / evals).sum(axis=1) / k
    return np.where(exact, f, np.nan), exact


def covariate_f_batch(x_demeaned: np.ndarray, cluster_arms: np.ndarray, n_arms: int, layout: ClusterLayout,
                      n_strata: int) -> tuple[np.ndarray, np.ndarray]:
    """(F, exact) of ``balance._per_covariate_stat`` for each row of ``cluster_arms`` (P x all
    clusters' arm codes): x (strata-demeaned) ~ strata-demeaned dummies of arms 1..n_arms-1, CR1.
    The regressors are constant within a cluster: X'X, X'y and the score sums need only the
    clusters' sizes and sums of x."""
    codes = cluster_arms[:, layout.clusters]                                  # P x C
    P = len(codes)
    D = (codes[:, :, None] == np.arange(1, n_arms)).astype(float)
    n_c = np.broadcast_to(layout.sizes, codes.shape)
    e = D - layout.strata_to_clusters(D, n_c)                                 # X's value in each cluster
    x_sums = layout.cluster_means(x_demeaned[:, None])[:, 0] * layout.sizes
    gram = (e * n_c[:, :, None]).transpose(0, 2, 1) @ e
    xy = (e.transpose(0, 2, 1) @ x_sums[:, None])[:, :, 0]

    def scores(beta):
        return e * (x_sums - layout.sizes * (e @ beta[:, :, None])[:, :, 0])[:, :, None]

    n = layout.sizes.sum()
    return _batched_wald(gram, xy, scores, np.full(P, n), np.full(P, n_strata), np.full(P, len(layout.clusters)))


def joint_f_batch(Z: np.ndarray, cluster_arms: np.ndarray, arm: int, layout: ClusterLayout) -> tuple[np.ndarray, np.ndarray]:
    """(F, exact) of ``balance._joint_stat`` for each row of ``cluster_arms`` (P x all clusters'
    arm codes): 1{arm} ~ Z on the rows of ``arm`` or control (code 0), both demeaned within strata
    over those rows, CR1 with the strata and clusters present in them. 1{arm} is constant within a
    cluster: X'X, X'y and the score sums need the clusters' sizes, means of Z and within-cluster
    scatter of Z (``layout`` over every row of Z)."""
    codes = cluster_arms[:, layout.clusters]
    d = (codes == arm).astype(float)
    mask = d + (codes == 0)
    w = mask * layout.sizes                                                   # rows in the regression
    zbar = layout.cluster_means(Z)                                            # C x m
    dev = Z - zbar[layout.row_position]
    C, m = zbar.shape
    within = np.zeros((C, m, m))
    np.add.at(within, layout.row_position, dev[:, :, None] * dev[:, None, :])
    within_by_row = within.transpose(1, 0, 2).reshape(m, C * m)
    has_within = bool(within.any())
    e = zbar[None] - layout.strata_to_clusters(np.broadcast_to(zbar, (len(codes), C, m)), w)
    y = d - layout.strata_to_clusters(d, w)                                   # 1{arm} demeaned, per cluster
    gram = (mask @ within.reshape(C, m * m)).reshape(-1, m, m) + (e * w[:, :, None]).transpose(0, 2, 1) @ e
    xy = (e.transpose(0, 2, 1) @ (w * y)[:, :, None])[:, :, 0]

    def scores(beta):
        # sum over a cluster's rows of x_i u_i = n_c e_c (y_c - e_c'b) - W_c b (W_c: scatter of Z)
        between = e * (w * (y - np.einsum("pck,pk->pc", e, beta)))[:, :, None]
        if not has_within:                      # clusters of one row (or of identical Z rows)
            return between
        within_beta = (beta @ within_by_row).reshape(-1, C, m)               # W_c symmetric: b'W_c
        return between - mask[:, :, None] * within_beta

    strata_rows = np.add.reduceat(w, layout.strata_starts, axis=1)
    return _batched_wald(gram, xy, scores, w.sum(axis=1), (strata_rows > 0).sum(axis=1), (w > 0).sum(axis=1))


def chunk_size(n_clusters: int, k: int) -> int:
    """Permutations per chunk: about ten P x clusters x k float arrays within ``CHUNK_BYTES``."""
    return int(max(1, CHUNK_BYTES // (80 * max(n_clusters, 1) * max(k, 1))))


def permutation_f_stats(perms: np.ndarray, row_cluster: np.ndarray, f_observed: float,
                        batch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                        scalar: Callable[[np.ndarray], float], chunk: int) -> np.ndarray:
    """Every permutation's F of one test. ``perms``: P x clusters arm codes; ``batch`` maps a
    chunk of them to (F, exact); ``scalar`` maps one permutation's arm codes of the test's rows
    (``perm[row_cluster]``) to its F (the reference path, used where ``batch`` is not exact, F is
    within ``NEAR_OBSERVED`` of ``f_observed`` or below ``SMALL_F``)."""
    out = np.empty(len(perms))
    for start in range(0, len(perms), chunk):
        f, exact = batch(perms[start:start + chunk])
        redo = ~exact | (np.abs(f - f_observed) <= NEAR_OBSERVED * abs(f_observed)) | (f < SMALL_F)
        for i in np.flatnonzero(redo):
            f[i] = scalar(perms[start + i][row_cluster])
        out[start:start + len(f)] = f
    return out
