# %% [markdown]
# # Stage 3 · Construct: the canonical analysis table
#
# One row per enterprise × planned round: outcomes in USD PPP per month (winsorised, and the
# unwinsorised version beside), the business-practices (skills) index, capital access, the
# female-owner indicator, assignment to the skills and capital interventions, take-up, baseline
# values for ANCOVA, and an attrition flag for planned interviews that did not happen.

# %% tags=["parameters"]
study = "synthetic"
pipeline = "main"    # main: dvc.yaml; evidence: evidence/dvc.yaml (where the stage reads and writes)
stage_params = None  # None: the `construct:` group of params.yaml
flow_period = None   # None: `clean.flow_period`
engine = None        # None: `clean.engine` (pandas | duckdb; a study's clean_params may set its own)
duckdb_memory_limit = None  # None: `clean.duckdb_memory_limit` (engine duckdb)

# %%
import pandas as pd

from pipeline import construct, stage_context

context = stage_context.build("construct", study, pipeline=pipeline, group=stage_params,
                              extra={"flow_period": flow_period, "engine": engine,
                                     "duckdb_memory_limit": duckdb_memory_limit})
result = construct.run(context)
analysis = result["analysis"]   # None with the DuckDB engine (the table stays on disk)

# %% [markdown]
# ## Share of planned interviews held, by arm and round (1 = every firm interviewed)

# %%
result["interviews_by_arm"]

# %% [markdown]
# ## The study's first outcome by round, owner gender and arm (means)

# %%
result["outcome_means"]
