"""Wild cluster restricted bootstrap (WCR) p-values for few clusters.

With 20-50 randomised villages or markets, cluster-robust t-tests over-reject; the wild cluster
bootstrap with the null imposed (Cameron, Gelbach & Miller 2008; MacKinnon & Webb 2017; the
"WCR-C" of MacKinnon, Nielsen & Webb 2023) is the field's remedy. For H0: r'beta = 0 in

    y = X beta + D gamma + u        (D: absorbed fixed effects, clustered errors, optional weights)

the restricted fit (beta~, residuals u~) gives bootstrap samples y*_b = X beta~ + D gamma~ + v_bg u~
(one weight v_bg per cluster g); each is refitted with the fixed effects and the CR1 t-statistic of
r'beta is recomputed. The p-value is the share of |t*_b| above |t| (two-sided, symmetric; the
convention of the ``wildboottest`` package, which the tests use as reference).

Nothing is refitted in a loop: everything is linear in v (Roodman, MacKinnon, Nielsen & Webb 2019,
"Fast and wild"). With every variable partialled off the fixed effects (M_D),

    r'beta*_b = v_b . a,            a_g   = q X_g' u~_g,       q = r'(X'X)^-1
    score*_gb = sum_h v_bh Q_gh,    Q_gh  = q X_g' (M_X M_D u~^(h))_g

where u~^(h) is u~ on cluster h's rows and zero elsewhere. The M_D term makes the result exact
when the fixed effects are not nested in the clusters (round fixed effects): identical to refitting
with explicit dummies (tests/test_estimation_wild.py checks both against a brute-force refit).
The cost is G demeaning passes and B x G x G flops, a fraction of a second for G <= 100.

Weights: Rademacher (+-1) or Webb's six-point distribution (+-sqrt(1/2), +-1, +-sqrt(3/2)), which
has more distinct draws when G is small; ``auto`` picks Webb at or below ``WEBB_MAX_CLUSTERS``.
With Rademacher weights and 2^G <= reps every sign vector is enumerated once (exact, no seed).
Small-sample factors (G/(G-1), (n-1)/(n-K)) cancel between t and t* and are not applied.
"""
from __future__ import annotations

import functools
import itertools
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.estimation.absorb import absorb

WEIGHT_TYPES = ("rademacher", "webb", "auto")
WEBB_MAX_CLUSTERS = 12          # METHODS.md: Webb's weights below about 12 clusters
TIE_TOL = 1e-9
_WEBB = np.array([-np.sqrt(1.5), -1.0, -np.sqrt(0.5), np.sqrt(0.5), 1.0, np.sqrt(1.5)])


@dataclass(frozen=True)
class WildTest:
    """One WCR test of r'beta = 0."""
    p_value: float
    t_stat: float            # without small-sample factors (they cancel in the p-value)
    n_clusters: int
    weight_type: str
    reps: int                # bootstrap samples used (2^G when enumerated)
    enumerated: bool


def resolve_weight_type(weight_type: str, n_clusters: int) -> str:
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"wild bootstrap weights must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    if weight_type == "auto":
        return "webb" if n_clusters <= WEBB_MAX_CLUSTERS else "rademacher"
    return weight_type


def draw_weights(weight_type: str, n_clusters: int, reps: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, bool]:
    """(reps x G weights, enumerated?). Rademacher with 2^G <= reps: all 2^G sign vectors."""
    if weight_type == "rademacher" and 2 ** n_clusters <= reps:
        return np.array(list(itertools.product([-1.0, 1.0], repeat=n_clusters))), True
    if weight_type == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(reps, n_clusters)), False
    if weight_type == "webb":
        return rng.choice(_WEBB, size=(reps, n_clusters)), False
    raise ValueError(f"unknown weight type {weight_type!r}")


def _partial_out(Z: np.ndarray, fe, w: np.ndarray | None) -> np.ndarray:
    """Columns of Z (n x m) off the fixed effects and the intercept, in the sqrt(w)-scaled space."""
    if w is None:
        return absorb(Z, fe, None)[0].T
    root = np.sqrt(w)
    return absorb(Z / root[:, None], fe, w)[0].T * root[:, None]


def wild_cluster_test(y, X, groups, restriction, *, value: float = 0.0, fe=None, weights=None,
                      reps: int = 9999, weight_type: str = "auto",
                      seed: np.random.SeedSequence | int | None = None,
                      partialled: PartialledDesign | None = None) -> WildTest:
    """WCR bootstrap test of ``restriction . beta = value``.

    ``X``: (n, k) regressors without constant or fixed-effect dummies; ``fe``: fixed-effect codes as
    for :func:`pipeline.estimation.ols.fe_ols` (the intercept is always absorbed); ``groups``: cluster of
    each row; ``weights``: regression weights or None; ``restriction``: length-k vector r.
    ``partialled``: :func:`partial_design` of the same arguments with ``groups`` as
    :func:`cluster_codes` numbers them, made once for several tests.
    """
    g = cluster_codes(groups)
    n_clusters = int(g.max()) + 1
    if partialled is not None and not np.array_equal(partialled.g, g):
        raise ValueError("the partialled design numbers the clusters otherwise: make it from cluster_codes(groups)")
    kind = resolve_weight_type(weight_type, n_clusters)
    V, enumerated = draw_weights(kind, n_clusters, int(reps), np.random.default_rng(seed))
    t_stat, t_boot = bootstrap_t(y, X, g, restriction, V, value=value, fe=fe, weights=weights,
                                 partialled=partialled)
    # |t*| > |t|; within rounding of |t| counts as a tie (the all-ones draw reproduces t exactly)
    p_value = float(np.mean(np.abs(t_boot) > abs(t_stat) * (1 + TIE_TOL)))
    return WildTest(p_value=p_value, t_stat=t_stat, n_clusters=n_clusters, weight_type=kind,
                    reps=int(V.shape[0]), enumerated=enumerated)


def cluster_codes(groups) -> np.ndarray:
    """Clusters numbered 0..G-1 by first appearance, not sorted: the weights drawn for cluster j must
    not follow the order of salted-hash cluster ids (issue 8), only the analysis table's row order."""
    return pd.factorize(np.asarray(groups), sort=False)[0]


@dataclass(frozen=True)
class PartialledDesign:
    """What every test of one design shares: the sqrt(w)-scaled outcome and regressors with the
    fixed effects partialled out, (Xd'Xd)^-1 and the clusters (numbered in sorted order)."""

    yd: np.ndarray
    Xd: np.ndarray
    A: np.ndarray
    g: np.ndarray
    n_clusters: int
    fe: object
    w: np.ndarray | None


def partial_design(y, X, groups, *, fe=None, weights=None) -> PartialledDesign:
    """The shared part of :func:`bootstrap_t` for a design (checked here)."""
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    X = X[:, None] if X.ndim == 1 else X
    n = X.shape[0]
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError("weights must be positive and finite")
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    G = int(g.max()) + 1
    if G < 2:
        raise ValueError("the wild cluster bootstrap needs at least 2 clusters")
    root = np.ones(n) if w is None else np.sqrt(w)
    Zd = _partial_out(np.column_stack([y, X]) * root[:, None], fe, w)   # sqrt(w)-scaled, FE partialled out
    yd, Xd = Zd[:, 0], Zd[:, 1:]
    return PartialledDesign(yd, Xd, np.linalg.inv(Xd.T @ Xd), g, G, fe, w)


def bootstrap_t(y, X, groups, restriction, V: np.ndarray, *, value: float = 0.0, fe=None, weights=None,
                partialled: PartialledDesign | None = None) -> tuple[float, np.ndarray]:
    """(t, t*_b for each row of V): the CR1 t-statistic of r'beta - value (no small-sample factor)
    on the data and on each bootstrap sample y*_b = restricted fit + V[b, g] * restricted residual
    (the restricted fit imposes r'beta = value). ``partialled``: :func:`partial_design` of the
    same ``y, X, groups, fe, weights``."""
    d = partialled or partial_design(y, X, groups, fe=fe, weights=weights)
    yd, Xd, A, g, G, n = d.yd, d.Xd, d.A, d.g, d.n_clusters, d.Xd.shape[0]
    k = Xd.shape[1]
    r = np.asarray(restriction, dtype=np.float64)
    if r.shape != (k,) or not np.any(r):
        raise ValueError(f"restriction must be a non-zero vector of length {k}, got shape {r.shape}")
    if V.shape[1] != G:
        raise ValueError(f"V has {V.shape[1]} columns for {G} clusters")

    beta = A @ (Xd.T @ yd)
    q = r @ A
    z = Xd @ q                                                  # q X_i' for every row i
    u_hat = yd - Xd @ beta
    t_stat = float((r @ beta - value) / np.sqrt(np.sum(np.bincount(g, weights=z * u_hat, minlength=G) ** 2)))

    beta_r = beta - A @ r * (r @ beta - value) / (r @ A @ r)   # restricted: r'beta = value
    u_r = yd - Xd @ beta_r
    a = np.bincount(g, weights=z * u_r, minlength=G)            # numerators r'beta*_b - value: V @ a

    # E = M_D U, U[:, h] = u~ on cluster h's rows; F = M_X E; Q[g, h] = sum_{i in g} z_i F[i, h]
    U = np.zeros((n, G))
    U[np.arange(n), g] = u_r
    E = _partial_out(U, d.fe, d.w)
    F = E - Xd @ (A @ (Xd.T @ E))
    Q = np.zeros((G, G))
    np.add.at(Q, g, z[:, None] * F)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_boot = (V @ a) / np.sqrt(np.sum((V @ Q.T) ** 2, axis=1))
    return t_stat, t_boot


# --------------------------------------------------------------------------------------------
# The estimate stage's use: settings, the refit design, one p-value per tidy term
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WildDesign:
    """What the wild cluster bootstrap refits: outcome, regressors (named as the parameters),
    fixed-effect codes to absorb, clusters and weights of the estimation sample."""

    y: np.ndarray
    X: pd.DataFrame
    fe: list | None
    groups: np.ndarray | None
    weights: np.ndarray | None

    @functools.cached_property
    def partialled(self) -> PartialledDesign:
        """:func:`partial_design` of this design, made once for all its tests."""
        return partial_design(self.y, self.X.to_numpy(), cluster_codes(self.groups), fe=self.fe,
                              weights=self.weights)


@dataclass(frozen=True)
class WildSettings:
    """The ``estimate.wild_bootstrap_*`` keys: WCR p-values (pipeline.wild_bootstrap) for every
    term of a model whose estimation sample has fewer than ``below_clusters`` clusters."""

    below_clusters: int
    reps: int
    weights: str
    seed: int

    def applies(self, n_clusters: int | None) -> bool:
        return n_clusters is not None and 2 <= n_clusters < self.below_clusters


def wild_settings(stage: dict) -> WildSettings:
    """The wild bootstrap settings from the resolved stage keys (checked here, once)."""
    weights = stage["wild_bootstrap_weights"]
    if weights not in WEIGHT_TYPES:
        raise ValueError(f"estimate.wild_bootstrap_weights must be one of {WEIGHT_TYPES}, "
                         f"got {weights!r}")
    below, reps = int(stage["wild_bootstrap_below_clusters"]), int(stage["wild_bootstrap_reps"])
    if below < 0 or reps < 99:
        raise ValueError("estimate.wild_bootstrap_below_clusters must be >= 0 and wild_bootstrap_reps >= 99")
    return WildSettings(below_clusters=below, reps=reps, weights=weights, seed=int(stage["seed"]))


def restriction_vector(design: WildDesign, td) -> np.ndarray:
    """The restriction ``r`` of a tidy term (``td.weights``: (parameter, weight) pairs) over the
    design's regressors, in their order."""
    names = list(design.X.columns)
    restriction = np.zeros(len(names))
    for param, weight in td.weights:
        restriction[names.index(param)] = weight
    return restriction


def wild_p_value(results, td, wild: WildSettings, key: str) -> float:
    """WCR bootstrap p-value of one tidy term; the seed is keyed by the term (order-free)."""
    design: WildDesign = results.wild_design
    restriction = restriction_vector(design, td)
    seed = np.random.SeedSequence([wild.seed, zlib.crc32(key.encode("utf-8"))])
    return wild_cluster_test(design.y, design.X.to_numpy(), design.groups, restriction,
                             fe=design.fe, weights=design.weights, reps=wild.reps,
                             weight_type=wild.weights, seed=seed, partialled=design.partialled).p_value
