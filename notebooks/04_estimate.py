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

from pipeline.estimation import stage
from pipeline.io import load_params

stage_params = stage_params if stage_params is not None else load_params()["estimate"]
result = stage.run(study, stage_params)
results = result["results"]

# %% [markdown]
# ## The primary outcome: pooled, and for women and for men where the study records owner gender
#
# The primary outcome and the specification are the study's own, as the stage resolved them
# (its `estimate:` block on top of the params group), recorded in `estimate_summary.json`.

# %%
summary = result["summary"]
pd.Series({k: v for k, v in summary["specification"].items() if v not in (None, [], ())}, name="value",
          dtype="object").to_frame()

# %%
primary = summary["primary_outcome"]
cols = ["model", "term", "estimate", "std_error", "ci_low", "ci_high", "p_value", "control_mean", "effect_pct_of_control_mean", "n_obs", "n_clusters"]
results[(results["outcome"] == primary) & (results["transform"] == "level")
        & results["model"].isin(["pooled", "by_gender"])][cols].round(3)

# %% [markdown]
# ## All models and outcomes

# %%
results.set_index(["outcome", "model", "sample", "term"])[["estimate", "std_error", "p_value", "n_obs"]].round(3)
