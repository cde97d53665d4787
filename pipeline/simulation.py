"""Simulation study: does the main estimator recover the generator's true effects?

For draw i = 0..R-1 the project's generator (``pipeline.synthetic.generate``, the ``synthetic:``
params with ``seed = base_seed + i``) writes a messy survey; it goes through the ingest stage's own
pure function (:func:`pipeline.ingest.ingest_frame`: columns checked, identifiers dropped, rows
numbered, in memory) and :func:`pipeline.ingest.interim_table`, ``pipeline.clean.clean`` and
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
has profit 0, not missing"), so no outcome variant with closed firms set to 0 is needed: a test
checks that no interviewed closed firm has a missing profit in the analysis table. Bias of the winsorised
estimates relative to the truth is winsorising's (clipping the tails) and is reported as found.

The ``simulation`` stage (``python -m pipeline.run_stage simulation``, notebook
``07_simulation``, params group ``simulation:``) writes ``reports/simulation/simulation.json`` (settings, summary, verdicts),
``reports/simulation/simulation.csv`` (the summary table) and
``reports/simulation/simulation_draws.parquet`` (every draw's estimates). The outputs depend only
on the inputs (no time stamps); progress (draws done, rate) goes to the terminal, not to the outputs.
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import clean, construct, estimate, ingest, paths, synthetic
from pipeline.io import write_csv, write_json, write_parquet
from pipeline.qte import limit_blas_threads
from pipeline.study import load_study, normalise

EFFECTS = {"skills": "treat_skills", "capital": "treat_capital",
           "skills_x_capital": "treat_skills_x_treat_capital"}
SEXES = ("women", "men", "diff")
# name -> column of the analysis table
OUTCOMES = {"unwinsorised": "profit_usd_ppp_month_unwinsorised", "winsorised": "profit_usd_ppp_month"}
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
    survey, value_labels, variable_labels, truth = synthetic.generate(synth_params)
    # the generator writes one file (studies/synthetic.yaml files[0]); it has no hashed identifiers
    interim, _ = ingest.ingest_frame(survey, value_labels, variable_labels, cfg, cfg["files"][0], salt=None,
                                     scan_identifiers=False)
    factor, _ = ingest.conversion_factor(cfg, paths.raw_synthetic_dir())
    interim = ingest.interim_table([interim], cfg, factor)
    cleaned = clean.clean(interim, cfg, clean_params)["clean"]
    table = construct.construct(cleaned, cfg, construct_params, clean_params.get("flow_period", "month"))
    return table, truth


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
            spec = estimate.Spec.from_params(spec_params, OUTCOMES[oname], table)
            t = estimate.tidy(estimate.fit(table, spec, by_gender=True)).set_index("term")
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
def build_settings(synthetic_params: dict, clean_params: dict, construct_params: dict, estimate_params: dict,
                   cfg: dict, synthetic_overrides: dict | None = None, base_seed: int | None = None,
                   variants=tuple(VARIANTS), outcomes=tuple(OUTCOMES), vcov: str | None = None) -> dict:
    """Settings of the study from resolved params groups; the estimator is the ``estimate:``
    specification (``vcov`` CR1 when absent), ``vcov`` overriding it."""
    synth = {**synthetic_params, **(synthetic_overrides or {})}
    spec_params, _ = estimate.split_params(estimate_params)
    spec_params = {**spec_params, "vcov": vcov or spec_params.get("vcov", "CR1")}
    return {"synthetic": synth, "clean": clean_params, "construct": construct_params,
            "spec_params": spec_params, "cfg": normalise(cfg),
            "base_seed": int(synth["seed"] if base_seed is None else base_seed),
            "variants": list(variants), "outcomes": list(outcomes)}


class Progress:
    """Draws done / total with a rate, on the terminal (the process's stderr: inside a notebook
    kernel that is the terminal that started the stage, not a cell output, so outputs carry no
    timings). At most one line per ``every`` seconds, and the last."""

    def __init__(self, total: int, label: str = "simulation", every: float = 15.0, stream=None):
        self.total, self.label, self.every = total, label, every
        self.stream = stream if stream is not None else sys.__stderr__
        self.start = self.last = time.perf_counter()
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.stream is None or (now - self.last < self.every and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        print(f"{self.label}: {self.done}/{self.total} draws ({100 * self.done / self.total:.0f}%), "
              f"{rate:.2f} draws/s, about {left / 60:.1f} min left", file=self.stream, flush=True)


def run_study(n_draws: int, settings: dict, workers: int = 2, progress: Progress | None = None) -> pd.DataFrame:
    """Every draw's estimates (sorted by draw, variant, outcome, effect, sex). Draw i uses seed
    base_seed + i whatever the number of workers, and results are gathered in draw order."""
    chunks = []
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"),
                                 initializer=_init, initargs=(settings,)) as ex:
            for rows in ex.map(_work, range(n_draws), chunksize=max(1, min(10, n_draws // (4 * workers)))):
                chunks.append(rows)
                if progress is not None:
                    progress.advance()
    else:
        for i in range(n_draws):
            chunks.append(one_draw(i, settings))
            if progress is not None:
                progress.advance()
    draws = pd.DataFrame([r for c in chunks for r in c], columns=DRAW_COLUMNS)
    return draws.sort_values(["draw"], kind="stable").reset_index(drop=True)


def write_outputs(draws: pd.DataFrame, summary: pd.DataFrame, settings: dict, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    meta = {
        "description": "Simulation study of the by_gender ANCOVA estimator against the generator's "
                       "true ITT effects (see pipeline/simulation.py).",
        "draws": int(draws["draw"].nunique()),
        "base_seed": settings["base_seed"],
        "seeds": "seed_i = base_seed + i",
        "synthetic_params": {k: v for k, v in settings["synthetic"].items() if k != "seed"},
        "variants": {v: VARIANTS[v] for v in settings["variants"]},
        "outcomes": {o: {"column": OUTCOMES[o]} for o in settings["outcomes"]},
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


def run(stage_params: dict, synthetic_params: dict, clean_params: dict, construct_params: dict,
        estimate_params: dict, out_dir: Path | None = None) -> dict:
    """The simulation stage: ``stage_params`` is the ``simulation:`` group (draws, workers); the
    other groups are the ones the default run's stages use, as ``run_stage`` injects them."""
    settings = build_settings(synthetic_params, clean_params, construct_params, estimate_params,
                              load_study("synthetic"))
    n_draws, workers = int(stage_params["draws"]), int(stage_params["workers"])
    draws = run_study(n_draws, settings, workers=workers, progress=Progress(n_draws))
    summary = summarise(draws)
    meta = write_outputs(draws, summary, settings, Path(out_dir) if out_dir else paths.simulation_dir())
    return {"draws": draws, "summary": summary, "meta": meta}
