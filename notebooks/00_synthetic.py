# %% [markdown]
# # Stage 0 · The embedded synthetic field survey
#
# A panel of micro-enterprises (baseline and follow-up rounds) in a 2×2 factorial experiment:
# business **training** (skills) × a **capital grant**, assigned at random to markets within
# region × sector strata, with imperfect take-up. Profits are heavy-tailed and the true effects
# differ by owner gender. The file carries the mess of a real survey (value labels, missing-value
# codes, weekly and monthly recall, typing outliers, duplicate submissions, attrition that differs
# by arm, closed businesses, and direct identifiers that later stages must drop).
#
# The true parameters are written beside the data (`data/raw/synthetic/truth.json`), so the report
# can put each estimate next to the truth.

# %% tags=["parameters"]
stage_params = None  # None: use the `synthetic:` group of params.yaml
pipeline = "main"

# %%
import pandas as pd

from pipeline import stage_context, synthetic
from pipeline.io import read_json

context = stage_context.build("synthetic", pipeline=pipeline, group=stage_params)
summary = synthetic.run(context)
truth = read_json(context.outputs["raw/synthetic"] / "truth.json")

# %% [markdown]
# ## True intention-to-treat effects (USD PPP per month)

# %%
pd.DataFrame(truth["itt"]).T.rename_axis("effect")

# %% [markdown]
# ## What the generator wrote

# %%
# (out_dir left out: an absolute path would differ between checkouts)
pd.Series({k: v for k, v in summary.items() if k != "out_dir" and not isinstance(v, (dict, list))}, name="value").to_frame()
