# %% [markdown]
# # Stage 5 · Report
#
# Collects every study's estimates, puts the synthetic study's estimates beside the true
# values of its data-generating process, and writes `reports/index.html` (the reviewer's
# entry point), `reports/metrics.json` (for `dvc metrics show/diff`) and `reports/results.csv`.

# %% tags=["parameters"]
stage_params = None  # None: the `report:` group of params.yaml

# %%
import pandas as pd

from pipeline import report
from pipeline.io import load_params

params = load_params()
stage_params = stage_params if stage_params is not None else params["report"]
result = report.run(stage_params, list(params["studies"]), params["estimate"]["primary_outcome"],
                    params["clean"]["flow_period"], params["estimate"])

# %% [markdown]
# ## Estimates beside the truth (synthetic study)

# %%
pd.concat(result["effects"], names=["study"]).reset_index(level=0).round(3)
