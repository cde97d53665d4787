# %% [markdown]
# # Stage 4 · Estimate: intention-to-treat effects of skills and capital, by owner gender
#
# Each study is estimated with its own specification: the `estimate:` params group with the
# study's `estimate:` block on top, checked against its data (which outcomes exist, whether they
# have a baseline, whether owner gender varies). The stage records that resolved specification in
# `estimate_summary.json`; it is stated in words below. Models: `pooled`; `by_gender` (each
# treatment for women and for men and their difference) with `women_only` and `men_only`, where
# the study records both sexes; `round_<r>` for each follow-up round.

# %% tags=["parameters"]
study = "synthetic"
pipeline = "main"    # main: dvc.yaml; evidence: evidence/dvc.yaml (where the stage reads and writes)
stage_params = None  # None: the `estimate:` group of params.yaml (the study's own `estimate:` block wins, key by key)

# %%
import pandas as pd
from IPython.display import Markdown

from pipeline import stage_context
from pipeline.estimation import stage
from pipeline.method_note import method_note

context = stage_context.build("estimate", study, pipeline=pipeline, group=stage_params)
result = stage.run(context)
results = result["results"]

# %% [markdown]
# ## The specification this study was estimated with (from `estimate_summary.json`)

# %%
summary = result["summary"]
Markdown(method_note(summary))

# %% [markdown]
# ## The primary outcome: pooled, and for women and for men where the study records owner gender

# %%
primary = summary["primary_outcome"]
cols = ["model", "term", "estimate", "std_error", "ci_low", "ci_high", "p_value", "control_mean",
        "effect_pct_of_control_mean", "n_obs", "n_clusters"]
results[(results["outcome"] == primary) & (results["transform"] == "level")
        & results["model"].isin(["pooled", "by_gender"])][cols].round(3)

# %% [markdown]
# ## All models and outcomes

# %%
results.set_index(["outcome", "model", "sample", "term"])[["estimate", "std_error", "p_value", "n_obs"]].round(3)
