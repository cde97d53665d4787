"""The synthesize stage: every study's effects on one scale, pooled per (scale, intervention,
owners) with the exact Bayesian hierarchical model of :mod:`pipeline.synthesize_model` beside the
frequentist cross-checks of :mod:`pipeline.synthesize_frequentist`, the moderator meta-regressions,
written to data/synthesis/.

Every setting (priors, interval level, grid size, draws, seed) comes from the ``synthesize:``
params group, resolved here and passed to the model as arguments.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.synthesize_frequentist import frequentist_meta_regression, frequentist_random_effects
from pipeline.synthesize_model import Priors, baggr_default_priors, fit_hierarchical, interval_coverage, leave_one_out


def resolve_priors(effects: np.ndarray, hypermean: str, hypersd: str) -> Priors:
    """The priors of one synthesis: ``baggr`` applies baggr's default rule to these effects."""
    if hypermean != "baggr" or hypersd != "baggr":
        raise ValueError(f"synthesize: prior_hypermean / prior_hypersd {hypermean!r}/{hypersd!r}: only 'baggr' "
                         "(baggr's defaults) is implemented")
    return baggr_default_priors(effects)


def group_seed(seed: int, key: tuple[str, ...]) -> np.random.SeedSequence:
    """A seed per synthesis group from the params seed and the group's name (not its position, so
    adding a group leaves the others' draws unchanged)."""
    import zlib
    return np.random.SeedSequence([int(seed), zlib.crc32("/".join(key).encode())])


def pool_group(effects: pd.DataFrame, key: tuple[str, str, str], settings: Mapping) -> dict:
    """Pool one (scale, intervention, group): the hierarchical model, its leave-one-out and the
    frequentist random-effects cross-checks."""
    y = effects["effect"].to_numpy(float)
    se = effects["std_error"].to_numpy(float)
    labels = [f"{s}:{a}" for s, a in zip(effects["study"], effects["arm"])]
    priors = resolve_priors(y, settings["prior_hypermean"], settings["prior_hypersd"])
    fit = fit_hierarchical(y, se, labels, priors=priors, interval=settings["interval_level"],
                           n_grid=settings["tau_grid_points"])
    ids = dict(zip(("scale", "intervention", "group"), key))
    # the model pools effects (arms); a study with two arms is still one study in what is reported
    pooled = fit.pooled.assign(**ids, n_effects=len(y), n_studies=effects["study"].nunique())
    for method in ("dl", "pm"):
        fre = frequentist_random_effects(y, se, method=method, interval=settings["interval_level"])
        for name, value in fre.items():
            pooled[f"re_{method}_{name}"] = value
    if settings["coverage_draws"]:
        # at the posterior mean of mu and median of tau: how often would this interval cover?
        row = fit.pooled.iloc[0]
        coverage = interval_coverage(se, float(row["mu_mean"]), float(row["tau_median"]), priors,
                                     interval=settings["interval_level"], n_grid=settings["tau_grid_points"],
                                     draws=int(settings["coverage_draws"]), seed_sequence=group_seed(settings["seed"], key))
        for name, value in coverage.items():
            pooled[name] = value
    studies = fit.studies.assign(**ids, arm=list(effects["arm"]))
    loo = leave_one_out(y, se, labels, priors=priors, interval=settings["interval_level"],
                        n_grid=settings["tau_grid_points"]).assign(**ids)
    return {"pooled": pooled, "shrunk": studies, "leave_one_out": loo, "priors": priors}


def _study_inputs(study: str, folder: Path) -> dict:
    """What harmonising one study needs, read from its recorded stage outputs (``folder``: its
    data/processed/<study>) and its YAML."""
    from pipeline import harmonise
    from pipeline.io import read_json
    from pipeline.study import load_study, shown_path

    cfg = load_study(study)
    needed = [folder / name for name in ("estimate_summary.json", "construct_summary.json", "results.csv")]
    missing = [shown_path(p) for p in needed if not p.exists()]
    if missing:  # the synthesis reads what the evidence pipeline wrote; say how to get it
        raise FileNotFoundError(f"synthesize: study {study!r} has no estimate outputs ({', '.join(missing)}); "
                                "run `make evidence` (dvc repro evidence/dvc.yaml) first, or drop it from evidence.studies")
    summary = read_json(folder / "estimate_summary.json")
    construct = read_json(folder / "construct_summary.json")
    primary = summary["primary_outcome"]
    outcome_cfg = cfg["outcomes"].get(primary) or {}
    non_money = outcome_cfg.get("money") is False
    return {"cfg": cfg, "results": pd.read_csv(folder / "results.csv"), "primary": primary,
            "outcome_is_log": non_money and primary.startswith("log"),
            "non_money_not_log": non_money and not primary.startswith("log"),
            "share_female": float(construct.get("female_owner_share")
                                  if construct.get("female_owner_share") is not None else np.nan),
            "native": harmonise.native_unit(construct.get("currency"), construct.get("usd_ppp_per_lcu"), cfg["recall_period"])}


def collect_effects(folders: Mapping[str, Path], published: pd.DataFrame,
                    published_source: str) -> tuple[pd.DataFrame, list[str]]:
    """Every study's harmonised effects (microdata from ``folders``, study -> its data/processed
    folder, in order; then publications) and the studies left out, with why."""
    from pipeline import harmonise

    frames, left_out = [], []
    for study, folder in folders.items():
        s = _study_inputs(study, Path(folder))
        if s["non_money_not_log"]:
            left_out.append(f"{study}: primary outcome {s['primary']} is neither a money flow nor a log")
            continue
        eff = harmonise.study_effects(s["results"], study=study, arms=s["cfg"]["treatment"]["arms"],
                                      primary_outcome=s["primary"], outcome_is_log=s["outcome_is_log"],
                                      share_female_owners=s["share_female"], lender_targeted_women=np.nan,
                                      citation=" ".join(str(s["cfg"].get("citation") or "").split()), native=s["native"])
        if eff.empty:
            left_out.append(f"{study}: no single-intervention arm estimated on {s['primary']}")
        frames.append(eff)
    if not published.empty:
        frames.append(harmonise.published_effects(published, published_source))
    frames = [f for f in frames if not f.empty]
    effects = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=harmonise.EFFECT_COLUMNS)
    return effects, left_out


# Study moderators of the meta-regression: each alone (a handful of studies supports one slope),
# across skills and capital studies together so that the intervention type is one of them.
MODERATORS = ("capital_intervention", "share_female_owners", "lender_targeted_women")


def moderator_regressions(effects: pd.DataFrame) -> pd.DataFrame:
    """Per (scale, owners) and moderator: the mixed-effects meta-regression of the study effects on
    the moderator, over the effects where it is recorded, when it varies among at least three
    studies. Arms of one study enter as separate effects (their correlation is ignored: stated in
    ``note``)."""
    frames = []
    effects = effects.assign(capital_intervention=(effects["intervention"] == "capital").astype(float))
    for (scale, group), rows in effects.groupby(["scale", "group"], sort=True):
        for moderator in MODERATORS:
            known = rows[rows[moderator].notna()]
            if known["study"].nunique() < 3 or known[moderator].nunique() < 2:
                continue
            fit = frequentist_meta_regression(known["effect"], known["std_error"], known[[moderator]])
            if fit.empty:
                continue
            several_arms = known["study"].duplicated().any()
            frames.append(fit.assign(scale=scale, group=group, moderator=moderator,
                                     studies=", ".join(sorted(known["study"].unique())),
                                     note="arms of one study treated as independent" if several_arms else ""))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def attach_moderators(effects: pd.DataFrame, moderators: pd.DataFrame, source: str,
                      known_studies: Sequence[str]) -> pd.DataFrame:
    """Study-level moderators from the moderators file (one row per study) onto the microdata
    studies' effects; a value in the effects (a publication's own row) is kept."""
    required = ["study", "lender_targeted_women", "source"]
    missing = [c for c in required if c not in moderators.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; expected {required}")
    dup = moderators[moderators["study"].duplicated(keep=False)]
    if not dup.empty:
        raise ValueError(f"{source}: studies listed more than once (file lines {list(dup.index + 2)})")
    values = pd.to_numeric(moderators["lender_targeted_women"], errors="coerce")
    bad = moderators[(moderators["lender_targeted_women"].notna() & values.isna()) | ~values.isin([0, 1]) & values.notna()]
    if not bad.empty:
        raise ValueError(f"{source}: lender_targeted_women must be 0, 1 or empty (file lines {list(bad.index + 2)})")
    unknown = sorted(set(moderators["study"]) - set(known_studies))
    if unknown:
        raise ValueError(f"{source}: studies {unknown} are neither configured (studies/<name>.yaml) nor in the "
                         "published effects (misspelt?)")
    mapped = effects["study"].map(dict(zip(moderators["study"], values)))
    return effects.assign(lender_targeted_women=effects["lender_targeted_women"].astype(float).fillna(mapped))


def synthesize(effects: pd.DataFrame, settings: Mapping) -> dict:
    """Pool every (scale, intervention, group) with at least ``min_studies`` distinct studies."""
    from pipeline import harmonise

    pooled, shrunk, loo, not_pooled, priors = [], [], [], [], {}
    effects = effects[effects["scale"].isin(settings["scales"])]
    for key in harmonise.synthesis_groups(effects):
        mask = (effects["scale"] == key[0]) & (effects["intervention"] == key[1]) & (effects["group"] == key[2])
        group = effects[mask]
        if group["study"].nunique() < settings["min_studies"]:
            not_pooled.append(f"{key[1]}, {key[2]}, {key[0]}: {group['study'].nunique()} study "
                              f"(fewer than min_studies = {settings['min_studies']})")
            continue
        out = pool_group(group, key, settings)
        pooled.append(out["pooled"]), shrunk.append(out["shrunk"]), loo.append(out["leave_one_out"])
        priors["/".join(key)] = vars(out["priors"])
    meta = moderator_regressions(effects)
    cat = lambda frames: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()  # noqa: E731
    return {"pooled": cat(pooled), "shrunk": cat(shrunk), "leave_one_out": cat(loo), "meta_regression": meta,
            "not_pooled": not_pooled, "priors": priors}


def run(context) -> dict:
    """The synthesize stage (``context``: a :class:`pipeline.stage_context.StageContext`):
    harmonise each study's outputs (``inputs["processed/<study>"]``), pool, write the outputs
    (data/synthesis/; all files or none). The summary records the params group and the studies."""
    from pipeline.io import REPO_ROOT, write_csv, write_json

    params, studies = context.params, list(context.studies)
    source = str(params["published_effects"])
    published = pd.read_csv(REPO_ROOT / source)
    effects, left_out = collect_effects({s: context.inputs[f"processed/{s}"] for s in studies}, published, source)
    moderators_source = str(params["moderators"])
    configured = [p.stem for p in (REPO_ROOT / "studies").glob("*.yaml")]
    effects = attach_moderators(effects, pd.read_csv(REPO_ROOT / moderators_source), moderators_source,
                                [*configured, *published["study"]])
    out = synthesize(effects, params)
    frequentist = (out["pooled"].filter(regex="^(scale|intervention|group|n_studies|re_)") if not out["pooled"].empty
                   else out["pooled"])
    summary = {"studies": list(studies), "published_effects": source, "n_published": int(len(published)),
               "moderators": {"file": moderators_source, "regressed_on": list(MODERATORS),
                              "note": "one moderator per regression, skills and capital studies together"},
               "settings": dict(params), "left_out": left_out, "not_pooled": out["not_pooled"], "priors": out["priors"],
               "priors_note": "Priors: baggr's defaults for the rubin model, per group: "
                              "hypermean ~ normal(0, 10 × max |effect|), between-study SD ~ uniform(0, 10 × SD of the effects)."}
    tables = {"study_effects.csv": effects, "pooled.csv": out["pooled"], "shrunk.csv": out["shrunk"],
              "leave_one_out.csv": out["leave_one_out"], "meta_regression.csv": out["meta_regression"],
              "frequentist.csv": frequentist}
    for name, table in tables.items():
        write_csv(context.outputs[name], table if len(table.columns) else pd.DataFrame({"status": ["nothing to pool"]}))
    write_json(context.outputs["synthesize_summary.json"], summary)
    return {**out, "study_effects": effects, "summary": summary}
