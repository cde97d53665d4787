#!/usr/bin/env python
"""Simulation study: does the main estimator recover the generator's true effects?

For draw i = 0..R-1 the project's generator (``pipeline.synthetic.generate``, the ``synthetic:``
params with ``seed = base_seed + i``) writes a messy survey; it goes through the pipeline's own
ingest step (identifiers dropped, rows numbered, in memory), ``pipeline.clean.clean`` and
``pipeline.construct.construct`` with ``studies/synthetic.yaml`` and the ``clean:`` /
``construct:`` params, and the ``by_gender`` ANCOVA model of ``pipeline.estimate`` (the
``estimate:`` specification: strata and round FE, cluster SE with the ``estimate.vcov``
covariance, CR1 when absent; ``--vcov`` overrides it) is fitted. For the effects of
training, the grant and their interaction, for women, for men and their difference, we report:

* ``bias_in_sd``: (mean estimate - truth) / SD of the estimates across draws; its Monte Carlo
  standard error is about 1 / sqrt(R) (target: |bias| < 0.05 SD);
* ``coverage``: share of draws whose 95% CI contains the truth, with its Monte Carlo SE
  sqrt(c (1 - c) / R) (target 93-97%);
* ``se_over_sd``: mean reported SE / SD of the estimates (1 = the SEs are right on average).

The truth (``truth["itt"]`` of the generator) is the ITT on *true* profit: the direct profit
answer with closed businesses as 0, before conversion to LCU, rounding and injected mess. The
outcome that measures it is the **unwinsorised** profit with closed businesses at 0, and exactly
so only when the generator's
"extra zero" typing errors (profit x 10 for 0.4% of interviews, which the pipeline does not
correct, by design: winsorising is the remedy) are switched off. So the study runs two variants
of the generator, each on two outcomes:

``no_typos``       synthetic params with ``share_typo_extra_zero = 0``: the unwinsorised outcome is
                   the truth's outcome (up to rounding to whole LCU, < 0.06 USD PPP);
``as_configured``  the project's synthetic params unchanged (typos included);

and outcomes ``unwinsorised`` (``profit_usd_ppp_month_unwinsorised``) and ``winsorised``
(``profit_usd_ppp_month``, winsorised per round at the ``clean:`` percentiles), as the pipeline
delivers them. The clean stage gives closed businesses 0 profit (METHODS.md: "a closed business
has profit 0, not missing"), so the former ``*_closed_zero`` variants (closed firms set to 0 here)
equal these (``--outcomes unwinsorised winsorised`` skips them). Bias of the winsorised
estimates relative to the truth is winsorising's (clipping the tails) and is reported as found.

Usage::

    python scripts/simulation_study.py --draws 2000 --workers 2

writes ``reports/simulation/simulation.json`` (settings, summary, verdicts),
``reports/simulation/simulation.csv`` (the summary table) and
``reports/simulation/simulation_draws.parquet`` (every draw's estimates). The outputs depend only
on the inputs (no time stamps); the wall time is printed.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # before numpy
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline import clean, construct, estimate, synthetic  # noqa: E402
from pipeline.io import load_params, write_csv, write_json, write_parquet  # noqa: E402
from pipeline.qte import limit_blas_threads  # noqa: E402
from pipeline.study import load_study  # noqa: E402

EFFECTS = {"skills": "treat_skills", "capital": "treat_capital",
           "skills_x_capital": "treat_skills_x_treat_capital"}
SEXES = ("women", "men", "diff")
# name -> (column of the analysis table, closed businesses set to 0 here?)
# The clean stage now gives closed businesses 0 profit, so the ``*_closed_zero`` variants equal
# the plain outcomes (kept for tests/test_simulation.py; ``--outcomes`` runs a subset).
OUTCOMES = {
    "unwinsorised": ("profit_usd_ppp_month_unwinsorised", False),
    "winsorised": ("profit_usd_ppp_month", False),
    "unwinsorised_closed_zero": ("profit_usd_ppp_month_unwinsorised", True),
    "winsorised_closed_zero": ("profit_usd_ppp_month", True),
}
VARIANTS = {"no_typos": {"share_typo_extra_zero": 0.0}, "as_configured": {}}
DRAW_COLUMNS = ["draw", "seed", "variant", "outcome", "effect", "sex", "truth", "estimate",
                "std_error", "ci_low", "ci_high", "n_obs", "n_clusters"]
TARGETS = {"abs_bias_in_sd_max": 0.05, "coverage_min": 0.93, "coverage_max": 0.97}


# --------------------------------------------------------------------------------------------
# One draw
# --------------------------------------------------------------------------------------------
def analysis_table(synth_params: dict, cfg: dict, clean_params: dict, construct_params: dict
                   ) -> tuple[pd.DataFrame, dict]:
    """Generator -> in-memory ingest -> clean -> construct. Returns (analysis table, truth)."""
    survey, _, _, truth = synthetic.generate(synth_params)
    interim = survey.drop(columns=list(cfg["identifiers"]))
    interim.insert(0, "source_row", np.arange(len(interim)))
    interim.insert(0, "source_file", cfg["files"][0]["path"])
    cleaned = clean.clean(interim, cfg, clean_params)["clean"]
    table = construct.construct(cleaned, cfg, construct_params, clean_params.get("flow_period", "month"))
    return table, truth


def closed_as_zero(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """METHODS.md: a closed business has profit 0, not missing. Where an interviewed firm-round
    is flagged ``business_closed`` and the outcome is missing, set it to 0 (a no-op once the
    clean stage itself gives closed businesses 0)."""
    fill = (table["business_closed"] == 1) & (table["interviewed"] == 1) & table[column].isna()
    return table.assign(**{column: table[column].mask(fill, 0.0)})


def true_value(truth: dict, effect: str, sex: str) -> float:
    itt = truth["itt"][effect]
    return float(itt["women"]) - float(itt["men"]) if sex == "diff" else float(itt[sex])


def one_draw(i: int, settings: dict) -> list[dict]:
    """Every (variant, outcome) estimate of draw i."""
    seed = int(settings["base_seed"]) + int(i)
    cfg = settings["cfg"]
    spec_params = settings["spec_params"]
    rows = []
    for variant in settings["variants"]:
        synth = {**settings["synthetic"], **VARIANTS[variant], "seed": seed}
        table, truth = analysis_table(synth, cfg, settings["clean"], settings["construct"])
        for oname in settings["outcomes"]:
            column, zero = OUTCOMES[oname]
            data = closed_as_zero(table, column) if zero else table
            spec = estimate.Spec.from_params(spec_params, column, data)
            t = estimate.tidy(estimate.fit(data, spec, by_gender=True)).set_index("term")
            for effect, term in EFFECTS.items():
                for sex in SEXES:
                    r = t.loc[f"{term}_{sex}"]
                    rows.append({"draw": int(i), "seed": seed, "variant": variant, "outcome": oname,
                                 "effect": effect, "sex": sex, "truth": true_value(truth, effect, sex),
                                 "estimate": float(r["estimate"]), "std_error": float(r["std_error"]),
                                 "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
                                 "n_obs": int(r["n_obs"]), "n_clusters": int(r["n_clusters"])})
    return rows


_SETTINGS: dict = {}


def _init(settings: dict) -> None:
    limit_blas_threads(1)
    _SETTINGS.clear()
    _SETTINGS.update(settings)


def _work(i: int) -> list[dict]:
    return one_draw(i, _SETTINGS)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def summarise(draws: pd.DataFrame, keys=("variant", "outcome", "effect", "sex")) -> pd.DataFrame:
    """Bias (in USD and in SDs of the estimate), coverage of the CIs and SE calibration per group.

    ``covered`` = ci_low <= truth <= ci_high. Monte Carlo SEs: of ``bias_in_sd`` about 1/sqrt(R)
    (exactly SE(mean)/SD = 1/sqrt(R)), of ``coverage`` sqrt(c (1 - c) / R).
    """
    rows = []
    for key, g in draws.groupby(list(keys), sort=False):
        est, truth = g["estimate"].to_numpy(float), g["truth"].to_numpy(float)
        if np.ptp(truth) > 1e-12:
            raise ValueError(f"truth varies within group {key}")
        R = len(g)
        sd = float(np.std(est, ddof=1)) if R > 1 else np.nan
        bias = float(est.mean() - truth[0])
        covered = (g["ci_low"].to_numpy(float) <= truth) & (truth <= g["ci_high"].to_numpy(float))
        cov = float(covered.mean())
        rows.append({**dict(zip(keys, key)), "draws": R, "truth": float(truth[0]),
                     "mean_estimate": float(est.mean()), "bias": bias, "sd_estimate": sd,
                     "bias_in_sd": bias / sd if sd and sd > 0 else np.nan,
                     "mc_se_bias_in_sd": 1 / np.sqrt(R),
                     "bias_in_sd_z": (bias / sd) * np.sqrt(R) if sd and sd > 0 else np.nan,
                     "mean_se": float(g["std_error"].mean()),
                     "se_over_sd": float(g["std_error"].mean()) / sd if sd and sd > 0 else np.nan,
                     "coverage": cov, "mc_se_coverage": float(np.sqrt(cov * (1 - cov) / R)),
                     "rmse": float(np.sqrt(np.mean((est - truth) ** 2)))})
    out = pd.DataFrame(rows)
    out["bias_ok"] = out["bias_in_sd"].abs() < TARGETS["abs_bias_in_sd_max"]
    out["coverage_ok"] = out["coverage"].between(TARGETS["coverage_min"], TARGETS["coverage_max"])
    return out


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def build_settings(params: dict | None = None, synthetic_overrides: dict | None = None,
                   base_seed: int | None = None, variants=tuple(VARIANTS),
                   outcomes=tuple(OUTCOMES), vcov: str | None = None) -> dict:
    """Settings of the study; the estimator is the ``estimate:`` params group (incl. ``vcov``,
    CR1 when absent), ``vcov`` overriding it."""
    params = params or load_params()
    synth = {**params["synthetic"], **(synthetic_overrides or {})}
    spec_params, _ = estimate.split_params(params["estimate"])
    spec_params = {**spec_params, "vcov": vcov or spec_params.get("vcov", "CR1")}
    return {"synthetic": synth, "clean": params["clean"], "construct": params["construct"],
            "spec_params": spec_params, "cfg": load_study("synthetic"),
            "base_seed": int(synth["seed"] if base_seed is None else base_seed),
            "variants": list(variants), "outcomes": list(outcomes)}


def run_study(n_draws: int, settings: dict, workers: int = 2) -> pd.DataFrame:
    """Every draw's estimates (sorted by draw, variant, outcome, effect, sex)."""
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"),
                                 initializer=_init, initargs=(settings,)) as ex:
            chunks = list(ex.map(_work, range(n_draws), chunksize=max(1, min(10, n_draws // (4 * workers)))))
    else:
        chunks = [one_draw(i, settings) for i in range(n_draws)]
    draws = pd.DataFrame([r for c in chunks for r in c], columns=DRAW_COLUMNS)
    return draws.sort_values(["draw"], kind="stable").reset_index(drop=True)


def write_outputs(draws: pd.DataFrame, summary: pd.DataFrame, settings: dict, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    meta = {
        "description": "Simulation study of the by_gender ANCOVA estimator against the generator's "
                       "true ITT effects (see scripts/simulation_study.py).",
        "draws": int(draws["draw"].nunique()),
        "base_seed": settings["base_seed"],
        "seeds": "seed_i = base_seed + i",
        "synthetic_params": {k: v for k, v in settings["synthetic"].items() if k != "seed"},
        "variants": {v: VARIANTS[v] for v in settings["variants"]},
        "outcomes": {o: {"column": OUTCOMES[o][0], "closed_businesses_set_to_zero": OUTCOMES[o][1]}
                     for o in settings["outcomes"]},
        "estimator": {"model": "by_gender", **{k: (list(v) if isinstance(v, tuple) else v)
                                              for k, v in settings["spec_params"].items()}},
        "targets": TARGETS,
        "summary": summary.to_dict("records"),
        "targets_met": {f"{v}/{o}": {k: bool(summary.loc[(summary["variant"] == v)
                                                        & (summary["outcome"] == o), k].all())
                                     for k in ("bias_ok", "coverage_ok")}
                        for v in settings["variants"] for o in settings["outcomes"]},
    }
    write_json(out_dir / "simulation.json", meta)
    write_csv(out_dir / "simulation.csv", summary)
    write_parquet(out_dir / "simulation_draws.parquet", draws)
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--base-seed", type=int, default=None,
                    help="seed of draw 0 (default: synthetic.seed of params.yaml)")
    ap.add_argument("--n-firms", type=int, default=None, help="override synthetic.n_firms")
    ap.add_argument("--out", default=str(REPO / "reports" / "simulation"))
    ap.add_argument("--vcov", choices=["CR1", "CR2", "CR3"], default=None,
                    help="override estimate.vcov of params.yaml")
    ap.add_argument("--outcomes", nargs="+", choices=list(OUTCOMES), default=list(OUTCOMES),
                    help="outcomes to run (default: all)")
    args = ap.parse_args(argv)
    overrides = {"n_firms": args.n_firms} if args.n_firms else {}
    settings = build_settings(synthetic_overrides=overrides, base_seed=args.base_seed,
                              vcov=args.vcov, outcomes=tuple(args.outcomes))
    t0 = time.perf_counter()
    draws = run_study(args.draws, settings, workers=args.workers)
    summary = summarise(draws)
    write_outputs(draws, summary, settings, Path(args.out))
    wall = time.perf_counter() - t0
    cols = ["variant", "outcome", "effect", "sex", "truth", "mean_estimate", "bias", "bias_in_sd",
            "se_over_sd", "coverage"]
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(summary[cols].round(3).to_string(index=False))
    print(f"{args.draws} draws, {args.workers} workers: {wall:.1f} s wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
