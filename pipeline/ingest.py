"""Ingest: raw survey file -> typed interim table + codebook, direct identifiers dropped.

Value labels are not applied here: the interim table keeps the raw codes (so that the
cleaning rules can see survey missing-value codes such as -98), and the codebook records
every column's label and value labels so nothing of the raw file's documentation is lost.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline import paths
from pipeline.io import file_sha256, write_csv, write_json, write_parquet
from pipeline.study import load_study, resolve_file


class IngestError(ValueError):
    """A raw file cannot be ingested; the message names the file and the problem."""


def read_dta(path: Path) -> tuple[pd.DataFrame, dict[str, dict], dict[str, str]]:
    """Read a Stata file keeping codes; return (data, value labels by column, variable labels)."""
    try:
        with pd.read_stata(path, iterator=True, convert_categoricals=False,
                           convert_missing=False, preserve_dtypes=True) as reader:
            data = reader.read()
            label_sets = reader.value_labels()
            variable_labels = reader.variable_labels()
            # which label set each column uses
            label_names = dict(zip(reader._varlist, reader._lbllist))
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise IngestError(f"{path}: cannot read as Stata .dta ({type(exc).__name__}: {exc})") from exc
    value_labels = {
        col: {int(k): str(v) for k, v in label_sets.get(name, {}).items()}
        for col, name in label_names.items() if name and name in label_sets
    }
    return data, value_labels, dict(variable_labels)


def read_raw(path: Path, fmt: str) -> tuple[pd.DataFrame, dict[str, dict], dict[str, str]]:
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: file is empty")
    if fmt == "dta":
        return read_dta(path)
    if fmt == "csv":
        try:
            return pd.read_csv(path), {}, {}
        except Exception as exc:  # noqa: BLE001
            raise IngestError(f"{path}: cannot read as CSV ({type(exc).__name__}: {exc})") from exc
    if fmt == "parquet":
        return pd.read_parquet(path), {}, {}
    raise IngestError(f"{path}: unsupported format {fmt!r}")


def verify_checksum(path: Path, expected_sha256: str | None) -> str:
    actual = file_sha256(path)
    if expected_sha256 and actual != expected_sha256.lower():
        raise IngestError(f"{path}: sha256 {actual} does not match the configured {expected_sha256}")
    return actual


def drop_identifiers(data: pd.DataFrame, identifiers: list[str], source: str) -> pd.DataFrame:
    """Remove direct identifiers; a configured identifier absent from the file is an error
    (a renamed column would otherwise leak silently)."""
    missing = [c for c in identifiers if c not in data.columns]
    if missing:
        raise IngestError(f"{source}: configured identifier columns {missing} not in the file")
    return data.drop(columns=list(identifiers))


def require_columns(data: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c and c not in data.columns]
    if missing:
        raise IngestError(f"{source}: required columns {missing} not in the file "
                          f"(it has {len(data.columns)} columns)")


def configured_columns(cfg: dict) -> list[str]:
    """Every raw column a study configuration refers to (they must all exist)."""
    cols = [cfg["unit_id"], cfg.get("round"), cfg.get("cluster"), cfg.get("weight"),
            cfg["treatment"]["column"], *cfg.get("strata", [])]
    if cfg.get("submission"):
        cols += [cfg["submission"].get("id"), cfg["submission"].get("time")]
    if cfg.get("female_owner", {}).get("column"):
        cols.append(cfg["female_owner"]["column"])
    cols += [spec["column"] for spec in cfg["outcomes"].values()]
    if cfg.get("recall_period", {}).get("column"):
        cols.append(cfg["recall_period"]["column"])
    if cfg.get("business_open"):
        cols.append(cfg["business_open"]["column"])
    cols += list(cfg.get("valid_ranges", {}))
    cols += list(cfg.get("covariates", {}).values())
    cols += list(cfg.get("skills_index", {}).get("columns", []))
    if cfg.get("credit_access"):
        cols.append(cfg["credit_access"])
    cols += [c for c in (cfg.get("takeup") or {}).values() if c]
    return [c for c in dict.fromkeys(cols) if c]


def codebook(data: pd.DataFrame, value_labels: dict, variable_labels: dict,
             identifiers: list[str], source: str) -> pd.DataFrame:
    """One row per raw column: label, dtype, counts, value labels; identifiers listed as dropped."""
    rows = []
    for col in data.columns:
        series = data[col]
        rows.append({
            "column": col,
            "label": variable_labels.get(col, ""),
            "dtype": str(series.dtype),
            "n_nonmissing": int(series.notna().sum()),
            "n_unique": int(series.nunique(dropna=True)),
            "value_labels": json.dumps(value_labels.get(col, {}), sort_keys=True) if col in value_labels else "",
            "status": "kept",
            "source": source,
        })
    for col in identifiers:
        rows.append({"column": col, "label": variable_labels.get(col, ""), "dtype": "", "n_nonmissing": 0,
                     "n_unique": 0, "value_labels": "", "status": "dropped: direct identifier",
                     "source": source})
    return pd.DataFrame(rows)


def ingest(cfg: dict, data_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Read every configured file; return (interim table, codebook, summary).

    The interim table has the raw columns (minus identifiers) plus ``source_file`` and
    ``source_row`` (0-based row in the raw file), which later stages use to account for rows.
    """
    tables, books, files = [], [], []
    for entry in cfg["files"]:
        path = resolve_file(entry, data_dir)
        source = entry["path"]
        data, value_labels, variable_labels = read_raw(path, entry.get("format", path.suffix.lstrip(".")))
        sha = verify_checksum(path, entry.get("sha256"))
        if data.empty:
            raise IngestError(f"{source}: file has no rows")
        require_columns(data, configured_columns(cfg), source)
        book = codebook(data.drop(columns=[c for c in cfg["identifiers"] if c in data.columns]),
                        value_labels, variable_labels, cfg["identifiers"], source)
        data = drop_identifiers(data, cfg["identifiers"], source)
        data.insert(0, "source_row", range(len(data)))
        data.insert(0, "source_file", source)
        tables.append(data)
        books.append(book)
        files.append({"path": source, "sha256": sha, "rows": len(data), "columns": data.shape[1] - 2})
    interim = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    summary = {"study": cfg["study"], "files": files, "rows": len(interim),
               "identifiers_dropped": list(cfg["identifiers"])}
    return interim, pd.concat(books, ignore_index=True), summary


def run(study: str, data_dir: str | Path, params: dict) -> dict:
    """The ingest stage: read, check, drop identifiers, write interim table + codebook."""
    cfg = load_study(study)
    interim, book, summary = ingest(cfg, data_dir)
    out = paths.interim_dir(study)
    write_parquet(out / "ingested.parquet", interim)
    write_csv(out / "codebook.csv", book)
    write_json(out / "ingest_summary.json", summary)
    return {"config": cfg, "interim": interim, "codebook": book, "summary": summary}
