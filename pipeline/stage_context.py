"""One contract for every stage: ``module.run(context) -> dict``.

A :class:`StageContext` holds what a stage may use: its name and pipeline, the study it runs on
(name and resolved configuration; None for pipeline-level stages), its params group with the
other keys it reads (``EXTRA_PARAMS``), and its named input and output paths. :func:`build` derives
the inputs and outputs from the stage's entry in ``dvc.yaml`` / ``evidence/dvc.yaml`` (``foreach``
and ``${key}`` / ``${item.*}`` resolved for the study), so the dvc.yaml files are the single source of
where a stage reads and writes; ``pipeline/run_stage.py`` takes its all-or-nothing output list from
the same derivation. Tests build a context with ``root`` under a temporary folder instead of
redirecting path functions.

Names: an input or output is named by its last path component (``clean.parquet``, ``tables``), a
per-study folder read by a pipeline-level stage by its parent and study (``processed/acz2018``),
and a ``${item.<key>}`` dependency by the key (``data_dir``, the study's raw files). Code and
configuration dependencies (``pipeline/``, ``notebooks/``, ``studies/``) are not inputs: the code
is imported and the study's configuration is in ``context.config``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from pipeline import paths
from pipeline.io import REPO_ROOT, load_params, read_yaml

# What a stage's notebook receives from params.yaml beyond its own group (injected as
# ``stage_params``): notebook parameter -> params key. With the study's entry (per-study stages) or
# the pipeline's study list (STUDY_LIST_STAGES) this is everything a stage reads; dvc.yaml declares
# exactly these keys (tests/test_dvc_wiring.py), and the executed notebook records their values.
EXTRA_PARAMS: dict[str, dict[str, str]] = {
    "construct": {"flow_period": "clean.flow_period", "engine": "clean.engine",
                  "duckdb_memory_limit": "clean.duckdb_memory_limit"},
    "report": {"flow_period": "clean.flow_period"},
    "simulation": {"synthetic_params": "synthetic", "clean_params": "clean", "construct_params": "construct",
                   "estimate_params": "estimate"},
}
# Pipeline-level stages that read every study of their pipeline (given the study list).
STUDY_LIST_STAGES = ("report", "synthesize")
# Dependencies that are code or configuration, not data the stage reads through ``inputs``.
CODE_DEPS = ("pipeline", "notebooks", "studies")


def is_code_dep(path: str) -> bool:
    """Whether a dvc.yaml dependency is code or configuration (under CODE_DEPS), not a data input."""
    return Path(path).parts[0] in CODE_DEPS

# Params whose value is a secret (the pseudonym salt): a summary records whether it is set, never the value.
SECRET_PARAMS = ("hash_salt",)

_ITEM = re.compile(r"^\$\{item\.(\w+)\}$")


@dataclass(frozen=True)
class StageContext:
    """Everything one run of a stage uses; ``inputs`` and ``outputs`` are absolute paths."""
    stage: str
    pipeline: str = "main"
    study: str | None = None                      # the study's name (per-study stages)
    config: Mapping[str, Any] | None = None       # its resolved configuration (pipeline.study.load_study)
    params: Mapping[str, Any] = field(default_factory=dict)   # the stage's params group
    extra: Mapping[str, Any] = field(default_factory=dict)    # the EXTRA_PARAMS values, by notebook name
    studies: tuple[str, ...] = ()                 # the pipeline's studies (STUDY_LIST_STAGES)
    inputs: Mapping[str, Path] = field(default_factory=dict)
    outputs: Mapping[str, Path] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("params", "extra", "inputs", "outputs"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def resolved_config(self) -> dict:
        """What the stage ran with, for its summary JSON: the params group, the extra keys and the
        study's configuration as resolved (the pipeline's private ``_`` keys left out)."""
        record: dict[str, Any] = {"params": {k: ("(set, not recorded)" if k in SECRET_PARAMS and v is not None else v)
                                             for k, v in self.params.items()}}
        if self.extra:
            record["extra"] = dict(self.extra)
        if self.config is not None:
            record["study"] = {k: v for k, v in self.config.items() if not str(k).startswith("_")}
        if self.studies:
            record["studies"] = list(self.studies)
        return record


def stage_entry(stage: str, pipeline: str = "main") -> dict:
    """The stage's entry in the pipeline's dvc.yaml (the ``do:`` part of a ``foreach`` stage)."""
    if pipeline not in paths.PIPELINE_FILES:
        raise KeyError(f"unknown pipeline {pipeline!r} (known: {', '.join(paths.PIPELINE_FILES)})")
    stages = read_yaml(paths.pipeline_file(pipeline))["stages"]
    if stage not in stages:
        raise KeyError(f"unknown stage {stage!r}: {paths.PIPELINE_FILES[pipeline]} declares "
                       f"{', '.join(stages)}")
    spec = stages[stage]
    return {**spec["do"], "foreach": spec["foreach"]} if "foreach" in spec else spec


def per_study_stages(pipeline: str = "main") -> list[str]:
    """The stages that run once per study (``foreach``), in the pipeline's order."""
    stages = read_yaml(paths.pipeline_file(pipeline))["stages"]
    return [name for name, spec in stages.items() if "foreach" in spec]


def _entries(spec: dict, *sections: str) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for s in sections for e in spec.get(s, []) or []]


def _resolve(template: str, study: str | None, item: Mapping[str, Any]) -> tuple[str | None, str]:
    """(name given by an ``${item.<key>}`` template or None, the path with ``${key}``/``${item.*}`` filled)."""
    match = _ITEM.match(template)
    if match:
        key = match.group(1)
        if key not in item:
            raise KeyError(f"study {study!r}: its params entry has no {key!r} (read by {template})")
        return key, str(item[key])
    if study is not None:
        template = template.replace("${key}", study)
    if "${" in template:
        raise KeyError(f"{template}: cannot resolve for study {study!r}")
    return None, template


def _named(resolved: list[tuple[str | None, str]], studies: set[str], root: Path) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for name, rel in resolved:
        path = Path(rel)
        if name is None:
            name = f"{path.parent.name}/{path.name}" if path.name in studies else path.name
        if name in named:
            raise ValueError(f"two paths named {name!r}: {named[name]} and {rel}")
        named[name] = root / rel
    return named


def derive_paths(stage: str, study: str | None = None, pipeline: str = "main", root: Path | None = None,
                 studies: Mapping[str, Any] | None = None) -> tuple[dict[str, Path], dict[str, Path]]:
    """(inputs, outputs) of the stage as its dvc.yaml entry declares them, under ``root`` (default:
    the repository). ``studies``: the pipeline's study entries (from params.yaml)."""
    spec = stage_entry(stage, pipeline)
    root = Path(root or REPO_ROOT)
    studies = studies if studies is not None else studies_of(load_params(), pipeline)
    if "foreach" in spec and study is None:
        raise ValueError(f"stage {stage!r} runs once per study: give the study")
    item = studies.get(study, {}) if study is not None else {}
    deps = [_resolve(d, study, item) for d in _entries(spec, "deps") if not is_code_dep(d)]
    outs = [_resolve(o, study, item) for o in _entries(spec, "outs", "metrics", "plots")]
    names = set(studies) | ({study} if study else set())
    return _named(deps, names, root), _named(outs, names, root)


def studies_of(params: dict, pipeline: str) -> dict:
    """The studies a pipeline runs: ``studies:`` (default run) or ``<pipeline>.studies:``."""
    if pipeline == "main":
        return dict(params["studies"])
    return dict(params[pipeline]["studies"])


def params_value(params: dict, key: str):
    """``params["a"]["b"]`` for key ``a.b``, naming the key when it is absent."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"params.yaml has no {key!r} (read by a stage; see pipeline/stage_context.py EXTRA_PARAMS)")
        node = node[part]
    return node


def build(stage: str, study: str | Path | None = None, *, pipeline: str = "main", params: dict | None = None,
          group: Mapping | None = None, extra: Mapping | None = None, studies: list[str] | None = None,
          root: Path | None = None, inputs: Mapping[str, Path] | None = None) -> StageContext:
    """The context of one run of ``stage``.

    ``study``: a name listed in the pipeline's studies, or a path to a study YAML (tests; its
    ``${item.*}`` inputs such as ``data_dir`` must then be given in ``inputs``). ``params``: the
    whole params.yaml (default: the repository's, checked). ``group``, ``extra``, ``studies``:
    the values papermill injected, which replace those read from ``params``. ``root``: the folder
    the dvc.yaml paths are relative to (default: the repository). ``inputs``: named inputs that
    replace the derived ones (a test's raw folder)."""
    from pipeline.study import load_study   # here: pipeline.study imports paths, which this module extends

    stage_entry(stage, pipeline)           # an unknown stage or pipeline fails here, naming it
    params = params if params is not None else load_params()
    listed = studies_of(params, pipeline)
    config, name, item_given = None, None, dict(inputs or {})
    if study is not None:
        by_path = str(study).endswith((".yaml", ".yml"))
        if not by_path and str(study) not in listed:
            raise KeyError(f"study {str(study)!r} is not listed in the {pipeline!r} pipeline's studies "
                           f"({', '.join(listed) or 'none'})")
        config = load_study(study)
        name = config["study"]
        if name not in listed:
            listed = {**listed, name: {k: v for k, v in item_given.items()}}
    derived_in, derived_out = derive_paths(stage, name, pipeline, root, listed)
    extra_values = {n: params_value(params, key) for n, key in EXTRA_PARAMS.get(stage, {}).items()}
    extra_values.update({k: v for k, v in (extra or {}).items() if v is not None})
    return StageContext(
        stage=stage, pipeline=pipeline, study=name, config=config,
        params=dict(group if group is not None else params.get(stage, {}) or {}),
        extra=extra_values,
        studies=tuple(studies if studies is not None else (listed if stage in STUDY_LIST_STAGES else ())),
        inputs={**derived_in, **{k: Path(v) for k, v in item_given.items()}},
        outputs=derived_out)
