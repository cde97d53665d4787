# %% [markdown]
# # Stage 2 · Clean: explicit rules, every row accounted for
#
# Rules (in order, each driven by the `clean:` params and the study configuration): invalid rows,
# duplicate interviews, survey missing-value codes, closed businesses (profit 0, flagged),
# impossible values, recall periods to one period, and winsorising per round.
# Every raw row ends in the clean table or in the rejected-rows table with its rule.

# %% tags=["parameters"]
study = "synthetic"
pipeline = "main"    # main: dvc.yaml; evidence: evidence/dvc.yaml (where the stage reads and writes)
stage_params = None  # None: the `clean:` group of params.yaml

# %%
import pandas as pd

from pipeline import clean, stage_context

context = stage_context.build("clean", study, pipeline=pipeline, group=stage_params)
result = clean.run(context)

# %% [markdown]
# ## Flow of rows by arm

# %%
result["flow"]

# %% [markdown]
# ## Rows rejected, by rule

# %%
result["rejected"].groupby(["rule", "reason"]).size().rename("rows").to_frame()

# %% [markdown]
# ## Values changed, by rule and column

# %%
clean.values_changed(result["log_counts"])

# %% [markdown]
# ## Money flows after cleaning (one period), before and after winsorising

# %%
result["flow_summary"]
