"""The typed model of params.yaml (pipeline/params.py): every group checked, unknown keys and wrong
types rejected, and no value supplied by code: the configuration a stage resolves is params.yaml
plus the study's YAML, nothing else."""
from __future__ import annotations

import ast
import contextlib
import copy
import json
import re

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
    """The estimate stage overlays the study's estimate: block on the params group and splits the
    result into Spec fields and stage keys, adding nothing; the synthetic generator likewise
    takes its group as it is."""
    from pipeline import synthetic
    from pipeline.estimation import spec as estimate
    group = raw["estimate"]
    assert set(group) == set(config.ESTIMATE_KEYS)
    for study in [*raw["studies"], *raw["evidence"]["studies"]]:
        cfg = load_study(study)
        resolved = estimate.study_params(group, cfg)
        block = dict(cfg.get("estimate") or {})
        if block.get("controls") == "config":
            block["controls"] = cfg["controls"]
        assert resolved == {**group, **block}, study              # params.yaml, the study on top
        spec_params, stage = estimate.split_params(resolved)
        assert set(stage) - {"ignored"} == set(config.STAGE_FIELDS)
        assert {k: stage[k] for k in config.STAGE_FIELDS} == {k: resolved[k] for k in config.STAGE_FIELDS}
        changed = {k for k in spec_params if spec_params[k] != resolved[k]}
        assert changed <= {"vcov"}, study                        # only the documented HC1 -> CR1 rewrite
    assert synthetic.resolve_params(raw["synthetic"]) == raw["synthetic"]
    assert set(raw["clean"]) == set(config.CLEAN_FIELDS)


# --------------------------------------------------------------------------------------------
# No default in code: params.yaml is the one place a value is set
# --------------------------------------------------------------------------------------------
def _group_keys(raw: dict):
    """(path, key) of every key of every group (nested groups: studies and evidence.studies entries)."""
    for group, body in raw.items():
        yield (group,)
        for key, value in body.items():
            yield (group, key)
            if group in ("studies", "evidence") and isinstance(value, dict):
                for inner, entry in value.items():
                    yield (group, key, inner)
                    if isinstance(entry, dict):
                        for leaf in entry:
                            yield (group, key, inner, leaf)


def test_deleting_any_key_makes_load_params_fail_naming_it(raw, tmp_path):
    import yaml
    paths = list(_group_keys(raw))
    assert len(paths) > 100
    for path in paths:
        broken = copy.deepcopy(raw)
        parent = broken
        for part in path[:-1]:
            parent = parent[part]
        if path[:-1] in (("studies",), ("evidence", "studies")):
            continue                                              # a study's name is a value, not a key of the model
        del parent[path[-1]]
        file = tmp_path / "params.yaml"
        file.write_text(yaml.safe_dump(broken, sort_keys=False))
        with pytest.raises(ParamsError) as err:
            load_params(file)
        assert f"{'.'.join(map(str, path))}: required key missing" in str(err.value), (path, str(err.value))


def test_spec_has_no_field_default_and_its_fields_are_the_models():
    """Spec's fields are the typed model's SPEC_FIELDS (one list), none with a default: leaving
    any one out of the constructor fails, naming it."""
    from dataclasses import MISSING, fields

    from pipeline.estimation.spec import Spec
    names = [f.name for f in fields(Spec)]
    assert set(names) - {"outcome"} == set(config.SPEC_FIELDS)
    assert all(f.default is MISSING and f.default_factory is MISSING for f in fields(Spec))
    full = {"outcome": "y", "treatments": ["treat_skills"], "interact_treatments": True, "baseline_control": True,
            "fixed_effects": ["round"], "cluster": "cluster_id", "weights": None, "controls": [],
            "followup_only": True, "gender_interact_all": True, "vcov": "CR1", "missing_baseline": "dummy"}
    Spec(**full)                                                  # complete: builds
    for name in names:
        with pytest.raises(TypeError, match=f"'{name}'"):
            Spec(**{k: v for k, v in full.items() if k != name})


def _split(g):
    from pipeline.estimation.spec import split_params
    return split_params(g)


def _spec(g):
    from pipeline.estimation.spec import Spec
    return Spec.from_params(g, "y")


def _salt(g):
    from pipeline.privacy import hash_salt
    return hash_salt(g)


def _synthetic(g):
    from pipeline.synthetic import resolve_params
    return resolve_params(g)


@pytest.mark.parametrize("group,call,needs", [
    ("estimate", _split, lambda raw: set(raw["estimate"])),
    ("estimate", _spec, lambda raw: set(config.SPEC_FIELDS)),          # stage keys are not its business
    ("ingest", _salt, lambda raw: {"hash_salt"}),                        # hash_salt set: the env var is not read
    ("synthetic", _synthetic, lambda raw: set(raw["synthetic"])),
])
def test_a_group_missing_a_key_fails_at_the_call_naming_it(raw, group, call, needs):
    """A function given a group built by hand without a key it reads does not fall back: it
    raises, naming the group and the key."""
    from pipeline.io import MissingParamError
    full = {**raw[group], **({"hash_salt": "s"} if group == "ingest" else {})}
    failed = set()
    for key in full:
        with pytest.raises(MissingParamError) if key in needs(raw) else contextlib.nullcontext() as err:
            call({k: v for k, v in full.items() if k != key})
        if err is not None:
            assert f"params group '{group}' has no key '{key}'" in str(err.value)
            failed.add(key)
    assert failed == needs(raw)


# The names pipeline/ code gives a mapping holding a params group (or a part of one).
# (A study's ``estimate:`` block is not among them: its keys are optional overrides by design.)
PARAMS_HOLDERS = re.compile(r"^(params|\w+_params|stage|sp|p|group|settings|spec_kw)$")


def params_fallbacks(source: str, keys: set[str], filename: str = "<source>") -> list[str]:
    """Every ``<holder>.get("<key>", ...)`` in ``source`` where ``<holder>`` names a params mapping
    (PARAMS_HOLDERS) and ``<key>`` is a key of a params group: a value read with a fallback in code.
    A one-argument get is a fallback too (to None)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "setdefault", "pop")):
            continue
        holder = node.func.value
        if not (isinstance(holder, ast.Name) and PARAMS_HOLDERS.match(holder.id)):
            continue
        if node.func.attr == "pop" and len(node.args) < 2:
            continue                                              # pop(key) without a default raises: fine
        if node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys:
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def _params_keys(raw: dict) -> set[str]:
    return {key for body in raw.values() if isinstance(body, dict) for key in body} - set(raw["studies"])


def test_no_params_fallback_in_pipeline_code(raw):
    keys = _params_keys(raw)
    found = []
    for path in sorted((REPO_ROOT / "pipeline").rglob("*.py")):
        found += params_fallbacks(path.read_text(), keys, str(path.relative_to(REPO_ROOT)))
    assert not found, "\n".join(found)


def test_the_fallback_check_catches_a_planted_default_and_spares_other_gets(raw):
    keys = _params_keys(raw)
    planted = """
def clean(df, cfg, params, spec_params):
    upper = params.get("winsor_upper_pct", 99)
    vcov = spec_params.get("vcov", "CR1")
    salt = params.get("hash_salt")
    currency = cfg.get("currency", "lcu")          # a study's YAML, not a params group
    flow = out.get("flow", True)                   # an outcome entry
    label = labels.get("seed", "")                 # an unrelated mapping, even with a params key
    return params["duplicate_rule"]
"""
    found = params_fallbacks(planted, keys)
    assert [line.split(": ", 1)[1] for line in found] == [
        "params.get('winsor_upper_pct', 99)", "spec_params.get('vcov', 'CR1')", "params.get('hash_salt')"]


@pytest.mark.parametrize("change,message", [
    (lambda p: p["clean"].update(winsor_upper=99),
     "clean: unknown key 'winsor_upper' ('winsor_upper': did you mean 'winsor_upper_pct'?)"),
    (lambda p: p.update(estimat={}), "(top level): unknown key 'estimat' ('estimat': did you mean 'estimate'?)"),
    (lambda p: p["estimate"].update(weight=None), "estimate: unknown key 'weight' ('weight': did you mean 'weights'?)"),
    (lambda p: p["evidence"]["studies"]["acz2018"].update(data=""), "evidence.studies.acz2018: unknown key 'data'"),
    (lambda p: p["construct"].update(skills_min_share=0.5), "construct: unknown key 'skills_min_share'"),
    (lambda p: p["clean"].update(winsor_by_round="false"),
     "clean.winsor_by_round: Input should be a valid boolean (got 'false')"),
    (lambda p: p["estimate"].update(seed="1"), "estimate.seed: Input should be a valid integer (got '1')"),
    (lambda p: p["estimate"].update(fixed_effects="round"), "estimate.fixed_effects: Input should be a valid list"),
    (lambda p: p["simulation"].update(draws=2000.5), "simulation.draws: Input should be a valid integer"),
    (lambda p: p["simulation"].update(variants=["no_typo"]),
     "simulation.variants[0]: Input should be 'no_typos' or 'as_configured' (got 'no_typo')"),
    (lambda p: p["simulation"].update(variants=[]), "simulation.variants: List should have at least 1 item"),
    (lambda p: p["simulation"].update(outcomes=["winsorised", "winsorised"]),
     "simulation.outcomes: listed more than once: winsorised (got ['winsorised', 'winsorised'])"),
    (lambda p: p["clean"].update(flow_period="fortnight"), "clean.flow_period: Input should be 'day'"),
    (lambda p: p["clean"].update(duckdb_memory_limit="2 gigs"), "clean.duckdb_memory_limit: String should match pattern"),
    (lambda p: p["clean"].update(duckdb_memory_limit=2), "clean.duckdb_memory_limit: Input should be a valid string"),
    (lambda p: p["estimate"].pop("weights"), "estimate.weights: required key missing"),
    (lambda p: p.pop("report"), "report: required key missing"),
])
def test_mistakes_are_rejected_naming_the_key(raw, change, message):
    change(raw)
    with pytest.raises(ParamsError) as err:
        validate_params(raw, "params.yaml")
    assert str(err.value).startswith("params.yaml: ") and message in str(err.value), str(err.value)
