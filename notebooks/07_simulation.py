# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (microenterprise pipeline)
#     language: python
#     name: microenterprise
# ---

# %% [markdown]
# # Stage 7 · Simulation: does the estimator recover the truth?
#
# Many surveys drawn from the generator of stage 0 (draw *i* uses seed `synthetic.seed + i`), each
# through the same ingest, cleaning and construction code as a real file and the default run's
# `by_gender` model. For training, the grant and both, for women, men and their difference: the
# bias of the estimates (in SDs of the estimate across draws), the coverage of the 95% intervals
# and the ratio of the mean reported SE to the SD of the estimates. Targets: |bias| < 0.05 SD and
# coverage between 93% and 97%.
#
# The draws run on Dask: a local cluster of `simulation.workers` processes, or the cluster whose
# scheduler `DASK_SCHEDULER_ADDRESS` names (README, "Running the simulation on a cluster"); the
# results are the same either way. Progress (draws done, rate, time left) goes to the terminal.

# %% tags=["parameters"]
stage_params = None      # None: the `simulation:` group of params.yaml (draws, workers)
synthetic_params = None  # None: the `synthetic:` group
clean_params = None      # None: the `clean:` group
construct_params = None  # None: the `construct:` group
estimate_params = None   # None: the `estimate:` group
pipeline = "main"

# %%
import pandas as pd

from pipeline import simulation, stage_context

context = stage_context.build("simulation", pipeline=pipeline, group=stage_params, extra={
    "synthetic_params": synthetic_params, "clean_params": clean_params, "construct_params": construct_params,
    "estimate_params": estimate_params})
result = simulation.run(context)
meta = result["meta"]

# %% [markdown]
# ## What was run

# %%
pd.Series({"draws": meta["draws"], "base seed": meta["base_seed"], "seeds": meta["seeds"],
           "variance estimator": meta["estimator"].get("vcov"),
           "fixed effects": ", ".join(meta["estimator"].get("fixed_effects") or []) or "none",
           "cluster": meta["estimator"].get("cluster")}, name="value").to_frame()

# %% [markdown]
# ## Bias, coverage and SE calibration
#
# `no_typos / unwinsorised` is the outcome the truth is defined on; `as_configured` is the default
# survey, whose typing errors the pipeline does not correct (winsorising is the remedy, at the
# cost of a bias towards zero that this table shows).

# %%
columns = ["variant", "outcome", "effect", "sex", "truth", "mean_estimate", "bias_in_sd", "mc_se_bias_in_sd",
           "coverage", "mc_se_coverage", "se_over_sd", "bias_ok", "coverage_ok"]
result["summary"][columns].round(3)

# %% [markdown]
# ## Targets met, per variant and outcome

# %%
pd.DataFrame(meta["targets_met"]).T

# %% [markdown]
# ## Few clusters: CR1, CR2 and the wild bootstrap side by side
#
# The same estimator on surveys with 20 markets (2 regions x 2 sectors, 5 markets of 150 firms each,
# no typing errors): the share of datasets in which each method's 95% interval (or, for the wild
# cluster restricted bootstrap, its 5% test of the true value) accepts the true effect. With few
# clusters CR1 intervals are known to be too narrow; the table shows how far, here.

# %%
pd.DataFrame(meta["few_clusters"]["summary"]).round(3)
