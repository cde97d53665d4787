# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (microenterprise pipeline)
#     language: python
#     name: microenterprise
# ---

# %% [markdown]
# # Stage 6 · Synthesize: what the studies say together
#
# Every real study's intention-to-treat effect of **skills** (business training) and of
# **capital** (grants, loans, credit) on monthly profit, for all owners and for women and men
# where the study estimated them, on one scale (percent of the control mean; USD PPP per month
# where the outcome is a money flow), pooled by a Bayesian normal-normal hierarchical model
# (Rubin 1981; the model of Meager 2019 and R's baggr), computed exactly by integration over the
# between-study SD. Frequentist random effects (DerSimonian-Laird, Paule-Mandel) as a cross-check.

# %% tags=["parameters"]
studies = None       # None: `evidence.studies` in params.yaml
pipeline = "evidence"
stage_params = None  # None: the `synthesize:` group of params.yaml

# %%
from pipeline import stage_context, synthesize

context = stage_context.build("synthesize", pipeline=pipeline, group=stage_params, studies=studies)
result = synthesize.run(context)

# %% [markdown]
# ## Study effects on one scale (the inputs)

# %%
result["study_effects"][["study", "arm", "intervention", "group", "scale", "effect", "std_error",
                         "estimate_native", "native_unit"]].round(3)

# %% [markdown]
# ## Pooled effects

# %%
result["pooled"].round(3)

# %% [markdown]
# ## Shrunk study effects and pooling factors

# %%
result["shrunk"].round(3)

# %% [markdown]
# ## Leave one study out

# %%
result["leave_one_out"].round(3)

# %% [markdown]
# ## Meta-regression on study moderators

# %%
result["meta_regression"].round(3)

# %% [markdown]
# ## Groups not pooled

# %%
result["summary"]["not_pooled"]
