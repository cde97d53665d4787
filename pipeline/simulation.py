"""Simulation study: does the main estimator recover the generator's true effects?

For draw i = 0..R-1 the project's generator (``pipeline.synthetic.generate``, the ``synthetic:``
params with ``seed = base_seed + i``) writes a messy survey; it goes through the ingest stage's own
pure function (:func:`pipeline.ingest.ingest_frame`: columns checked, identifiers dropped, rows
numbered, in memory) and :func:`pipeline.ingest.interim_table`, ``pipeline.clean.clean`` and
``pipeline.construct.construct`` with ``studies/synthetic.yaml`` and the ``clean:`` /
``construct:`` params, and the ``by_gender`` ANCOVA model of ``pipeline.estimation`` (the
``estimate:`` specification: strata and round FE, cluster SE with the ``estimate.vcov``
covariance, CR1 when absent; ``--vcov`` overrides it) is fitted. Draw 0 of each study validates
its clean and analysis tables with the stages' pandera schemas; the other draws, from the same
generator and rules, skip that check, the flow table and the codebook (:func:`checked_draw`). For the effects of
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
``simulation.variants`` and ``simulation.outcomes`` choose among them (all by default): each variant
costs a pass of every draw's survey through the pipeline, and each outcome a fit; a variant's rows
are the same whether or not the other runs beside it.

**Few clusters** (``simulation.few_cluster_draws`` draws, ``FEW_CLUSTERS``): the same generator with
20 markets (2 regions x 2 sectors x 5 markets of 150 firms, no typos) and the same ``by_gender``
model; for each effect the coverage of the true value by the CR1 and the CR2 95% intervals and by
the wild cluster restricted bootstrap test (``pipeline.estimation.wild``: H0 effect = truth, not
rejected at 5%), on the same draws. Written to ``few_clusters.csv`` and ``simulation.json``.

The ``simulation`` stage (``python -m pipeline.run_stage simulation``, notebook
``07_simulation``, params group ``simulation:``) writes ``reports/simulation/simulation.json`` (settings, summary, verdicts),
``reports/simulation/simulation.csv`` (the summary table) and
``reports/simulation/simulation_draws.parquet`` (every draw's estimates). The outputs depend only
on the inputs (no time stamps); progress (draws done, rate) goes to the terminal, not to the outputs.

Draws run on ``dask.distributed`` (:mod:`pipeline.parallel`): a ``LocalCluster`` of
``simulation.workers`` processes, or the cluster at ``DASK_SCHEDULER_ADDRESS``, a batch of draws per
task whose surveys are cleaned and constructed as one stacked table (:func:`analysis_tables`: each
draw's table exactly the one it gets alone, in about half the time, as pandas' cost per call is
shared). Draw i's survey uses seed ``base_seed + i`` and its wild bootstrap tests
``parallel.task_seed(seed, term)``, keyed by the draw and term only, so the outputs do not depend on
the workers, the batches or the order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import clean, construct, ingest, parallel, paths, synthetic
from pipeline.estimation import fit as est_fit, spec as est_spec, tables as est_tables, wild as est_wild
from pipeline.study import load_study, normalise
from pipeline.io import param as read_param, write_outputs as write_study_outputs
from pipeline.params import SIMULATION_OUTCOMES, SIMULATION_VARIANTS
from pipeline.vocabulary import DIFF, EFFECT_KEYS, MEN, TERM_OF_EFFECT, WOMEN, sex_term, split_sex_term

EFFECTS = TERM_OF_EFFECT             # effect key -> treatment term of the by_gender model
SEXES = (WOMEN, MEN, DIFF)
# name -> column of the analysis table
OUTCOMES = dict(zip(SIMULATION_OUTCOMES, ("profit_usd_ppp_month_unwinsorised", "profit_usd_ppp_month")))
# variant -> its synthetic params overrides
VARIANTS = dict(zip(SIMULATION_VARIANTS, ({"share_typo_extra_zero": 0.0}, {})))
DRAW_COLUMNS = ["draw", "seed", "variant", "outcome", "effect", "sex", "truth", "estimate",
                "std_error", "ci_low", "ci_high", "n_obs", "n_clusters"]
TARGETS = {"abs_bias_in_sd_max": 0.05, "coverage_min": 0.93, "coverage_max": 0.97}
# Few clusters: 2 regions x 2 sectors = 4 strata of 5 markets of 150 firms (20 clusters), no typos,
# so the unwinsorised outcome measures the truth; CR1 and CR2 intervals and the wild bootstrap side by side
FEW_CLUSTERS = {"n_regions": 2, "n_sectors": 2, "firms_per_market": 150, "share_typo_extra_zero": 0.0}
FEW_CLUSTER_METHODS = ("CR1", "CR2", "wild")
FEW_CLUSTER_COLUMNS = ["draw", "seed", "effect", "sex", "truth", "estimate", "n_clusters",
                       *[f"covered_{m.lower()}" for m in FEW_CLUSTER_METHODS]]


# --------------------------------------------------------------------------------------------
# One draw
# --------------------------------------------------------------------------------------------
def analysis_table(synth_params: dict, cfg: dict, clean_params: dict, construct_params: dict,
                   checked: bool = True, generated: tuple | None = None,
                   partition: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Generator -> in-memory ingest -> clean -> construct. Returns (analysis table, truth).
    ``checked``: validate the clean and analysis tables (pandera) and count the flow; the draws do
    it for their first draw only (:func:`checked_draw`), as every draw runs the same generator and rules.
    ``generated``: ``synthetic.generate(synth_params)`` when the caller made it already.
    ``partition``: the survey's column that splits it into draws cleaned together (:func:`analysis_tables`)."""
    survey, value_labels, variable_labels, truth = generated or synthetic.generate(synth_params)
    # the generator writes one file (studies/synthetic.yaml files[0]); it has no hashed identifiers
    interim, _ = ingest.ingest_frame(survey, value_labels, variable_labels, cfg, cfg["files"][0], salt=None,
                                     scan_identifiers=False, describe=False)
    factor, _ = ingest.conversion_factor(cfg, paths.raw_synthetic_dir())
    interim = ingest.interim_table([interim], cfg, factor)
    cleaned = clean.clean(interim, cfg, clean_params, checked=checked, partition=partition)["clean"]
    table = construct.construct(cleaned, cfg, construct_params, read_param(clean_params, "clean", "flow_period"),
                                checked=checked)
    return table, truth


# the column numbering the draws of a batch in their stacked survey (clean's ``partition``)
BATCH_COLUMN = "_draw_in_batch"


def analysis_tables(generated: list[tuple], cfg: dict, clean_params: dict, construct_params: dict,
                    checked: bool = False) -> list[pd.DataFrame]:
    """The analysis table of each generated survey (``synthetic.generate``'s tuples), each the table
    :func:`analysis_table` makes of it alone. Two or more surveys with integer unit ids go through
    ingest, clean and construct as one table, about half the time per survey (pandas' cost per call is
    shared): survey k's unit ids shifted by k times one more than the largest id, so that no two
    surveys share a firm and each keeps its order, and clean's ``partition`` giving each survey its
    own winsorising cut-offs; the ids are shifted back in the tables. ``checked`` runs alone (one survey)."""
    unit = cfg["unit_id"]
    stackable = len(generated) > 1 and not checked and all(
        pd.api.types.is_integer_dtype(g[0][unit]) and g[0][unit].min() >= 0 for g in generated)
    if not stackable:
        return [analysis_table({}, cfg, clean_params, construct_params, checked, g)[0] for g in generated]
    span = 1 + max(int(g[0][unit].max()) for g in generated)
    stacked = pd.concat([g[0].assign(**{unit: g[0][unit].astype("int64") + k * span, BATCH_COLUMN: k})
                         for k, g in enumerate(generated)], ignore_index=True)
    table, _ = analysis_table({}, cfg, clean_params, construct_params, False, (stacked, *generated[0][1:]),
                              partition=BATCH_COLUMN)
    ids = table["firm_id"].astype("int64").to_numpy()
    tables = []
    for k in range(len(generated)):
        rows = ids // span == k
        part = table.loc[rows].reset_index(drop=True)
        part["firm_id"] = construct.format_ids(pd.Series(ids[rows] - k * span))
        tables.append(part)
    return tables


def checked_draw(i: int) -> bool:
    """Draw 0 of each study (main, few clusters) validates its tables; the others skip pandera
    (about a quarter of a draw's table-building time) with the same results."""
    return int(i) == 0


def batch_checked(draws: list[int]) -> bool:
    """A batch holding the checked draw validates its tables (and so runs its surveys one by one)."""
    return any(checked_draw(i) for i in draws)


def draw_seeds(draws: list[int], settings: dict) -> list[int]:
    """The generator seed of each draw: ``simulation``'s base seed plus the draw's number."""
    return [int(settings["base_seed"]) + int(i) for i in draws]


def true_value(truth: dict, effect: str, sex: str) -> float:
    itt = truth["itt"][effect]
    return float(itt["women"]) - float(itt["men"]) if sex == "diff" else float(itt[sex])


def main_batch(draws: list[int], settings: dict) -> list[list[dict]]:
    """Every (variant, outcome) estimate of each of ``draws``: one list of rows per draw, each the
    rows of :func:`one_draw` (the draws' surveys cleaned and constructed together, :func:`analysis_tables`)."""
    seeds = draw_seeds(draws, settings)
    variants = settings["variants"]
    worlds = [synthetic.generate_variants({**settings["synthetic"], "seed": seed}, [VARIANTS[v] for v in variants])
              for seed in seeds]                                    # per draw, one latent world
    rows: list[list[dict]] = [[] for _ in draws]
    for j, variant in enumerate(variants):
        generated = [world[j] for world in worlds]
        tables = analysis_tables(generated, settings["cfg"], settings["clean"], settings["construct"],
                                 checked=batch_checked(draws))
        for k, (i, table) in enumerate(zip(draws, tables)):
            rows[k] += _estimates(int(i), seeds[k], variant, table, generated[k][3], settings)
    return rows


def _estimates(i: int, seed: int, variant: str, table: pd.DataFrame, truth: dict, settings: dict) -> list[dict]:
    """Draw i's rows of one variant: each outcome's effects by sex."""
    rows = []
    for oname in settings["outcomes"]:
        spec = est_spec.Spec.from_params(settings["spec_params"], OUTCOMES[oname], table)
        by_term = {r["term"]: r for r in est_tables.tidy_rows(est_fit.fit(table, spec, by_gender=True),
                                                              alpha=settings["alpha"], power=settings["power"])}
        for effect, term in EFFECTS.items():
            for sex in SEXES:
                r = by_term[sex_term(term, sex)]
                rows.append({"draw": i, "seed": seed, "variant": variant, "outcome": oname,
                             "effect": effect, "sex": sex, "truth": true_value(truth, effect, sex),
                             "estimate": float(r["estimate"]), "std_error": float(r["std_error"]),
                             "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
                             "n_obs": int(r["n_obs"]), "n_clusters": int(r["n_clusters"])})
    return rows


def one_draw(i: int, settings: dict) -> list[dict]:
    """Every (variant, outcome) estimate of draw i."""
    return main_batch([i], settings)[0]


def few_cluster_batch(draws: list[int], settings: dict) -> list[list[dict]]:
    """:func:`few_cluster_draw` of each of ``draws`` (their surveys cleaned and constructed together)."""
    seeds = draw_seeds(draws, settings)
    generated = [synthetic.generate({**settings["synthetic"], **FEW_CLUSTERS, "seed": seed}) for seed in seeds]
    tables = analysis_tables(generated, settings["cfg"], settings["clean"], settings["construct"],
                             checked=batch_checked(draws))
    return [_few_cluster_tests(int(i), seed, table, g[3], settings)
            for i, seed, table, g in zip(draws, seeds, tables, generated)]


def few_cluster_draw(i: int, settings: dict) -> list[dict]:
    """Draw i of the few-clusters study: does each method's 95% test accept the true effect?
    CR1 / CR2: the truth is inside the t(G-1) interval; wild: the WCR bootstrap test of
    H0: effect = truth (estimate.wild_bootstrap_weights, simulation.wild_bootstrap_reps) has p >= 0.05."""
    return few_cluster_batch([i], settings)[0]


def _few_cluster_tests(i: int, seed: int, table: pd.DataFrame, truth: dict, settings: dict) -> list[dict]:
    column = OUTCOMES["unwinsorised"]
    fits = {vcov: est_fit.fit(table, est_spec.Spec.from_params({**settings["spec_params"], "vcov": vcov},
                                                                column, table), by_gender=True)
            for vcov in ("CR1", "CR2")}
    tidy = {vcov: {r["term"]: r for r in est_tables.tidy_rows(res, alpha=settings["alpha"], power=settings["power"])}
            for vcov, res in fits.items()}
    design = fits["CR2"].wild_design
    rows = []
    for td in fits["CR2"].estimate_info.terms:
        effect, sex = _effect_and_sex(td.term)
        if effect is None:
            continue
        value = true_value(truth, effect, sex)
        wild = est_wild.wild_cluster_test(
            design.y, design.X.to_numpy(), design.groups, est_wild.restriction_vector(design, td), value=value, fe=design.fe,
            weights=design.weights, reps=settings["wild_reps"], weight_type=settings["wild_weights"],
            seed=parallel.task_seed(seed, td.term), partialled=design.partialled)
        row = {"draw": int(i), "seed": seed, "effect": effect, "sex": sex, "truth": value,
               "estimate": float(tidy["CR2"][td.term]["estimate"]), "n_clusters": wild.n_clusters,
               "covered_wild": bool(wild.p_value >= 0.05)}
        for vcov in ("CR1", "CR2"):
            r = tidy[vcov][td.term]
            row[f"covered_{vcov.lower()}"] = bool(r["ci_low"] <= value <= r["ci_high"])
        rows.append(row)
    return rows


def _effect_and_sex(name: str) -> tuple[str | None, str | None]:
    """'treat_skills_x_treat_capital_diff' -> ('skills_x_capital', 'diff'); (None, None) for a term
    that is not one of the effects."""
    term, sex = split_sex_term(name)
    if term not in EFFECT_KEYS or sex not in SEXES:
        return None, None
    return EFFECT_KEYS[term], sex


def summarise_few_clusters(draws: pd.DataFrame) -> pd.DataFrame:
    """Coverage of each method per effect and sex, with Monte Carlo SEs."""
    rows = []
    for (effect, sex), g in draws.groupby(["effect", "sex"], sort=False):
        row = {"effect": effect, "sex": sex, "draws": len(g), "n_clusters": int(g["n_clusters"].median()),
               "truth": float(g["truth"].iloc[0])}
        for m in FEW_CLUSTER_METHODS:
            c = float(g[f"covered_{m.lower()}"].mean())
            row[f"coverage_{m.lower()}"] = c
            row[f"mc_se_{m.lower()}"] = float(np.sqrt(c * (1 - c) / len(g)))
        rows.append(row)
    return pd.DataFrame(rows)


_BATCH_FUNCTIONS = {"main": main_batch, "few_clusters": few_cluster_batch}


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
                   vcov: str | None = None, *, variants, outcomes, wild_reps: int) -> dict:
    """Settings of the study from resolved params groups; the estimator is the ``estimate:``
    specification, ``vcov`` (when given) overriding its ``vcov``. ``variants`` and ``outcomes``
    (``simulation.variants`` / ``outcomes``) are taken in the order of :data:`VARIANTS` and
    :data:`OUTCOMES`, however they are listed, so that the outputs depend on the choice only (a name
    not there is a ValueError). The few-clusters study's wild
    bootstrap uses ``estimate.wild_bootstrap_weights`` and ``wild_reps`` (``simulation.
    wild_bootstrap_reps``) samples."""
    synth = {**synthetic_params, **(synthetic_overrides or {})}
    spec_params, stage = est_spec.split_params(estimate_params)
    wild = est_wild.wild_settings(stage)
    spec_params = {**spec_params, "vcov": vcov or spec_params["vcov"]}
    return {"synthetic": synth, "clean": clean_params, "construct": construct_params,
            "spec_params": spec_params, "cfg": normalise(cfg),
            "base_seed": int(synth["seed"] if base_seed is None else base_seed),
            "variants": _chosen(variants, VARIANTS, "variants"), "outcomes": _chosen(outcomes, OUTCOMES, "outcomes"),
            "wild_weights": wild.weights, "wild_reps": int(wild_reps),
            "alpha": float(stage["alpha"]), "power": float(stage["mde_power"])}


def _chosen(names, known: dict, what: str) -> list[str]:
    """``names`` in the order of ``known``; a ValueError names any unknown one or an empty choice."""
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"simulation {what} {list(names)}: choose one or more of {list(known)}")
    return [n for n in known if n in names]


def draw_batches(n_draws: int, size: int) -> list[list[int]]:
    """Draws 0..n-1 in batches of ``size``, draw 0 (the checked draw, :func:`checked_draw`) alone."""
    return [[0]] * (n_draws > 0) + [list(b) for b in parallel.chunked(range(1, n_draws), size)]


def run_study(n_draws: int, settings: dict, client, progress: parallel.Progress | None = None,
              kind: str = "main", chunk_size: int | None = None) -> pd.DataFrame:
    """Every draw's rows (sorted by draw, then as the draw returns them), computed on ``client``'s
    workers (None: here, serially) in tasks of ``chunk_size`` draws (default
    :func:`parallel.default_chunk_size`), each a batch of :func:`analysis_tables`. Draw i uses seed
    base_seed + i and its tables are those it gets alone, whatever the workers and batches, and
    results are gathered in draw order.
    ``kind``: ``main`` (:func:`main_batch`) or ``few_clusters`` (:func:`few_cluster_batch`)."""
    threads = parallel.worker_threads(client) if client is not None else 1
    batches = draw_batches(n_draws, chunk_size or parallel.default_chunk_size(n_draws, threads))
    per_batch = parallel.run_tasks(client, _BATCH_FUNCTIONS[kind], batches, shared=(settings,), chunk_size=1,
                                   progress=progress, weight=len)
    columns = DRAW_COLUMNS if kind == "main" else FEW_CLUSTER_COLUMNS
    draws = pd.DataFrame([row for batch in per_batch for rows in batch for row in rows], columns=columns)
    return draws.sort_values(["draw"], kind="stable").reset_index(drop=True)


def write_outputs(draws: pd.DataFrame, summary: pd.DataFrame, settings: dict, out_dir: Path,
                  few: pd.DataFrame | None = None) -> dict:
    """simulation.json, simulation.csv, simulation_draws.parquet and few_clusters.csv, all or none."""
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
    outputs = {"simulation.csv": summary, "simulation_draws.parquet": draws}
    if few is not None:
        meta["few_clusters"] = {
            "description": "Coverage of the true effect with 20 clusters: CR1 and CR2 95% intervals (t(G-1)) "
                           "and the wild cluster restricted bootstrap test at 5%, same draws.",
            "synthetic_overrides": FEW_CLUSTERS, "draws": int(few["draw"].nunique()) if len(few) else 0,
            "wild_bootstrap": {"weights": settings["wild_weights"], "reps": settings["wild_reps"]},
            "summary": summarise_few_clusters(few).to_dict("records")}
        outputs["few_clusters.csv"] = summarise_few_clusters(few)
    write_study_outputs(out_dir, {"simulation.json": meta, **outputs})
    return meta


def run(context) -> dict:
    """The simulation stage (``context``: a :class:`pipeline.stage_context.StageContext`): its
    params are the ``simulation:`` group (draws, workers: the size of the local cluster, unused when
    ``DASK_SCHEDULER_ADDRESS`` names a cluster; the generator variants and outcomes of the main
    draws); ``context.extra`` holds the groups the default run's
    stages use (``synthetic_params``...); everything is written to ``outputs["simulation"]``."""
    stage_params, extra = context.params, context.extra
    settings = build_settings(extra["synthetic_params"], extra["clean_params"], extra["construct_params"],
                              extra["estimate_params"], load_study("synthetic"), variants=stage_params["variants"],
                              outcomes=stage_params["outcomes"], wild_reps=int(stage_params["wild_bootstrap_reps"]))
    n_draws, workers = int(stage_params["draws"]), int(stage_params["workers"])
    n_few = int(stage_params["few_cluster_draws"])
    if n_few < 20:
        raise ValueError(f"simulation.few_cluster_draws = {n_few}: at least 20 are needed for a coverage")
    with parallel.dask_client(workers) as client:
        draws = run_study(n_draws, settings, client, progress=parallel.Progress(n_draws))
        few = run_study(n_few, settings, client, progress=parallel.Progress(n_few, label="few clusters"),
                        kind="few_clusters")
    summary = summarise(draws)
    meta = write_outputs(draws, summary, settings, context.outputs["simulation"], few)
    return {"draws": draws, "summary": summary, "few_clusters": few, "meta": meta}
