# %% [markdown]
# # Stage 5 · Report
#
# Collects every study's estimates, puts the synthetic study's estimates beside the true
# values of its data-generating process, and writes `reports/index.html` (the reviewer's
# entry point), `reports/metrics.json` (for `dvc metrics show/diff`) and `reports/results.csv`.

# %% tags=["parameters"]
stage_params = None  # None: the `report:` group of params.yaml
studies = None       # None: the studies of `pipeline` in params.yaml
pipeline = "main"    # main: the default run (reports/); evidence: the real studies (reports/evidence/)
flow_period = None   # None: `clean.flow_period`

# %%
import pandas as pd

from pipeline import report, stage_context

context = stage_context.build("report", pipeline=pipeline, group=stage_params, studies=studies,
                              extra={"flow_period": flow_period})
result = report.run(context)

# %% [markdown]
# ## Effects by owner gender, per study (beside the truth for the synthetic study)

# %%
pd.concat(result["effects"], names=["study"]).reset_index(level=0).round(3)

# %% [markdown]
# ## Key estimates tracked by `dvc metrics`

# %%
result["metrics"]
