# %% [markdown]
# # Stage 4 · Estimate: intention-to-treat effects of skills and capital, by owner gender
#
# ANCOVA on the pooled follow-up rounds (baseline outcome as a control, with a missing-baseline
# dummy), strata and round fixed effects, standard errors clustered at the unit of randomisation.
# Models: `pooled`; `by_gender` (each treatment term separately for women and men, plus their
# difference with the test of equal effects); `women_only` and `men_only`.

# %% tags=["parameters"]
study = "synthetic"
stage_params = None  # None: the `estimate:` group of params.yaml

# %%
import pandas as pd

from pipeline import estimate
from pipeline.io import load_params

stage_params = stage_params if stage_params is not None else load_params()["estimate"]
result = estimate.run(study, stage_params)
results = result["results"]

# %% [markdown]
# ## Effects for women and for men (primary outcome)

# %%
primary = stage_params["primary_outcome"]
cols = ["term", "estimate", "std_error", "ci_low", "ci_high", "p_value", "control_mean", "effect_pct_of_control_mean", "n_obs", "n_clusters"]
results[(results["outcome"] == primary) & (results["model"] == "by_gender")][cols].round(3)

# %% [markdown]
# ## All models and outcomes

# %%
results.set_index(["outcome", "model", "sample", "term"])[["estimate", "std_error", "p_value", "n_obs"]].round(3)
