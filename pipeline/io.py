"""Deterministic, atomic file writing and small readers shared by every stage.

Every derived file goes through :func:`atomic_path`: it is written to a temporary
file in the same folder and renamed into place only when complete, so a failing
stage never leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import io as _io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


class OutputError(ValueError):
    """A table cannot be written as its format needs; the message names the file, column and rows."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success. An OS error
    while writing (a full disk: ENOSPC) is raised again naming ``path`` (same errno)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.filename == str(path):
            raise
        if exc.errno is None:     # e.g. pyarrow's IOError: only a message
            raise OSError(f"writing {path}: {exc}") from exc
        raise OSError(exc.errno, exc.strerror, str(path)) from exc   # OSError picks the subclass by errno
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.as_posix()
    if obj is pd.NA:
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean_floats(obj: Any) -> Any:
    """NaN/inf are not JSON; write them as null so every reader agrees."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Sorted keys and a trailing newline: byte-identical for identical content."""
    text = json.dumps(_clean_floats(json.loads(json.dumps(obj, default=_json_default))),
                      indent=2, sort_keys=True, ensure_ascii=False)
    return write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    """Parquet without a pandas index and with fixed writer settings (deterministic bytes)."""
    with atomic_path(path) as tmp:
        to_parquet(df, tmp, where=path)
    return Path(path)


def to_parquet(df: pd.DataFrame, target, where: str | os.PathLike) -> None:
    """``df`` as parquet (fixed writer settings) to ``target`` (a path or a buffer); a column that
    pyarrow cannot convert (values of mixed types) raises :class:`OutputError` naming ``where``,
    the column and the first rows of each type."""
    import pyarrow as pa

    try:
        df.to_parquet(target, index=False, engine="pyarrow", compression="snappy")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise OutputError(f"{where}: {_unconvertible_columns(df) or exc}") from exc


def _unconvertible_columns(df: pd.DataFrame, limit: int = 5) -> str:
    """Which object columns pyarrow refuses, and the rows (0-based) of each value type in them."""
    import pyarrow as pa

    problems = []
    for column in df.columns:
        if df[column].dtype != object:
            continue
        try:
            pa.array(df[column], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            kinds = df[column].map(lambda v: None if v is None or v is pd.NA or (isinstance(v, float) and v != v)
                                   else type(v).__name__)
            rows = {kind: np.flatnonzero((kinds == kind).to_numpy())[:limit].tolist()
                    for kind in kinds.dropna().unique()}
            problems.append(f"column {str(column)!r} mixes value types and cannot be written as parquet: "
                            + ", ".join(f"{kind} at rows {r}" for kind, r in rows.items()))
    return "; ".join(problems)


def write_csv(path: str | os.PathLike, df: pd.DataFrame, float_format: str | None = "%.10g") -> Path:
    """A CSV with its header always: a table without columns would be a header-less file that
    ``pd.read_csv`` cannot read (EmptyDataError), so it is refused; give an empty table its
    columns (no rows) instead."""
    check_csv_table(path, df)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")
    return Path(path)


def check_csv_table(name: str | os.PathLike, df: pd.DataFrame) -> None:
    """Refuse to write a CSV without a header (a frame with no columns)."""
    if len(df.columns) == 0:
        raise ValueError(f"{Path(name).name}: the table has no columns; a CSV is always written with "
                         f"its header (an empty table: its columns and no rows)")


def read_yaml(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_params(path: str | os.PathLike | None = None) -> dict:
    """The whole params.yaml as a dict (default: the repository's), checked against its typed model
    (pipeline.params: unknown keys and wrong types are refused, naming the file and the key)."""
    from pipeline.params import validate_params   # here: pipeline.params builds on this module

    path = Path(path or REPO_ROOT / "params.yaml")
    shown = str(path.relative_to(REPO_ROOT)) if path.resolve().is_relative_to(REPO_ROOT) else str(path)
    return validate_params(read_yaml(path), where=shown)


class MissingParamError(LookupError):
    """A params group lacks a key (there is no fallback value in code: params.yaml sets every one)."""


def param(group: Mapping, name: str, key: str) -> Any:
    """``group[key]`` of the resolved params group ``name``; a missing key raises
    :class:`MissingParamError` naming the group and the key, never falls back to a default."""
    if key not in group:
        raise MissingParamError(f"params group {name!r} has no key {key!r} (params.yaml sets every key; "
                                f"a caller that builds a group by hand must give it too)")
    return group[key]


def file_md5(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# ------------------------------------------------------------------------------------------------
# All-or-nothing outputs
# ------------------------------------------------------------------------------------------------
def render(name: str, obj: Any, where: str | os.PathLike | None = None) -> bytes:
    """The bytes of one output, chosen by its extension (deterministic writer settings); errors
    name ``where`` (default ``name``)."""
    if name.endswith(".parquet"):
        buffer = _io.BytesIO()
        to_parquet(obj, buffer, where=where or name)
        return buffer.getvalue()
    if name.endswith(".csv"):
        check_csv_table(name, obj)
        return obj.to_csv(index=False, float_format="%.10g", lineterminator="\n").encode("utf-8")
    if name.endswith(".json"):
        text = json.dumps(_clean_floats(json.loads(json.dumps(obj, default=_json_default))),
                          indent=2, sort_keys=True, ensure_ascii=False)
        return (text + "\n").encode("utf-8")
    raise ValueError(f"{name}: no writer for this extension")


def write_outputs(out_dir: str | Path, outputs: Mapping[str, Any]) -> list[Path]:
    """Write ``outputs`` (file name -> object) into ``out_dir`` all or nothing (:func:`write_files`)."""
    return write_files({Path(out_dir) / name: obj for name, obj in outputs.items()})


def write_named_outputs(declared: Mapping[str, Path], outputs: Mapping[str, Any]) -> list[Path]:
    """Write ``outputs`` (output name -> object) to the paths a stage's context declares for those
    names (``StageContext.outputs``), all or nothing; a name the stage does not declare fails."""
    undeclared = sorted(set(outputs) - set(declared))
    if undeclared:
        raise KeyError(f"not declared as outputs of the stage (dvc.yaml): {', '.join(undeclared)}")
    return write_files({Path(declared[name]): obj for name, obj in outputs.items()})


def write_files(outputs: Mapping[Path, Any]) -> list[Path]:
    """Render every output in memory first, then write each atomically. If rendering fails nothing
    is written; if a write fails, the files already written by this call are removed."""
    rendered = {Path(path): render(Path(path).name, obj, Path(path)) for path, obj in outputs.items()}
    written: list[Path] = []
    try:
        for path, data in rendered.items():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
