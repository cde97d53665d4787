"""A small 2x2 design made in code, shared by tests/test_balance.py and tests/test_lee_bounds.py."""
from __future__ import annotations

import numpy as np
import pandas as pd

# The design's columns as the estimate stage passes them (estimate params: treatments, cluster).
DESIGN = {"treatments": ("treat_skills", "treat_capital"), "cluster": "cluster_id"}


def design_2x2(seed=3, n_strata=2, clusters_per_arm=1, firms=5):
    """Clusters assigned to the 4 arms of a 2x2 within strata, firms within clusters."""
    rng = np.random.default_rng(seed)
    labels = {(0, 0): "Control", (1, 0): "Training only", (0, 1): "Grant only", (1, 1): "Training + grant"}
    rows = []
    cid = 0
    for s in range(n_strata):
        arms = list(labels) * clusters_per_arm
        rng.shuffle(arms)
        for a in arms:
            u = rng.normal()
            for _ in range(firms):
                rows.append({"stratum": f"S{s}", "cluster_id": f"C{cid:03d}", "arm": labels[a],
                             "treat_skills": a[0], "treat_capital": a[1],
                             "female_owner": float(rng.random() < 0.5),
                             "age": 35 + 3 * s + 2 * u + rng.normal(0, 5),
                             "educ": rng.normal(8, 2) if rng.random() > 0.1 else np.nan})
            cid += 1
    return pd.DataFrame(rows)


def hashed_design(salt: str, seed=11) -> pd.DataFrame:
    """:func:`design_2x2` (3 strata, 2 clusters per arm, 6 firms each) as the estimate stage gets a
    study whose cluster and stratum ids were hashed at ingest (``privacy.salted_hash`` with ``salt``),
    plus a follow-up outcome ``y`` with attrition. Rows stay in the same order whatever the salt, as
    the analysis table's (sorted by unit id and round)."""
    from pipeline.privacy import salted_hash

    df = design_2x2(seed=seed, n_strata=3, clusters_per_arm=2, firms=6)
    rng = np.random.default_rng(seed)
    treat = df["treat_skills"] + 2 * df["treat_capital"]
    y = 10 + treat + df["female_owner"] + rng.normal(0, 2, len(df))
    y[rng.random(len(df)) < 0.1 + 0.1 * df["treat_capital"]] = np.nan      # differential attrition
    return df.assign(y=y, followup=True, round=1,
                     cluster_id=salted_hash(df["cluster_id"], salt),
                     stratum="village=" + salted_hash(df["stratum"], salt))


def two_salt_designs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`hashed_design` under two salts, checked to sort clusters and strata differently (so
    that a table numbering them in sorted order would draw differently)."""
    a, b = hashed_design("salt of one checkout"), hashed_design("salt of another checkout")
    for col in ("cluster_id", "stratum"):
        assert not np.array_equal(pd.factorize(a[col], sort=True)[0], pd.factorize(b[col], sort=True)[0]), col
    return a, b
