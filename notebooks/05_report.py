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

from pipeline import report
from pipeline.io import load_params

from pipeline.run_stage import studies_of

params = load_params()
stage_params = stage_params if stage_params is not None else params["report"]
studies = studies if studies is not None else list(studies_of(params, pipeline))
flow_period = flow_period if flow_period is not None else params["clean"]["flow_period"]
result = report.run(stage_params, studies, flow_period, pipeline)

# %% [markdown]
# ## Effects by owner gender, per study (beside the truth for the synthetic study)

# %%
pd.concat(result["effects"], names=["study"]).reset_index(level=0).round(3)

# %% [markdown]
# ## Key estimates tracked by `dvc metrics`

# %%
result["metrics"]
