"""Build notebooks/*.ipynb from their paired percent-format .py sources (no outputs, explicit kernel).

    python scripts/sync_notebooks.py          # write the .ipynb files
    python scripts/sync_notebooks.py --check  # exit 1 if any .ipynb is out of date
"""
from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"name": "microenterprise", "display_name": "Python (microenterprise pipeline)", "language": "python"}


def build(py_path: Path) -> str:
    nb = jupytext.read(py_path, fmt="py:percent")
    nb.metadata = {
        "kernelspec": KERNELSPEC,
        "language_info": {"name": "python"},
        "jupytext": {"formats": "ipynb,py:percent"},
    }
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{py_path.stem}-{i:02d}"  # stable cell ids: no random ids in diffs
    return nbformat.writes(nb) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for py_path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        text = build(py_path)
        target = py_path.with_suffix(".ipynb")
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(target.relative_to(ROOT))
            if not check:
                target.write_text(text, encoding="utf-8")
    if check and stale:
        print("out of date (run python scripts/sync_notebooks.py):", *stale, sep="\n  ")
        return 1
    if not check:
        print("wrote", *stale, sep="\n  ") if stale else print("notebooks up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
