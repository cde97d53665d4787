"""Ingest: raw survey files -> typed interim table + codebook, direct identifiers removed.

Readers: Stata ``.dta`` (pandas; value labels kept in the codebook), SPSS ``.sav`` (pyreadstat),
``.csv``, ``.xlsx`` (KoboToolbox/ODK/SurveyCTO exports: ``strip_group_prefixes`` turns
``group_business/profit`` or ``grp1-profit`` into ``profit``) and parquet.

Value labels are not applied here: the interim table keeps the raw codes (so that the cleaning
rules can see survey missing-value codes such as -98), and the codebook records every column's
label and value labels so nothing of the raw file's documentation is lost.

Per file: the checksum is verified before the file is parsed; configured identifiers are
dropped (or replaced by a salted hash where linkage needs them); and the remaining table is
searched for undeclared identifiers (phone numbers, e-mail addresses, GPS, person names), which
stop the stage. Everything is computed before anything is written.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.io import file_sha256
from pipeline.codes import map_distinct, norm_code
from pipeline.io import write_named_outputs
from pipeline.stage_context import StageContext
from pipeline.privacy import (IdentifierLeakError, assert_no_identifier_labels, assert_no_identifiers, hash_salt,
                              identifier_value_pattern, salted_hash)
from pipeline.study import (FACTOR_COLUMN, ROW_ID, configured_columns, currency_factor, normalise,
                            resolve_file)


class IngestError(ValueError):
    """A raw file cannot be ingested; the message names the file and the problem."""


# ------------------------------------------------------------------------------------------------
# Readers: each returns (data, value labels by column, variable labels by column)
# ------------------------------------------------------------------------------------------------
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
        col: {_stata_label_key(k): str(v) for k, v in label_sets.get(name, {}).items()}
        for col, name in label_names.items() if name and name in label_sets
    }
    return data, value_labels, dict(variable_labels)


STATA_MISSING_BASE = 2147483621  # value-label keys from here on are Stata's missing values . .a ... .z


def _stata_label_key(key) -> int | str:
    """A value-label key; labels of Stata's extended missing values are keyed ``.a`` ... ``.z``."""
    key = int(key)
    if STATA_MISSING_BASE <= key <= STATA_MISSING_BASE + 26:
        return "." + ("" if key == STATA_MISSING_BASE else chr(ord("a") + key - STATA_MISSING_BASE - 1))
    return key


def read_sav(path: Path) -> tuple[pd.DataFrame, dict[str, dict], dict[str, str]]:
    """Read an SPSS file with pyreadstat, codes kept (value labels go to the codebook).

    User-defined missing values (-99 refused ...) are kept as codes, so that the clean stage can
    log why each value is missing; the codes each column declares are in ``data.attrs["user_missing"]``
    and must all be listed in the study's ``missing_codes`` (checked by :func:`ingest`).
    """
    import pyreadstat

    try:
        data, meta = pyreadstat.read_sav(str(path), apply_value_formats=False, user_missing=True)
    except Exception as exc:  # noqa: BLE001
        raise IngestError(f"{path}: cannot read as SPSS .sav ({type(exc).__name__}: {exc})") from exc
    value_labels = {col: {_label_key(k): str(v) for k, v in labels.items()}
                    for col, labels in (meta.variable_value_labels or {}).items()}
    variable_labels = {c: (label or "") for c, label in (meta.column_names_to_labels or {}).items()}
    declared: dict[str, list] = {}
    for col, ranges in (getattr(meta, "missing_ranges", None) or {}).items():
        for rng in ranges:
            lo, hi = rng.get("lo"), rng.get("hi")
            if lo == hi:
                declared.setdefault(col, []).append(_label_key(lo))
            else:
                declared.setdefault(col, []).append(f"{lo}..{hi}")
    data.attrs["user_missing"] = declared
    return data, value_labels, variable_labels


def check_user_missing(data: pd.DataFrame, cfg: dict, source: str) -> dict:
    """SPSS user-missing codes must be study missing codes (else a -99 would count as a value)."""
    declared = data.attrs.get("user_missing") or {}
    unknown = {col: [c for c in codes if c not in cfg["missing_codes"]] for col, codes in declared.items()}
    unknown = {col: codes for col, codes in unknown.items() if codes}
    if unknown:
        raise IngestError(f"{source}: SPSS user-missing values {unknown} are not in missing_codes; list each code "
                          f"with its reason (e.g. missing_codes: {{-99: refused}})")
    return declared


def _label_key(key):
    code = norm_code(key)
    return code if code is not None else str(key)


_CANONICAL_INTEGER = r"-?(?:0|[1-9][0-9]*)"


def read_csv(path: Path, entry: dict, id_columns: Sequence[str] = ()) -> tuple[pd.DataFrame, dict, dict]:
    """``id_columns`` are read as text and become numbers only if no text is lost ("01", " 1" stay
    text: read as numbers they would silently merge with "1"; the clean stage reports the collision)."""
    sep = entry.get("sep") or ("\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        data = pd.read_csv(path, sep=sep, encoding=entry.get("encoding") or "utf-8", low_memory=False,
                           dtype={c: str for c in id_columns})
    except Exception as exc:  # noqa: BLE001
        raise IngestError(f"{path}: cannot read as CSV ({type(exc).__name__}: {exc})") from exc
    for col in (c for c in id_columns if c in data.columns):
        if data[col].dropna().str.fullmatch(_CANONICAL_INTEGER).all():
            data[col] = pd.to_numeric(data[col].astype(object))     # what pandas would have inferred
    return data, {}, {}


def read_xlsx(path: Path, entry: dict) -> tuple[pd.DataFrame, dict, dict]:
    try:
        return pd.read_excel(path, sheet_name=entry.get("sheet", 0), engine="openpyxl"), {}, {}
    except Exception as exc:  # noqa: BLE001
        raise IngestError(f"{path}: cannot read as Excel .xlsx ({type(exc).__name__}: {exc})") from exc


def read_parquet(path: Path) -> tuple[pd.DataFrame, dict, dict]:
    try:
        return pd.read_parquet(path), {}, {}
    except Exception as exc:  # noqa: BLE001
        raise IngestError(f"{path}: cannot read as parquet ({type(exc).__name__}: {exc})") from exc


def check_file(path: Path) -> None:
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: file is empty")


def read_raw(path: Path, fmt: str, entry: dict | None = None,
             id_columns: Sequence[str] = ()) -> tuple[pd.DataFrame, dict[str, dict], dict[str, str]]:
    check_file(path)
    entry = entry or {}
    if fmt == "dta":
        data, value_labels, variable_labels = read_dta(path)
    elif fmt == "sav":
        data, value_labels, variable_labels = read_sav(path)
    elif fmt == "csv":
        data, value_labels, variable_labels = read_csv(path, entry, id_columns)
    elif fmt == "xlsx":
        data, value_labels, variable_labels = read_xlsx(path, entry)
    elif fmt == "parquet":
        data, value_labels, variable_labels = read_parquet(path)
    else:
        raise IngestError(f"{path}: unsupported format {fmt!r}")
    return tidy_object_columns(data), value_labels, variable_labels


def tidy_object_columns(data: pd.DataFrame) -> pd.DataFrame:
    """Spreadsheet columns mixing numbers and text (``1200``, ``"1,500"``) become text, so the
    table can be written; the clean stage parses configured numeric columns."""
    data = data.copy()
    for col in data.columns:
        if data[col].dtype == object:
            values = data[col].dropna()
            if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
                inferred = pd.Series(values.tolist()).infer_objects()
                if inferred.dtype == object:
                    data[col] = map_distinct(data[col], str)
                else:
                    data[col] = data[col].infer_objects()
    return data


# ------------------------------------------------------------------------------------------------
# Column names, checksums, identifiers
# ------------------------------------------------------------------------------------------------
def strip_prefix(name: str, separators: list[str]) -> str:
    """``group_business/profit`` -> ``profit`` (the part after the last separator)."""
    out = str(name)
    for sep in separators:
        if sep in out:
            stripped = out.rsplit(sep, 1)[1]
            out = stripped or out
    return out


def rename_columns(data: pd.DataFrame, entry: dict, source: str) -> tuple[pd.DataFrame, dict]:
    """Apply ``rename`` (by full raw name), then strip group prefixes from the other columns;
    two columns ending with the same name is an error naming both."""
    rename, seps = entry.get("rename") or {}, entry.get("strip_group_prefixes") or []
    unknown = [c for c in rename if c not in data.columns]
    if unknown:
        raise IngestError(f"{source}: rename refers to columns {unknown} not in the file")
    mapping = {c: rename.get(c, strip_prefix(c, seps) if seps else c) for c in data.columns}
    seen: dict[str, list[str]] = {}
    for old, new in mapping.items():
        seen.setdefault(new, []).append(str(old))
    clashes = {new: olds for new, olds in seen.items() if len(olds) > 1}
    if clashes:
        detail = "; ".join(f"{olds} -> {new!r}" for new, olds in clashes.items())
        raise IngestError(f"{source}: several columns get the same name ({detail}); "
                          f"give one of them another name under files[].rename")
    return data.rename(columns=mapping), mapping


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


def hash_identifiers(data: pd.DataFrame, columns: list[str], salt: str | None, source: str) -> pd.DataFrame:
    """Replace each value of the hashed identifier columns by its salted hash."""
    if not columns:
        return data
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise IngestError(f"{source}: configured identifier columns {missing} not in the file")
    if not salt:
        raise IngestError(f"{source}: identifiers {columns} are to be replaced by a salted hash, but no salt is "
                          f"set: export PIPELINE_HASH_SALT=<a secret> (or set ingest.hash_salt_env to the "
                          f"name of the variable that holds it). The salt is never written out.")
    data = data.copy()
    for col in columns:
        data[col] = salted_hash(data[col], salt)
    return data


INGEST_COLUMNS = ("source_file", "source_row", ROW_ID, FACTOR_COLUMN)   # the columns ingest adds


def check_added_columns(data: pd.DataFrame, cfg: dict, source: str) -> None:
    """A raw column named like one ingest adds would be overwritten or make the insert fail."""
    clash = [c for c in INGEST_COLUMNS if c in data.columns]
    if clash:
        raise IngestError(f"{cfg['study']}: {source}: the raw file has a column {clash[0]!r}, a name the pipeline "
                          f"adds (all of them: {list(INGEST_COLUMNS)}); give it another name under files[].rename")


def require_columns(data: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c and c not in data.columns]
    if missing:
        raise IngestError(f"{source}: required columns {missing} not in the file "
                          f"(it has {len(data.columns)} columns)")


def codebook(data: pd.DataFrame, value_labels: dict, variable_labels: dict,
             identifiers: list[str], source: str, hashed: list[str] = ()) -> pd.DataFrame:
    """One row per raw column: label, dtype, counts, value labels; identifiers listed as dropped
    (or hashed) without their values or value labels."""
    rows = []
    for col in data.columns:
        series = data[col]
        is_hashed = col in hashed
        rows.append({
            "column": col,
            "label": variable_labels.get(col, ""),
            "dtype": str(series.dtype),
            "n_nonmissing": int(series.notna().sum()),
            "n_unique": int(series.nunique(dropna=True)),
            "value_labels": (json.dumps({str(k): v for k, v in value_labels.get(col, {}).items()}, sort_keys=True)
                             if col in value_labels and not is_hashed else ""),
            "status": "kept: values replaced by a salted hash" if is_hashed else "kept",
            "source": source,
        })
    for col in identifiers:
        rows.append({"column": col, "label": variable_labels.get(col, ""), "dtype": "", "n_nonmissing": 0,
                     "n_unique": 0, "value_labels": "", "status": "dropped: direct identifier",
                     "source": source})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Conversion factor
# ------------------------------------------------------------------------------------------------
def conversion_factor(cfg: dict, data_dir: str | Path) -> tuple[float, dict]:
    """USD PPP per LCU (one number for the study) and where it came from."""
    spec = cfg["usd_ppp_per_lcu"]
    info = {"source": spec["source"], "converts_to": spec["converts_to"]}
    if spec["lookup"] is None:
        factor = spec["value"]
        info["stated_value"] = factor
    else:
        lookup = spec["lookup"]
        path = resolve_file(lookup["file"], data_dir)
        where = f"{cfg['_path']}: usd_ppp_per_lcu.lookup ({lookup['file']})"
        check_file(path)
        info["file"] = lookup["file"]
        info["sha256"] = verify_checksum(path, lookup["sha256"])
        fmt = path.suffix.lower().lstrip(".")
        table, _, _ = read_raw(path, {"tsv": "csv", "txt": "csv"}.get(fmt, fmt), {})
        mask = pd.Series(True, index=table.index)
        for col, value in lookup["where"].items():
            if col not in table.columns:
                raise IngestError(f"{where}: column {col!r} not in the file")
            mask &= map_distinct(table[col], norm_code) == norm_code(value)
        if lookup["column"] not in table.columns:
            raise IngestError(f"{where}: column {lookup['column']!r} not in the file")
        if mask.sum() != 1:
            raise IngestError(f"{where}: {int(mask.sum())} rows match {lookup['where']} (expected exactly one)")
        factor = float(pd.to_numeric(table.loc[mask, lookup["column"]], errors="coerce").iloc[0])
        info["looked_up_value"] = factor
        info["where"] = dict(lookup["where"])
        info["column"] = lookup["column"]
        if not factor > 0:
            raise IngestError(f"{where}: {lookup['column']} = {factor} is not a positive number")
    value = currency_factor(cfg, factor)
    info["usd_ppp_per_lcu"] = value
    return value, info


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------
def ingest_frame(data: pd.DataFrame, value_labels: dict, variable_labels: dict, cfg: dict, entry: dict,
                 salt: str | None, scan_identifiers: bool = True, describe: bool = True
                 ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One parsed file -> (interim rows, codebook rows): columns renamed, required columns checked,
    identifiers dropped or hashed, the rest scanned for undeclared identifiers, rows numbered.

    Pure (no I/O): the ingest stage calls it on every file it reads, and the simulation study on
    every survey the generator draws, so both take the same path from raw table to interim table.
    The simulation skips the identifier scan (``scan_identifiers=False``): it costs about half a
    second per survey, changes no value, and its draws are never written as tables; the ingest
    stage scans the default survey itself. ``describe=False`` (the simulation's draws, which
    discard it) skips the codebook (None): one count of distinct values per column."""
    source = entry["path"]
    data = data.copy(deep=False)  # the caller's frame stays as it was
    data.attrs = {}
    data, mapping = rename_columns(data, entry, source)
    value_labels = {mapping.get(k, k): v for k, v in value_labels.items()}
    variable_labels = {mapping.get(k, k): v for k, v in variable_labels.items()}
    if data.empty:
        raise IngestError(f"{source}: file has no rows")
    check_added_columns(data, cfg, source)
    require_columns(data, configured_columns(cfg), source)
    id_values = None
    try:
        if scan_identifiers:   # value labels and the identifier columns' values (names) searched too
            id_values = identifier_value_pattern(data, value_labels, cfg["identifiers"] + cfg["hash_identifiers"])
            assert_no_identifier_labels(value_labels, cfg, source, id_values)
    except IdentifierLeakError as exc:
        raise IngestError(f"{cfg['study']}: {exc}") from None
    book = codebook(data.drop(columns=[c for c in cfg["identifiers"] if c in data.columns]),
                    value_labels, variable_labels, cfg["identifiers"], source,
                    cfg["hash_identifiers"]) if describe else None
    data = drop_identifiers(data, cfg["identifiers"], source)
    data = hash_identifiers(data, cfg["hash_identifiers"], salt, source)
    try:
        if scan_identifiers:
            assert_no_identifiers(data, cfg=cfg, source=source, identifier_values=id_values)
    except IdentifierLeakError as exc:
        raise IngestError(f"{cfg['study']}: {exc}") from None
    data.insert(0, "source_row", range(len(data)))
    data.insert(0, "source_file", source)
    return data, book


def interim_table(tables: list[pd.DataFrame], cfg: dict, usd_ppp_per_lcu: float) -> pd.DataFrame:
    """The files' interim rows stacked, with a generated unit id where the survey has none and
    the study's conversion factor on every row."""
    interim = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    if cfg["_generated_unit_id"]:
        interim.insert(2, ROW_ID, range(len(interim)))
    interim[FACTOR_COLUMN] = usd_ppp_per_lcu
    return interim


def ingest(cfg: dict, data_dir: str | Path, salt: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Read every configured file; return (interim table, codebook, summary).

    The interim table has the raw columns (minus identifiers) plus ``source_file`` and
    ``source_row`` (0-based row in the raw file), which later stages use to account for rows,
    ``usd_ppp_per_lcu`` (the study's conversion factor), and ``_row_id`` where the survey has no
    unit id (each row is then one unit).
    """
    cfg = normalise(cfg)
    tables, books, files = [], [], []
    for entry in cfg["files"]:
        path = resolve_file(entry, data_dir)
        check_file(path)
        sha = verify_checksum(path, entry.get("sha256"))
        data, value_labels, variable_labels = read_raw(path, entry["format"], entry,
                                                       [c for c in (cfg["unit_id"], cfg.get("cluster")) if c])
        user_missing = check_user_missing(data, cfg, entry["path"])
        data, book = ingest_frame(data, value_labels, variable_labels, cfg, entry, salt)
        tables.append(data)
        books.append(book)
        files.append({"path": entry["path"], "sha256": sha, "rows": len(data), "columns": data.shape[1] - 2,
                      "format": entry["format"], **({"spss_user_missing": user_missing} if user_missing else {})})
    factor, factor_info = conversion_factor(cfg, data_dir)
    interim = interim_table(tables, cfg, factor)
    summary = {"study": cfg["study"], "config": cfg["_path"], "files": files, "rows": len(interim),
               "identifiers_dropped": list(cfg["identifiers"]), "identifiers_hashed": list(cfg["hash_identifiers"]),
               "unit_id": "generated: one unit per row" if cfg["_generated_unit_id"] else cfg["unit_id"],
               "conversion": factor_info}
    return interim, pd.concat(books, ignore_index=True), summary


def run(context: StageContext) -> dict:
    """The ingest stage: read the study's raw files (``inputs["data_dir"]``), check, drop
    identifiers, write the interim table, codebook and summary (all or nothing)."""
    cfg = dict(context.config)
    interim, book, summary = ingest(cfg, context.inputs["data_dir"], salt=hash_salt(context.params))
    summary["resolved_config"] = context.resolved_config()
    assert_no_identifiers(book, cfg=cfg, source="codebook.csv")
    write_named_outputs(context.outputs, {
        "ingested.parquet": interim,
        "codebook.csv": book,
        "ingest_summary.json": summary,
    })
    return {"config": cfg, "interim": interim, "codebook": book, "summary": summary}
