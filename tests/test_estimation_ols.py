"""pipeline.estimation.ols (and its absorb and variance modules) against statsmodels OLS/WLS with explicit fixed-effect dummies.

The reference is the plain statsmodels answer: ``sm.OLS`` / ``sm.WLS`` on [X, const, dummies]
(a full-rank set: redundant dummies removed by a pivoted QR), ``fit(cov_type="cluster",
cov_kwds={"groups": g}, use_t=True)`` or ``fit(cov_type="HC1", use_t=True)``. Everything must
agree to 1e-8 relative.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import statsmodels.api as sm

from pipeline.estimation import absorb, variance
from pipeline.estimation.ols import fe_ols, t_test

RTOL = 1e-8


# ------------------------------------------------------------------------------------------
# Simulated data
# ------------------------------------------------------------------------------------------
def make_data(seed=0):
    """Firms in clusters in strata, observed in unbalanced rounds.

    * 9 regular strata of unequal size plus one singleton stratum (one observation);
    * clusters (``cluster``) nested within strata: the cluster does not nest the FE;
    * ``district`` clusters that each contain whole strata: the cluster nests the strata FE;
    * ``crossed`` clusters unrelated to the strata;
    * rounds 1-3, unbalanced (round 3 rarer); ``region`` contains whole strata (nested FE).
    """
    rng = np.random.default_rng(seed)
    n_strata, per_stratum = 9, 5
    clusters = np.arange(n_strata * per_stratum)
    stratum_of_cluster = clusters // per_stratum
    size = rng.integers(20, 110, clusters.size)                  # unbalanced clusters
    cl = np.repeat(clusters, size)
    m = cl.size
    stratum = stratum_of_cluster[cl]
    rnd = rng.choice([1, 2, 3], size=m, p=[0.45, 0.4, 0.15])
    treat_c = (rng.permutation(clusters.size) % 2).astype(float)
    treat = treat_c[cl]
    x = rng.normal(0, 1, m) + 0.3 * stratum
    z = rng.gamma(2.0, 1.0, m)
    y = (2.0 + 0.4 * treat + 0.8 * x - 0.5 * z + 0.7 * stratum + 0.3 * rnd
         + rng.normal(0, 1, clusters.size)[cl] + rng.normal(0, 2, m))
    df = pd.DataFrame({"y": y, "treat": treat, "x": x, "z": z, "stratum": stratum, "round": rnd,
                       "cluster": cl, "district": stratum // 3, "region": stratum // 4,
                       "crossed": rng.integers(0, 37, m), "w": rng.uniform(0.3, 3.0, m)})
    # The singleton stratum: one observation in its own stratum, cluster, district.
    single = pd.DataFrame({"y": [3.0], "treat": [1.0], "x": [0.2], "z": [1.5],
                           "stratum": [n_strata], "round": [2], "cluster": [clusters.size],
                           "district": [n_strata // 3 + 1], "region": [9], "crossed": [5],
                           "w": [1.3]})
    return pd.concat([df, single], ignore_index=True)


@pytest.fixture(scope="module")
def data():
    return make_data()


# ------------------------------------------------------------------------------------------
# Reference: statsmodels with explicit dummies
# ------------------------------------------------------------------------------------------
def full_rank_dummies(df, fes):
    """const + every level's dummy of every FE, reduced to a linearly independent subset."""
    cols = [np.ones(len(df))]
    for f in fes:
        v = df[f].to_numpy()
        cols += [(v == lv).astype(float) for lv in np.unique(v)]
    D = np.column_stack(cols)
    _, R, piv = scipy.linalg.qr(D, mode="economic", pivoting=True)
    d = np.abs(np.diag(R))
    rank = int(np.sum(d > d[0] * 1e-10))
    assert rank == np.linalg.matrix_rank(D)
    return D[:, np.sort(piv[:rank])]


def reference(df, regs, fes, cluster, weights):
    D = full_rank_dummies(df, fes)
    exog = np.column_stack([df[regs].to_numpy(), D])
    y = df["y"].to_numpy()
    model = sm.OLS(y, exog) if weights is None else sm.WLS(y, exog, weights=df[weights].to_numpy())
    if cluster is None:
        res = model.fit(cov_type="HC1", use_t=True)
    else:
        groups = pd.factorize(df[cluster])[0].astype(int)
        res = model.fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    return res, D.shape[1]


def assert_same(fit, ref, k_abs, regs):
    k = len(regs)
    assert list(fit.params.index) == regs
    np.testing.assert_allclose(fit.params.to_numpy(), ref.params[:k], rtol=RTOL, atol=0)
    np.testing.assert_allclose(fit.bse.to_numpy(), ref.bse[:k], rtol=RTOL, atol=0)
    np.testing.assert_allclose(fit.tvalues.to_numpy(), ref.tvalues[:k], rtol=RTOL, atol=0)
    np.testing.assert_allclose(fit.pvalues.to_numpy(), ref.pvalues[:k], rtol=RTOL, atol=0)
    np.testing.assert_allclose(fit.cov.to_numpy(), ref.cov_params()[:k, :k], rtol=RTOL,
                               atol=RTOL * np.abs(ref.cov_params()[:k, :k]).max())
    for alpha in (0.05, 0.1):
        np.testing.assert_allclose(fit.conf_int(alpha).to_numpy(),
                                   ref.conf_int(alpha)[:k], rtol=RTOL, atol=0)
    assert fit.k_absorbed == k_abs
    assert fit.nobs == int(ref.nobs)
    assert fit.df_resid == int(ref.df_resid)
    assert fit.df_inference == int(getattr(ref, "df_resid_inference", ref.df_resid))


REGS = ["treat", "x", "z"]
FE_SETS = {
    "none": [],
    "strata": ["stratum"],
    "strata_x_round": ["stratum", "round"],       # crossed, unbalanced, singleton stratum
    "strata_region": ["stratum", "region"],       # nested FEs: several connected components
}


@pytest.mark.parametrize("weights", [None, "w"], ids=["ols", "wls"])
@pytest.mark.parametrize("cluster", ["cluster", "district", "crossed", None],
                         ids=["cl_in_strata", "cl_nests_fe", "cl_crossed", "hc1"])
@pytest.mark.parametrize("fes", list(FE_SETS), ids=list(FE_SETS))
def test_matches_statsmodels_dummies(data, fes, cluster, weights):
    fe_cols = FE_SETS[fes]
    ref, k_abs = reference(data, REGS, fe_cols, cluster, weights)
    fe = [data[c] for c in fe_cols] or None
    fit = fe_ols(data["y"], data[REGS], fe=fe, cluster=None if cluster is None else data[cluster],
                 weights=None if weights is None else data[weights])
    assert_same(fit, ref, k_abs, REGS)
    assert fit.cov_type == ("HC1" if cluster is None else "cluster")
    if cluster is not None:
        assert fit.n_clusters == data[cluster].nunique()


@pytest.mark.parametrize("vcov", ["CR1", "CR2"])
@pytest.mark.parametrize("weights", [None, "w"], ids=["ols", "wls"])
@pytest.mark.parametrize("fes", list(FE_SETS), ids=list(FE_SETS))
def test_partialled_regressors_give_the_same_fit_bit_for_bit(data, fes, weights, vcov):
    """``partialled=`` (X absorbed beforehand, as ``fit`` passes the collinearity check's rows):
    each row is partialled on its own, so every number equals the fit that absorbs X itself,
    exactly; a partialled X of the wrong shape or with three FEs is refused."""
    fe = [data[c] for c in FE_SETS[fes]] or None
    w = None if weights is None else data[weights]
    kwargs = dict(fe=fe, cluster=data["cluster"], weights=w, vcov=vcov)
    Xt, _ = absorb.absorb(data[REGS].to_numpy(), fe, w)
    plain, reused = fe_ols(data["y"], data[REGS], **kwargs), fe_ols(data["y"], data[REGS], partialled=Xt, **kwargs)
    for name in ("params", "bse", "pvalues", "df_by_param"):
        pd.testing.assert_series_equal(getattr(reused, name), getattr(plain, name), check_exact=True)
    pd.testing.assert_frame_equal(reused.cov, plain.cov, check_exact=True)
    assert (reused.k_absorbed, reused.fe_method) == (plain.k_absorbed, plain.fe_method)
    with pytest.raises(ValueError, match="partialled"):
        fe_ols(data["y"], data[REGS], partialled=Xt[:2], **kwargs)
    with pytest.raises(ValueError, match="partialled"):
        fe_ols(data["y"], data[REGS], fe=[data["stratum"], data["round"], data["region"]], partialled=Xt)


@pytest.mark.parametrize("weights", [None, "w"], ids=["ols", "wls"])
@pytest.mark.parametrize("fes", ["strata_x_round", "strata_region"])
def test_alternating_projections_match(data, fes, weights):
    fe_cols = FE_SETS[fes]
    ref, k_abs = reference(data, REGS, fe_cols, "cluster", weights)
    fit = fe_ols(data["y"], data[REGS], fe=data[fe_cols], cluster=data["cluster"],
                 weights=None if weights is None else data[weights], method="map")
    assert fit.fe_method == "map" and fit.fe_iterations >= 1
    assert_same(fit, ref, k_abs, REGS)


@pytest.mark.parametrize("fe_cols", [["stratum", "round", "crossed"],
                                     ["stratum", "round", "region"]],   # region: redundant
                         ids=["crossed", "nested"])
def test_three_fixed_effects(data, fe_cols):
    ref, k_abs = reference(data, REGS, fe_cols, "cluster", "w")
    fit = fe_ols(data["y"], data[REGS], fe=data[fe_cols], cluster=data["cluster"],
                 weights=data["w"])
    assert fit.fe_method == "map"
    assert_same(fit, ref, k_abs, REGS)


def test_sparse_solver_path(data, monkeypatch):
    """The two-FE direct path with the sparse LU (used for a large second FE)."""
    monkeypatch.setattr(absorb, "MAX_DENSE_LEVELS", 0)
    ref, k_abs = reference(data, REGS, ["stratum", "round"], "crossed", "w")
    fit = fe_ols(data["y"], data[REGS], fe=[data["stratum"], data["round"]],
                 cluster=data["crossed"], weights=data["w"])
    assert_same(fit, ref, k_abs, REGS)


def test_input_forms(data):
    """Arrays instead of frames, arbitrary (non-dense, string) codes, fe as one array."""
    ref, k_abs = reference(data, REGS, ["stratum"], "cluster", None)
    labels = np.array([f"s{v * 7 + 100}" for v in data["stratum"]], dtype=object)
    fit = fe_ols(data["y"].to_numpy(), data[REGS].to_numpy(), fe=labels,
                 cluster=data["cluster"].to_numpy() * 13 + 5)
    assert list(fit.params.index) == ["x1", "x2", "x3"]
    fit.params.index = fit.bse.index = fit.tvalues.index = fit.pvalues.index = REGS
    np.testing.assert_allclose(fit.params.to_numpy(), ref.params[:3], rtol=RTOL)
    np.testing.assert_allclose(fit.bse.to_numpy(), ref.bse[:3], rtol=RTOL)
    assert fit.k_absorbed == k_abs == data["stratum"].nunique()


def test_two_fe_dof_count(data):
    """k_absorbed = L1 + L2 - connected components (intercept included) = rank of dummies."""
    n_strata, n_rounds, n_regions = (data[c].nunique() for c in ("stratum", "round", "region"))
    assert (n_strata, n_rounds, n_regions) == (10, 3, 4)
    cases = {("stratum", "round"): n_strata + n_rounds - 1,          # one connected component
             ("stratum", "region"): n_strata + n_regions - n_regions}  # one per region
    for fes, expected in cases.items():
        fit = fe_ols(data["y"], data[["treat", "x"]], fe=data[list(fes)])
        assert fit.k_absorbed == expected == full_rank_dummies(data, fes).shape[1]


@pytest.mark.parametrize("cluster", ["cluster", None])
@pytest.mark.parametrize("weights", [None, "w"])
def test_t_test_linear_combination(data, cluster, weights):
    ref, _ = reference(data, REGS, ["stratum", "round"], cluster, weights)
    fit = fe_ols(data["y"], data[REGS], fe=data[["stratum", "round"]],
                 cluster=None if cluster is None else data[cluster],
                 weights=None if weights is None else data[weights])
    contrast = {"treat": 1.0, "x": -2.0, "z": 0.5}
    r = np.zeros((1, ref.params.size))
    r[0, :3] = [1.0, -2.0, 0.5]
    tt = ref.t_test(r)
    for alpha in (0.05, 0.1):
        got = t_test(fit, contrast, alpha=alpha)
        lo, hi = np.asarray(tt.conf_int(alpha=alpha)).ravel()
        expected = [float(np.squeeze(tt.effect)), float(np.squeeze(tt.sd)),
                    float(np.squeeze(tt.tvalue)), float(np.squeeze(tt.pvalue)), lo, hi]
        np.testing.assert_allclose(list(got), expected, rtol=RTOL, atol=0)
    assert got.estimate == got[0]


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["y", "x", "stratum", "cluster", "w"])
def test_nan_inputs_raise(data, column):
    d = data.copy()
    d[column] = d[column].astype(float)
    d.loc[5, column] = np.nan
    with pytest.raises(ValueError, match="missing"):
        fe_ols(d["y"], d[["treat", "x"]], fe=[d["stratum"]], cluster=d["cluster"],
               weights=d["w"])


def test_infinite_and_bad_weights(data):
    d = data.copy()
    d.loc[3, "x"] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        fe_ols(d["y"], d[["x"]])
    w = data["w"].copy()
    w.iloc[0] = 0.0
    with pytest.raises(ValueError, match="positive"):
        fe_ols(data["y"], data[["x"]], weights=w)


def test_collinear_regressors_raise(data):
    d = data.copy()
    d["x2"] = 2.0 * d["x"] - d["z"]
    d["x3"] = 2.0 * d["x"] - d["z"] + 1.0            # collinear once the intercept is absorbed
    d["stratum_level"] = d["stratum"] * 0.5 + 1.0     # constant within strata
    d["zero"] = 0.0
    with pytest.raises(ValueError, match="'x2' is collinear"):
        fe_ols(d["y"], d[["x", "z", "x2"]], fe=[d["stratum"]], cluster=d["cluster"])
    with pytest.raises(ValueError, match="'x3' is collinear"):
        fe_ols(d["y"], d[["x", "z", "x3"]], cluster=d["cluster"])
    with pytest.raises(ValueError, match="'stratum_level' is collinear"):
        fe_ols(d["y"], d[["x", "stratum_level"]], fe=[d["stratum"]])
    with pytest.raises(ValueError, match="'zero' is all zero"):
        fe_ols(d["y"], d[["x", "zero"]])


def test_too_few_clusters_raise(data):
    with pytest.raises(ValueError, match="too few clusters: 1"):
        fe_ols(data["y"], data[["x"]], fe=[data["stratum"]], cluster=np.zeros(len(data)))


def test_shape_errors(data):
    with pytest.raises(ValueError, match="rows, expected"):
        fe_ols(data["y"], data[["x"]], fe=[data["stratum"].iloc[:-1]])
    with pytest.raises(ValueError, match="rows, expected"):
        fe_ols(data["y"], data[["x"]].iloc[:-1])
    with pytest.raises(ValueError, match="no residual degrees of freedom"):
        fe_ols(data["y"].iloc[:4], data[["x", "z"]].iloc[:4], fe=[np.arange(4) % 2])
    with pytest.raises(ValueError, match="method"):
        fe_ols(data["y"], data[["x"]], method="lsmr")


def test_map_max_iterations_raise(data):
    with pytest.raises(RuntimeError, match="did not converge"):
        fe_ols(data["y"], data[["x"]], fe=[data["stratum"], data["round"]], method="map",
               maxiter=1)


def test_t_test_errors(data):
    fit = fe_ols(data["y"], data[["x", "z"]], fe=[data["stratum"]], cluster=data["cluster"])
    with pytest.raises(KeyError, match="not a parameter"):
        t_test(fit, {"nope": 1.0})
    with pytest.raises(ValueError, match="non-empty"):
        t_test(fit, {})


# ------------------------------------------------------------------------------------------
# CR3: cluster jackknife against explicit leave-one-cluster-out statsmodels refits
# ------------------------------------------------------------------------------------------
def jackknife_reference(df, regs, fes, cluster, weights):
    """(G-1)/G sum_g (b_(g) - b)(b_(g) - b)' with every b_(g) from statsmodels OLS/WLS with
    explicit (full-rank) dummies on the data without cluster g."""
    def coefs(d):
        exog = np.column_stack([d[regs].to_numpy(), full_rank_dummies(d, fes)])
        y = d["y"].to_numpy()
        m = sm.OLS(y, exog) if weights is None else sm.WLS(y, exog, weights=d[weights].to_numpy())
        return m.fit().params[:len(regs)]
    b = coefs(df)
    levels = df[cluster].unique()
    dev = np.array([coefs(df[df[cluster] != g].reset_index(drop=True)) - b for g in levels])
    G = len(levels)
    return b, (G - 1) / G * dev.T @ dev, G


@pytest.mark.parametrize("dense", [True, False], ids=["downdate", "refits"])
@pytest.mark.parametrize("weights", [None, "w"], ids=["ols", "wls"])
@pytest.mark.parametrize("cluster,fes", [
    pytest.param("cluster", "strata_x_round", id="cl_in_strata"),
    pytest.param("district", "strata", id="cl_nests_fe"),
    pytest.param("crossed", "strata_x_round", id="cl_crossed", marks=pytest.mark.slow),
    pytest.param("cluster", "none", id="no_fe")])
def test_cr3_matches_leave_one_cluster_out_refits(data, cluster, fes, weights, dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(variance, "MAX_DENSE_DUMMIES", 0)
    # every third cluster (15 of 45) and the singleton: a stratum present in one cluster only
    data = data[(data["cluster"] % 3 == 0) | (data["stratum"] == data["stratum"].max())]
    data = data.reset_index(drop=True)
    fe_cols = FE_SETS[fes]
    b, V, G = jackknife_reference(data, REGS, fe_cols, cluster, weights)
    fit = fe_ols(data["y"], data[REGS], fe=[data[c] for c in fe_cols] or None,
                 cluster=data[cluster], weights=None if weights is None else data[weights],
                 vcov="CR3")
    assert fit.cov_type == "CR3" and fit.df_inference == G - 1
    np.testing.assert_allclose(fit.params.to_numpy(), b, rtol=RTOL)
    np.testing.assert_allclose(fit.cov.to_numpy(), V, rtol=1e-7, atol=1e-7 * np.abs(V).max())
    np.testing.assert_allclose(fit.bse.to_numpy(), np.sqrt(np.diag(V)), rtol=1e-7)
    from scipy import stats
    np.testing.assert_allclose(fit.pvalues.to_numpy(),
                               2 * stats.t.sf(np.abs(b / np.sqrt(np.diag(V))), G - 1), rtol=1e-6)
    # CR1 of the same fit is unchanged by the option
    cr1 = fe_ols(data["y"], data[REGS], fe=[data[c] for c in fe_cols] or None,
                 cluster=data[cluster], weights=None if weights is None else data[weights])
    assert cr1.cov_type == "cluster"
    np.testing.assert_allclose(cr1.params.to_numpy(), fit.params.to_numpy(), rtol=1e-12)


def test_cr3_errors(data):
    with pytest.raises(ValueError, match="vcov must be"):
        fe_ols(data["y"], data[REGS], cluster=data["cluster"], vcov="CR4")
    for v in ("CR2", "CR3"):
        with pytest.raises(ValueError, match="needs cluster"):
            fe_ols(data["y"], data[REGS], vcov=v)
    # a regressor that only varies in one cluster is not identified without it
    d = data.assign(only=(data["cluster"] == 3).astype(float) * data["x"])
    with pytest.raises(ValueError, match="CR3"):
        fe_ols(d["y"], d[["treat", "only"]], cluster=d["cluster"], vcov="CR3")


@pytest.mark.parametrize("weights", [None, "w"], ids=["ols", "wls"])
@pytest.mark.parametrize("cluster,fes", [("cluster", "strata_x_round"), ("district", "strata"),
                                         ("cluster", "none")],
                         ids=["cl_in_strata", "cl_nests_fe", "no_fe"])
def test_cr2_matches_bell_mccaffrey_with_dummies(data, cluster, fes, weights):
    """CR2 against the textbook formula on [X, full-rank dummies] in the sqrt(w) metric, with
    (I - H_gg)^-1/2 from an eigendecomposition (pseudo-inverse square root where I - H_gg is
    singular, e.g. the singleton stratum)."""
    data = data[(data["cluster"] % 3 == 0) | (data["stratum"] == data["stratum"].max())]
    data = data.reset_index(drop=True)
    fe_cols = FE_SETS[fes]
    w = np.ones(len(data)) if weights is None else data[weights].to_numpy()
    Xs = np.column_stack([data[REGS].to_numpy(), full_rank_dummies(data, fe_cols)]) * np.sqrt(w)[:, None]
    ys = data["y"].to_numpy() * np.sqrt(w)
    B = np.linalg.inv(Xs.T @ Xs)
    u = ys - Xs @ (B @ Xs.T @ ys)
    meat = np.zeros((Xs.shape[1],) * 2)
    for g in data[cluster].unique():
        m = (data[cluster] == g).to_numpy()
        ev, vec = np.linalg.eigh(np.eye(m.sum()) - Xs[m] @ B @ Xs[m].T)
        isq = np.where(ev > 1e-10, 1 / np.sqrt(np.clip(ev, 1e-10, None)), 0.0)
        s = Xs[m].T @ (vec @ np.diag(isq) @ vec.T) @ u[m]
        meat += np.outer(s, s)
    V = (B @ meat @ B)[:3, :3]
    fit = fe_ols(data["y"], data[REGS], fe=[data[c] for c in fe_cols] or None,
                 cluster=data[cluster], weights=None if weights is None else data[weights],
                 vcov="CR2")
    assert fit.cov_type == "CR2" and fit.df_inference == data[cluster].nunique() - 1
    np.testing.assert_allclose(fit.cov.to_numpy(), V, rtol=1e-7, atol=1e-7 * np.abs(V).max())


def test_two_way_projector_cache_gives_the_uncached_numbers_and_never_a_stale_one(monkeypatch):
    """The two-way projection's setup is cached by a digest of the codes and weights: a cached
    projector gives bit-identical columns, and codes of the same length and levels but another
    pattern (or other weights) get their own projector, not the last one."""
    rng = np.random.default_rng(3)
    n, L1, L2 = 400, 30, 4
    f1, f2 = rng.integers(0, L1, n), rng.integers(0, L2, n)
    other = rng.permutation(f2)                       # same length, levels and counts; other pairs
    w = rng.uniform(0.5, 2.0, n)
    Z = rng.normal(size=(n, 3))

    def fresh(fe, weights):
        absorb._PROJECTOR_CACHE.clear()
        return absorb.absorb(Z, fe, weights)[0]

    expected = {name: fresh(fe, wt) for name, (fe, wt) in
                {"a": ([f1, f2], None), "b": ([f1, other], None), "c": ([f1, f2], w)}.items()}
    absorb._PROJECTOR_CACHE.clear()
    for _ in range(2):                                # second round: every projector from the cache
        for name, (fe, wt) in {"a": ([f1, f2], None), "b": ([f1, other], None), "c": ([f1, f2], w)}.items():
            np.testing.assert_array_equal(absorb.absorb(Z, fe, wt)[0], expected[name])
    assert len(absorb._PROJECTOR_CACHE) == 3
    assert not np.array_equal(expected["a"], expected["b"]) and not np.array_equal(expected["a"], expected["c"])
    monkeypatch.setattr(absorb, "_PROJECTOR_CACHE_SIZE", 1)       # a new pattern evicts the oldest
    absorb.absorb(Z, [f1, rng.permutation(f2)], None)
    assert len(absorb._PROJECTOR_CACHE) == 1
    with pytest.raises(ValueError, match="infs or NaNs"):
        absorb.absorb(np.where(np.arange(n)[:, None] == 5, np.nan, Z), [f1, f2], None)
