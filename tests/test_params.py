"""The typed model of params.yaml (pipeline/params.py): every group checked, unknown keys and wrong
types rejected, and no value supplied by code: the configuration a stage resolves is params.yaml
plus the study's YAML, nothing else."""
from __future__ import annotations

import copy
import json

import pytest

from pipeline import config, params
from pipeline.io import REPO_ROOT, load_params
from pipeline.params import ParamsError, validate_params
from pipeline.study import load_study


@pytest.fixture
def raw() -> dict:
    return load_params()


def test_params_yaml_validates_to_itself(raw):
    checked = validate_params(copy.deepcopy(raw))
    assert json.dumps(checked) == json.dumps(raw)             # same keys, values, order: nothing added


def test_no_model_supplies_a_value():
    """Every key of every group is required (a nullable key must still be written, as null)."""
    def blocks(model, seen=()):
        yield model
        for field in model.model_fields.values():
            inner = config._unwrap(field.annotation)
            for candidate in (inner, *getattr(inner, "__args__", ())):
                if isinstance(candidate, type) and issubclass(candidate, config.Block) and candidate not in seen:
                    yield from blocks(candidate, (*seen, model))
    found = list(blocks(params.Params))
    assert {m.__name__ for m in found} >= {"Synthetic", "Ingest", "Clean", "Construct", "Estimate", "Simulation",
                                          "Report", "Synthesize", "Evidence", "StudyEntry"}
    for model in found:
        if model is config.EstimateSample:                    # the shape of a value (sample: {...}), not a group
            continue
        optional = [name for name, field in model.model_fields.items() if not field.is_required()]
        assert not optional, (model.__name__, optional)


def test_the_resolved_configuration_is_params_yaml_plus_the_study_yaml(raw):
    """The estimate stage overlays the study's estimate: block on the params group; every key its
    code has a fallback for (Spec fields, STAGE_DEFAULTS) is in params.yaml, so no fallback is used.
    The synthetic generator's defaults likewise never apply."""
    from pipeline import synthetic
    from pipeline.estimation import spec as estimate
    group = raw["estimate"]
    assert set(group) == set(estimate.ESTIMATE_KEYS)
    for study in [*raw["studies"], *raw["evidence"]["studies"]]:
        cfg = load_study(study)
        resolved = estimate.study_params(group, cfg)
        block = dict(cfg.get("estimate") or {})
        if block.get("controls") == "config":
            block["controls"] = cfg["controls"]
        assert resolved == {**group, **block}, study              # params.yaml, the study on top
        spec_params, stage = estimate.split_params(resolved)
        assert all(key in resolved for key in estimate.STAGE_DEFAULTS)
        assert {k: stage[k] for k in estimate.STAGE_DEFAULTS} == {k: resolved[k] for k in estimate.STAGE_DEFAULTS}
    assert synthetic.resolve_params(raw["synthetic"]) == {**synthetic.DEFAULT_PARAMS, **raw["synthetic"]}
    assert set(raw["synthetic"]) == set(synthetic.DEFAULT_PARAMS)
    assert set(raw["clean"]) == set(config.CLEAN_FIELDS)


@pytest.mark.parametrize("change,message", [
    (lambda p: p["clean"].update(winsor_upper=99), "clean: unknown key 'winsor_upper' ('winsor_upper': did you mean 'winsor_upper_pct'?)"),
    (lambda p: p.update(estimat={}), "(top level): unknown key 'estimat' ('estimat': did you mean 'estimate'?)"),
    (lambda p: p["estimate"].update(weight=None), "estimate: unknown key 'weight' ('weight': did you mean 'weights'?)"),
    (lambda p: p["evidence"]["studies"]["acz2018"].update(data=""), "evidence.studies.acz2018: unknown key 'data'"),
    (lambda p: p["construct"].update(skills_min_share=0.5), "construct: unknown key 'skills_min_share'"),
    (lambda p: p["clean"].update(winsor_by_round="false"), "clean.winsor_by_round: Input should be a valid boolean (got 'false')"),
    (lambda p: p["estimate"].update(seed="1"), "estimate.seed: Input should be a valid integer (got '1')"),
    (lambda p: p["estimate"].update(fixed_effects="round"), "estimate.fixed_effects: Input should be a valid list"),
    (lambda p: p["simulation"].update(draws=2000.5), "simulation.draws: Input should be a valid integer"),
    (lambda p: p["clean"].update(flow_period="fortnight"), "clean.flow_period: Input should be 'day'"),
    (lambda p: p["estimate"].pop("weights"), "estimate.weights: required key missing"),
    (lambda p: p.pop("report"), "report: required key missing"),
])
def test_mistakes_are_rejected_naming_the_key(raw, change, message):
    change(raw)
    with pytest.raises(ParamsError) as err:
        validate_params(raw, "params.yaml")
    assert str(err.value).startswith("params.yaml: ") and message in str(err.value), str(err.value)
