"""The balance tables (pipeline/balance.py) before and after, side by side in one run: the base's
balance.py (``git show <base>:pipeline/balance.py``, loaded from a temporary folder, run in this
process) against this checkout's, as the estimate stage calls them (its params: 1,000
permutations), on each study's analysis table (``data/processed/<study>/analysis.parquet``: run
ingest, clean and construct first). Seconds, their ratio, and whether the tables are identical.

field2013 and berge2015 have no baseline rows (the stage skips their balance): their rows are one
round with the baseline values as columns, which are tested here (berge2015 with firms as the
unit: its grant arm varies within the training groups).
Usage: ``python scripts/bench_balance.py synthetic field2013 berge2015 acz2018 [--base main]``."""
from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import pandas as pd

from pipeline import stage_context
from pipeline.estimation import stage
from pipeline.estimation.sample import gender_varies
from pipeline.estimation.spec import Spec, split_params
from pipeline.estimation.stage import study_params
from pipeline.io import REPO_ROOT
from revision_module import module_at
from pipeline.vocabulary import ALL, SAMPLES

BASELINE_COLUMNS = {
    "field2013": ["age", "married", "literate", "muslim", "hh_size", "years_education", "shock_any",
                  "has_business", "financial_control", "homeowner", "no_drain"],
    "berge2015": ["female_owner", "owner_age", "owner_educ", "profit_2008_ktzs", "sales_2008_ktzs"],
}
CLUSTER = {"berge2015": "firm_id"}


def load_base(base: str):
    return module_at(base, "pipeline/balance.py", "balance_base")


def tables(balance_tables, study: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's (balance, balance_joint) by ``balance_tables``, called as the estimate stage does."""
    ctx = stage_context.build("estimate", study, pipeline="main" if study == "synthetic" else "evidence")
    full = pd.read_parquet(REPO_ROOT / "data" / "processed" / study / "analysis.parquet")
    spec_params, sp = split_params(study_params(dict(ctx.params), dict(ctx.config)))
    spec = Spec.from_params(spec_params, "unused", full)
    sexes = SAMPLES if gender_varies(full) else (ALL,)
    if study in BASELINE_COLUMNS:
        return balance_tables(full, BASELINE_COLUMNS[study], treatments=spec.treatments,
                              cluster=CLUSTER.get(study, spec.cluster or "firm_id"),
                              permutations=int(sp["permutations"]), seed=int(sp["seed"]), samples=sexes)
    stage_call = stage.balance_tables
    stage.balance_tables = balance_tables
    try:
        extra = [None] if "workers" in inspect.signature(stage._balance).parameters else []
        return stage._balance(full, spec, sp, study, sexes, {}, *extra)
    finally:
        stage.balance_tables = stage_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--base", default="main")
    args = parser.parse_args()
    base = load_base(args.base)
    print(f"this checkout: {Path(stage.__file__).parents[2]} (run with PYTHONPATH=<checkout>)")
    for study in args.studies:
        seconds, out = {}, {}
        for name, fn in (("base", base.balance_tables), ("this", stage.balance_tables)):
            start = time.perf_counter()
            out[name] = tables(fn, study)
            seconds[name] = time.perf_counter() - start
        same = all(a.equals(b) for a, b in zip(out["base"], out["this"]))
        print(f"{study}: {args.base} {seconds['base']:.2f} s, this checkout {seconds['this']:.2f} s, "
              f"ratio {seconds['base'] / seconds['this']:.1f}; tables identical: {same} "
              f"({len(out['this'][0])} covariate rows, {len(out['this'][1])} joint rows)")


if __name__ == "__main__":
    main()
