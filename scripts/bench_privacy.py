"""The identifier scan (pipeline/privacy.py) before and after, side by side in one run: main's
privacy.py (``git show <base>:pipeline/privacy.py``, loaded from a temporary folder) against this
checkout's, on (1) the clean stage's final scan of the synthetic study (its outputs must exist:
``python -m pipeline.run_stage clean --study synthetic``) and (2) a per-firm text frame like the
out-of-core construct stage's (firm_id, arm, stratum, cluster_id; ``--firms`` rows). Findings are
compared too. Usage: ``python scripts/bench_privacy.py [--firms 2600000] [--base main] [--repeat 5]``."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from pipeline import privacy
from revision_module import module_at
from pipeline.run_stage import stage_outs


def load_base(base: str):
    return module_at(base, "pipeline/privacy.py", "privacy_base")


def firm_text(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    arms = np.array(["Control", "Training only", "Grant only", "Training + grant"])
    return pd.DataFrame({
        "firm_id": pd.Series(np.arange(100001, 100001 + n).astype(str), dtype="str"),
        "arm": pd.Series(arms[rng.integers(0, 4, n)], dtype="str"),
        "stratum": pd.Series([f"region={r}|sector={s}" for r, s in rng.integers(1, 6, (n, 2))], dtype="str"),
        "cluster_id": pd.Series(rng.integers(1, n // 20 + 2, n).astype(str), dtype="str"),
    })


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def outcome(fn):
    try:
        fn()
        return None
    except privacy.IdentifierLeakError as err:
        return str(err)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--firms", type=int, default=2_600_000)
    parser.add_argument("--base", default="main")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the clean stage's scan (the fastest is shown)")
    args = parser.parse_args()
    print("pipeline:", privacy.__file__, file=sys.stderr)
    base = load_base(args.base)
    outs = stage_outs("clean", "synthetic")
    frame = firm_text(args.firms)
    cases = {"clean stage final scan": lambda m: outcome(lambda: m.assert_stage_outputs_clean(outs, "synthetic")),
             f"per-firm text frame, {args.firms:,} rows": lambda m: m.find_identifiers(frame)}
    for (name, scan), repeat in zip(cases.items(), (args.repeat, 1)):
        old_s, old = min(timed(lambda scan=scan: scan(base)) for _ in range(repeat))
        new_s, new = min(timed(lambda scan=scan: scan(privacy)) for _ in range(repeat))
        print(f"{name}: {args.base} {old_s:.3f} s, this checkout {new_s:.3f} s ({old_s / new_s:.1f}x); "
              f"same findings: {old == new}")

if __name__ == "__main__":
    main()
