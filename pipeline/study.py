"""Study configurations: one YAML file per study in ``studies/`` maps a raw survey onto the
canonical schema (see ``studies/synthetic.yaml`` for a documented example)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.io import REPO_ROOT, read_yaml

REQUIRED_KEYS = ("study", "files", "unit_id", "treatment", "outcomes")


class StudyConfigError(ValueError):
    """A study configuration is incomplete or inconsistent."""


def load_study(study: str | Path) -> dict[str, Any]:
    """Read and check a study configuration by name (``studies/<name>.yaml``) or path."""
    path = Path(study) if str(study).endswith((".yaml", ".yml")) else paths.study_config_path(str(study))
    if not path.exists():
        raise StudyConfigError(f"{path}: no such study configuration")
    cfg = read_yaml(path) or {}
    missing = [key for key in REQUIRED_KEYS if key not in cfg]
    if missing:
        raise StudyConfigError(f"{path}: missing required keys {missing}")
    cfg.setdefault("identifiers", [])
    cfg.setdefault("missing_codes", {})
    cfg.setdefault("round", None)
    cfg.setdefault("baseline_round", None)
    cfg.setdefault("submission", None)
    cfg.setdefault("strata", [])
    cfg.setdefault("cluster", None)
    cfg.setdefault("weight", None)
    cfg.setdefault("valid_ranges", {})
    cfg.setdefault("covariates", {})
    cfg["missing_codes"] = {int(k): str(v) for k, v in cfg["missing_codes"].items()}
    cfg["_path"] = str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
    return cfg


def resolve_file(entry: dict, data_dir: str | Path) -> Path:
    """A configured file: relative paths are relative to the study's data folder, which
    params.yaml gives (``studies.<name>.data_dir``, itself relative to the repository root)."""
    path = Path(entry["path"])
    if path.is_absolute():
        return path
    base = Path(data_dir)
    return (base if base.is_absolute() else REPO_ROOT / base) / path
