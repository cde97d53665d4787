# %% [markdown]
# # Stage 1 · Ingest: raw survey file → typed interim table and codebook
#
# Reads the study's raw files as its configuration (`studies/<study>.yaml`) describes them,
# checks their checksums and required columns, **drops the direct identifiers** (names, phone
# numbers, free text), and records every column's label and value labels in a codebook.
# Raw codes are kept: the cleaning stage decides what they mean.

# %% tags=["parameters"]
study = "synthetic"
data_dir = None      # None: `studies.<study>.data_dir` in params.yaml
stage_params = None  # None: the `ingest:` group of params.yaml

# %%
import pandas as pd

from pipeline import ingest
from pipeline.io import load_params

params = load_params()
stage_params = stage_params if stage_params is not None else params["ingest"]
data_dir = data_dir if data_dir is not None else params["studies"][study]["data_dir"]
result = ingest.run(study, data_dir, stage_params)

# %% [markdown]
# ## Files read

# %%
pd.DataFrame(result["summary"]["files"])

# %% [markdown]
# ## Codebook
# Identifiers appear only by name, marked as dropped; their values never leave this stage.

# %%
result["codebook"].drop(columns=["source"])
