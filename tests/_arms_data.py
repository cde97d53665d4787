"""A small 2x2 design made in code, shared by tests/test_balance.py and tests/test_lee_bounds.py."""
from __future__ import annotations

import numpy as np
import pandas as pd


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
