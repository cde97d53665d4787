# %% [markdown]
# # Stage 3 · Construct: the canonical analysis table
#
# One row per enterprise × planned round: outcomes in USD PPP per month (winsorised, and the
# unwinsorised version beside), the business-practices (skills) index, capital access, the
# female-owner indicator, assignment to the skills and capital interventions, take-up, baseline
# values for ANCOVA, and an attrition flag for planned interviews that did not happen.

# %% tags=["parameters"]
study = "synthetic"
stage_params = None  # None: the `construct:` group of params.yaml
flow_period = None   # None: `clean.flow_period`

# %%
import pandas as pd

from pipeline import construct
from pipeline.io import load_params

params = load_params()
stage_params = stage_params if stage_params is not None else params["construct"]
flow_period = flow_period or params["clean"]["flow_period"]
result = construct.run(study, stage_params, flow_period)
analysis = result["analysis"]

# %% [markdown]
# ## Firms, interviews and attrition by arm and round

# %%
analysis.pivot_table(index="arm", columns="round", values="interviewed", aggfunc="mean").round(3)

# %% [markdown]
# ## The study's first outcome by round, owner gender and arm (means)

# %%
construct.outcome_means(analysis, result["config"], flow_period)
