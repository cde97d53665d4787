# %% [markdown]
# # Stage 1 · Ingest: raw survey file → typed interim table and codebook
#
# Reads the study's raw files as its configuration (`studies/<study>.yaml`) describes them,
# checks their checksums and required columns, **drops the direct identifiers** (names, phone
# numbers, free text), and records every column's label and value labels in a codebook.
# Raw codes are kept: the cleaning stage decides what they mean.

# %% tags=["parameters"]
study = "synthetic"
pipeline = "main"    # main: dvc.yaml; evidence: evidence/dvc.yaml (where the stage reads and writes)
stage_params = None  # None: the `ingest:` group of params.yaml

# %%
import pandas as pd

from pipeline import ingest, stage_context

context = stage_context.build("ingest", study, pipeline=pipeline, group=stage_params)
result = ingest.run(context)

# %% [markdown]
# ## Files read

# %%
pd.DataFrame(result["summary"]["files"])

# %% [markdown]
# ## Codebook
# Identifiers appear only by name, marked as dropped; their values never leave this stage.

# %%
result["codebook"].drop(columns=["source"])
