"""Provenance of a report: package and project versions, the git commit, the md5 of every stage
input recorded in dvc.lock, and how the key estimates moved since the last committed version."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from pipeline import paths

PACKAGES = ["pandas", "numpy", "scipy", "statsmodels", "pyarrow", "dvc", "papermill", "matplotlib"]


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def project_version() -> str:
    try:
        return metadata.version("microenterprise-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(*args: str) -> str | None:
    import subprocess
    try:
        proc = subprocess.run(["git", *args], cwd=paths.root(), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state() -> dict:
    """The commit the code came from and whether tracked source files differed from it.

    DVC rewrites dvc.lock and the git-tracked metrics while the pipeline runs, so those two
    are not counted as "dirty"; nothing here depends on the clock.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)dvc.lock", ":(exclude)reports/metrics.json", ":(exclude,glob)**/.gitignore")
    return {"commit": commit or "unknown", "dirty": bool(status) if status is not None else None}


def input_hashes(lock_path: Path | None = None) -> list[dict]:
    """md5 of every stage input recorded in dvc.lock (raw data, configs, code, notebooks)."""
    import yaml

    lock_path = lock_path or paths.root() / "dvc.lock"
    if not lock_path.exists():
        return []
    lock = yaml.safe_load(lock_path.read_text()) or {}
    rows = {}
    for stage, spec in (lock.get("stages") or {}).items():
        if stage == "report":  # its own entry is from the previous run: not an input of this one
            continue
        for dep in spec.get("deps", []):
            rows.setdefault(dep["path"], {"path": dep["path"], "md5": dep.get("md5", ""), "stages": []})["stages"].append(stage)
    return [{**r, "stages": ", ".join(r["stages"])} for _, r in sorted(rows.items())]


def previous_metrics(path: str = "reports/metrics.json") -> dict | None:
    """The metrics of the last committed version (HEAD), to show how the estimates moved."""
    import json

    text = _git("show", f"HEAD:{path}")
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def metric_changes(current: dict, previous: dict | None) -> list[dict]:
    """Estimate now vs at HEAD for every key estimate present in both."""
    if not previous:
        return []
    rows = []
    for study, block in current.items():
        if not isinstance(block, dict):
            continue
        for key, entry in block.items():
            old = (previous.get(study) or {}).get(key) if isinstance(previous.get(study), dict) else None
            if isinstance(entry, dict) and isinstance(old, dict) and "estimate" in entry and "estimate" in old:
                rows.append({"study": study, "effect": key, "previous": old["estimate"], "current": entry["estimate"],
                             "change": entry["estimate"] - old["estimate"]})
    return rows
