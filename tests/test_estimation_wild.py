"""The wild cluster restricted bootstrap against two independent references: a brute-force refit of
every bootstrap sample with explicit fixed-effect dummies, and the ``wildboottest`` package."""
import numpy as np
import pandas as pd
import pytest

from pipeline.estimation import wild as wb


def panel(n_clusters=12, per_cluster=25, seed=0, weights=False):
    """Firms in markets (clusters), strata crossing markets and rounds crossing everything, a
    cluster-level treatment and cluster-correlated, heteroskedastic errors."""
    rng = np.random.default_rng(seed)
    n = n_clusters * per_cluster
    market = np.repeat(np.arange(n_clusters), per_cluster)
    stratum = rng.integers(0, 3, n)                       # not nested in markets
    rnd = np.tile(np.arange(per_cluster) % 3, n_clusters)  # rounds, not nested either
    treat = (market % 2).astype(float)
    x = rng.normal(size=n)
    u = rng.normal(size=n_clusters)[market] * 2 + rng.normal(size=n) * (1 + treat)
    y = 0.3 * treat + 0.5 * x + 0.2 * stratum + 0.1 * rnd + u
    w = rng.uniform(0.5, 2.0, n) if weights else None
    return y, np.column_stack([treat, x]), market, [stratum, rnd], w


def brute_force_t(y, X, groups, r, V, fe, w, value=0.0):
    """Refit each bootstrap sample by least squares with a constant and explicit FE dummies."""
    dummies = [pd.get_dummies(codes, drop_first=True, dtype=float).to_numpy() for codes in (fe or [])]
    D = np.column_stack([np.ones(len(y)), *dummies])
    full = np.column_stack([X, D])
    k = X.shape[1]
    root = np.ones(len(y)) if w is None else np.sqrt(w)
    R = np.concatenate([r, np.zeros(D.shape[1])])

    def t_of(yy):
        Xw, yw = full * root[:, None], yy * root
        A = np.linalg.pinv(Xw.T @ Xw)
        beta = A @ Xw.T @ yw
        resid = yw - Xw @ beta
        scores = np.array([Xw[groups == c].T @ resid[groups == c] for c in np.unique(groups)])
        return (R @ beta - value) / np.sqrt(R @ A @ (scores.T @ scores) @ A @ R)

    # restricted fit: drop the restricted direction (r is a unit vector or a contrast of two terms)
    Xw, yw = full * root[:, None], y * root
    A = np.linalg.pinv(Xw.T @ Xw)
    beta = A @ Xw.T @ yw
    beta_r = beta - A @ R * (R @ beta - value) / (R @ A @ R)
    fitted, resid = full @ beta_r, y - full @ beta_r
    _, g = np.unique(groups, return_inverse=True)
    assert k == len(r)
    return t_of(y), np.array([t_of(fitted + resid * v[g]) for v in V])


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("restriction,value", [([1.0, 0.0], 0.0), ([1.0, -1.0], 0.0), ([1.0, 0.0], 0.3)])
def test_fast_algebra_equals_refitting_with_dummies(weights, restriction, value):
    y, X, market, fe, w = panel(weights=weights)
    V = np.random.default_rng(1).choice([-1.0, 1.0], size=(60, 12))
    t, t_boot = wb.bootstrap_t(y, X, market, restriction, V, value=value, fe=fe, weights=w)
    t_ref, t_boot_ref = brute_force_t(y, X, market, np.array(restriction), V, fe, w, value)
    assert t == pytest.approx(t_ref, rel=1e-9)
    np.testing.assert_allclose(t_boot, t_boot_ref, rtol=1e-8)


def _reference(y, X, market, reps, weights_type, seed):
    """wildboottest 0.3.2 on the same model (constant as a column, no fixed effects)."""
    from wildboottest.wildboottest import WildboottestCL
    design = np.column_stack([np.ones(len(y)), X])
    boot = WildboottestCL(X=design, Y=y, cluster=market, R=np.array([0.0, 1.0, 0.0]), B=reps, seed=seed,
                          parallel=False)
    boot.get_scores(bootstrap_type="11", impose_null=True)
    boot.get_weights(weights_type=weights_type)
    boot.get_numer()
    boot.get_denom()
    boot.get_tboot()
    boot.get_vcov()
    boot.get_tstat()
    boot.get_pvalue(pval_type="two-tailed")
    return boot


def test_enumerated_rademacher_p_value_equals_wildboottest():
    """G = 10: 2^10 = 1024 sign vectors, enumerated by both: the p-values are the same number."""
    pytest.importorskip("wildboottest")
    y, X, market, _, _ = panel(n_clusters=10, seed=3)
    ours = wb.wild_cluster_test(y, X, market, [1.0, 0.0], reps=9999, weight_type="rademacher")
    ref = _reference(y, X, market, 9999, "rademacher", seed=1)
    assert ours.enumerated and ours.reps == 1024 and ref.B == 1024
    assert ours.p_value == pytest.approx(float(ref.pvalue), abs=1e-12)
    # the bootstrap distributions agree up to the small-sample factor (applied to t and t* alike)
    t, t_boot = wb.bootstrap_t(y, X, market, [1.0, 0.0], wb.draw_weights("rademacher", 10, 9999, None)[0])
    np.testing.assert_allclose(np.sort(np.abs(t_boot)) / abs(t),
                               np.sort(np.abs(np.ravel(ref.t_boot))) / abs(float(np.ravel(ref.t_stat)[0])), rtol=1e-8)


def test_webb_p_value_agrees_with_wildboottest_within_monte_carlo_error():
    pytest.importorskip("wildboottest")
    y, X, market, _, _ = panel(n_clusters=9, seed=5)
    reps = 19999
    ours = wb.wild_cluster_test(y, X, market, [1.0, 0.0], reps=reps, weight_type="webb", seed=11)
    ref = _reference(y, X, market, reps, "webb", seed=12)
    p = 0.5 * (ours.p_value + float(ref.pvalue))
    assert 0.01 < p < 0.99                          # an informative case, not a corner
    assert abs(ours.p_value - float(ref.pvalue)) < 4 * np.sqrt(2 * p * (1 - p) / reps)


def test_auto_weights_seeds_and_errors():
    assert wb.resolve_weight_type("auto", 12) == "webb" and wb.resolve_weight_type("auto", 13) == "rademacher"
    y, X, market, fe, _ = panel(n_clusters=20, seed=2)
    a = wb.wild_cluster_test(y, X, market, [1.0, 0.0], fe=fe, reps=999, seed=np.random.SeedSequence(7))
    b = wb.wild_cluster_test(y, X, market, [1.0, 0.0], fe=fe, reps=999, seed=np.random.SeedSequence(7))
    assert a == b and not a.enumerated and a.reps == 999 and a.weight_type == "rademacher"
    with pytest.raises(ValueError, match="weights must be one of"):
        wb.wild_cluster_test(y, X, market, [1.0, 0.0], weight_type="mammen")
    with pytest.raises(ValueError, match="at least 2 clusters"):
        wb.wild_cluster_test(y, X, np.zeros(len(y)), [1.0, 0.0])


def test_size_with_few_clusters_is_close_to_nominal():
    """Under H0 with 10 clusters (5 treated, cluster-specific error variances) the WCR test
    rejects about 5% of the time (Monte Carlo: 400 data sets; bound of 3 Monte Carlo SEs)."""
    sims, G, m = 400, 10, 30
    cluster = np.repeat(np.arange(G), m)
    treat = (cluster < 5).astype(float)
    rejections = 0
    for s in range(sims):
        rng = np.random.default_rng(100 + s)
        scale = rng.exponential(size=G)[cluster]
        y = rng.normal(size=G)[cluster] + rng.normal(size=G * m) * (1 + scale)
        test = wb.wild_cluster_test(y, treat, cluster, [1.0], reps=999, weight_type="webb",
                                    seed=np.random.SeedSequence([7, s]))
        rejections += test.p_value < 0.05
    assert abs(rejections / sims - 0.05) < 3 * np.sqrt(0.05 * 0.95 / sims), rejections / sims


def test_p_value_does_not_depend_on_the_hash_salt_of_cluster_ids():
    """Cluster ids pseudonymised with two salts sort differently; the bootstrap weights must attach
    to clusters in the same (row) order, so the p-value is exactly the same (issue 8)."""
    from pipeline.privacy import salted_hash
    y, X, market, fe, _ = panel(n_clusters=16, seed=5)
    ids = pd.Series([f"market {m}" for m in market])
    first, second = (salted_hash(ids, salt).to_numpy() for salt in ("one salt", "another salt"))
    assert list(pd.unique(np.sort(first))) != list(pd.unique(np.sort(second)))   # different sorted orders
    tests = [wb.wild_cluster_test(y, X, g, [1.0, 0.0], fe=fe, reps=999, weight_type="rademacher",
                                  seed=np.random.SeedSequence(3)) for g in (first, second, market)]
    assert tests[0] == tests[1] == tests[2]


@pytest.mark.parametrize("weights", [False, True])
def test_one_partialled_design_serves_every_test_with_the_same_numbers(weights):
    """partial_design (the outcome and regressors off the fixed effects, made once per design) gives
    each test's t and bootstrap t bit for bit as the test computing it itself; WildDesign keeps one."""
    y, X, market, fe, w = panel(weights=weights)
    V = np.random.default_rng(2).choice([-1.0, 1.0], size=(40, 12))
    shared = wb.partial_design(y, X, market, fe=fe, weights=w)
    for restriction, value in (([1.0, 0.0], 0.0), ([0.0, 1.0], 0.5), ([1.0, -1.0], 0.0)):
        alone = wb.bootstrap_t(y, X, market, restriction, V, value=value, fe=fe, weights=w)
        reused = wb.bootstrap_t(y, X, market, restriction, V, value=value, fe=fe, weights=w, partialled=shared)
        assert alone[0] == reused[0]
        np.testing.assert_array_equal(alone[1], reused[1])
    design = wb.WildDesign(y, pd.DataFrame(X, columns=["treat", "x"]), fe, market, w)
    assert design.partialled is design.partialled
    np.testing.assert_array_equal(design.partialled.Xd, shared.Xd)


def test_a_shared_design_gives_each_wild_test_its_own_p_value_whatever_the_cluster_order():
    """wild_cluster_test with WildDesign.partialled equals the test alone, bit for bit, on rows whose
    clusters appear in another order than sorted (the weights follow the order of appearance); a
    partialled design numbering the clusters otherwise is refused."""
    y, X, market, fe, _ = panel(n_clusters=10, seed=4)
    order = np.random.default_rng(5).permutation(len(y))
    y, X, market, fe = y[order], X[order], market[order], [f[order] for f in fe]
    assert not np.array_equal(wb.cluster_codes(market), np.unique(market, return_inverse=True)[1])
    design = wb.WildDesign(y, pd.DataFrame(X, columns=["treat", "x"]), fe, market, None)
    for restriction, value in (([1.0, 0.0], 0.0), ([1.0, -1.0], 0.2)):
        kwargs = dict(value=value, fe=fe, reps=199, weight_type="webb", seed=11)
        alone = wb.wild_cluster_test(y, X, market, restriction, **kwargs)
        shared = wb.wild_cluster_test(y, X, market, restriction, partialled=design.partialled, **kwargs)
        assert (shared.p_value, shared.t_stat) == (alone.p_value, alone.t_stat)
    sorted_codes = wb.partial_design(y, X, market, fe=fe)
    with pytest.raises(ValueError, match="numbers the clusters otherwise"):
        wb.wild_cluster_test(y, X, market, [1.0, 0.0], fe=fe, reps=99, partialled=sorted_codes)


def test_restriction_vector_places_each_weight_at_its_regressor():
    """A term's (parameter, weight) pairs land at the parameters' columns of the design, whatever
    their order in the term; the other regressors get 0; an unknown parameter is an error."""
    from types import SimpleNamespace

    X = pd.DataFrame(np.zeros((3, 4)), columns=["treat_skills_women", "treat_skills_men", "age", "size"])
    design = wb.WildDesign(np.zeros(3), X, None, np.arange(3), None)
    diff = SimpleNamespace(term="treat_skills_diff", weights=[("treat_skills_men", -1.0), ("treat_skills_women", 1.0)])
    np.testing.assert_array_equal(wb.restriction_vector(design, diff), [1.0, -1.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        wb.restriction_vector(design, SimpleNamespace(term="x", weights=[("absent", 1.0)]))
