"""A pipeline module as it was at a git revision, imported beside today's: the benchmarks' "old" side."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def module_at(revision: str, module_path: str, name: str):
    """``module_path`` (e.g. ``pipeline/balance.py``) at ``revision``, imported as module ``name``
    from a temporary file (its own imports resolve to today's package)."""
    source = subprocess.run(["git", "show", f"{revision}:{module_path}"], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # dataclasses of the module look themselves up here
    spec.loader.exec_module(module)
    return module
