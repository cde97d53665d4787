"""Privacy: direct identifiers never reach an output.

* :func:`hash_salt` / :func:`salted_hash` -- pseudonyms (keyed hashes) for identifiers a study keeps
  as links (e.g. a loan-group name that is the cluster);
* :func:`find_identifiers` -- configured and detected identifiers (phone numbers, ID numbers, e-mail
  addresses, GPS coordinates, person-name columns) in a table;
* :func:`assert_no_identifiers` -- fails if a table, a file or a folder holds one;
* :func:`assert_no_identifier_labels` -- fails if a value label (codebook) holds one;
* :func:`assert_stage_outputs_clean` -- the final scan of everything a stage wrote (run_stage).

Rule: refuse, never redact silently (docs/study_config.md, "What the detector refuses").
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.codes import map_distinct, norm_code
from pipeline.identifier_patterns import (DATE_RE2, EMAIL_RE, GEOPOINT_RE, NEEDS, PHONE_RE, cued_names, has_cued_name,
                                         has_id_number_text, has_letters, has_phone_text, id_numbers, name_finding,
                                         phone_digits_ok, without_dates)
from pipeline.io import REPO_ROOT, param
from pipeline.study import normalise


class IdentifierLeakError(ValueError):
    """A direct identifier (configured or detected) is about to reach, or has reached, an output."""


# ------------------------------------------------------------------------------------------------
# Pseudonyms
# ------------------------------------------------------------------------------------------------
HASH_RE = re.compile(r"^[0-9a-f]{16}$")


SALT_FILE = REPO_ROOT / ".secrets" / "hash_salt"  # gitignored; made once per checkout


def hash_salt(params: Mapping, salt_file: Path | None = None) -> str | None:
    """The salt for hashed identifiers: ``hash_salt`` in the ingest params, else the environment
    variable named by ``hash_salt_env``, else a random salt kept
    in ``.secrets/hash_salt`` (created on first use, never committed, so reruns in this checkout
    give the same pseudonyms). Never written to any output."""
    import os
    import secrets

    salt = param(params, "ingest", "hash_salt")
    if salt:
        return str(salt)
    from_env = os.environ.get(str(param(params, "ingest", "hash_salt_env")))
    if from_env:
        return from_env
    salt_file = salt_file or SALT_FILE
    if not salt_file.exists():
        salt_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(salt_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return salt_file.read_text().strip()


def salted_hash(values: pd.Series, salt: str) -> pd.Series:
    """A keyed BLAKE2b hash (16 hex digits) of each value's normalised text; missing stays missing.
    The same value gives the same pseudonym in every file of a study (linkage is kept)."""
    key = hashlib.sha256(salt.encode("utf-8")).digest()

    def one(value):
        code = norm_code(value)
        if code is None:
            return None
        return hashlib.blake2b(str(code).encode("utf-8"), key=key, digest_size=8).hexdigest()

    return map_distinct(values, one, dtype="object")


def safe_text(patterns: Iterable[str]):
    """The per-study allow-list of known-safe values (``not_identifier_patterns``: regular
    expressions such as ``LOT \\d{8}`` for batch codes): a function that blanks every match in a
    text before the value rules search it; None when there are no patterns."""
    patterns = list(patterns)
    if not patterns:
        return None
    safe = re.compile("|".join(f"(?:{p})" for p in patterns))
    return lambda text: safe.sub(" ", str(text))


class _DistinctText:
    """A column's distinct values as text (``str``, then ``safe`` when given), factorised once:
    every rule runs on them, and :meth:`rows` broadcasts a result to the rows (missing -> False)."""

    def __init__(self, series: pd.Series, safe=None):
        self.index = series.index
        self.codes, uniques = pd.factorize(series, use_na_sentinel=True)
        self.python: list[str] | None = None
        if safe is None and pd.api.types.is_string_dtype(uniques.dtype) and not pd.api.types.is_object_dtype(uniques.dtype):
            self.arrow = pa.array(uniques.array)   # str values: no Python loop over them
        else:
            self.python = [safe(v) if safe is not None else str(v) for v in uniques]
            try:
                self.arrow = pa.array(self.python, type=pa.large_string())
            except (pa.ArrowException, UnicodeError):   # e.g. a lone surrogate: every value runs in Python
                self.arrow = None
        self.n = len(uniques)
        self.ascii = (np.zeros(self.n, dtype=bool) if self.arrow is None
                      else pc.string_is_ascii(self.arrow).to_numpy(zero_copy_only=False))
        self._dateless = None

    def rows(self, per_value: np.ndarray) -> pd.Series:
        return pd.Series(np.append(per_value, False)[self.codes], index=self.index)

    def _regex(self, needs: tuple[str, str]) -> np.ndarray:
        """Per value: the ASCII value meets a rule's necessary condition (:data:`NEEDS`)."""
        on, pattern = needs
        if on == "dateless":
            if self._dateless is None:
                self._dateless = pc.replace_substring_regex(self.arrow, DATE_RE2, "|")
            texts = self._dateless
        else:
            texts = self.arrow
        try:
            found = pc.match_substring(texts, pattern) if pattern == "@" else pc.match_substring_regex(texts, pattern)
        except pa.ArrowInvalid:   # too large for RE2 (e.g. 100,000 names): every value runs in Python
            return self.ascii.copy()
        return found.to_numpy(zero_copy_only=False) & self.ascii

    def test(self, rule, *needs: str, among: np.ndarray | None = None) -> np.ndarray:
        """Per value: ``rule(text)``, run in Python only on the values (of ``among``) that are not ASCII
        or meet all of ``needs`` (names in :data:`NEEDS`, or (text, RE2 pattern) pairs): the others
        cannot break the rule."""
        candidates = np.ones(self.n, dtype=bool) if among is None else among.copy()
        if self.arrow is not None and needs:
            met = np.ones(self.n, dtype=bool)
            for need in needs:
                met &= self._regex(NEEDS[need] if isinstance(need, str) else need)
            candidates &= met | ~self.ascii
        positions = np.flatnonzero(candidates)
        texts = ([self.python[k] for k in positions] if self.python is not None
                 else self.arrow.take(pa.array(positions)).to_pylist())
        result = np.zeros(self.n, dtype=bool)
        result[positions] = [bool(rule(text)) for text in texts]
        return result


def find_identifiers(frame: pd.DataFrame, identifiers: Iterable[str] = (), *, allow: Iterable[str] = (),
                     hashed: Iterable[str] = (), identifier_values: IdentifierValues | None = None,
                     safe_patterns: Iterable[str] = ()) -> list[dict]:
    """Columns of ``frame`` that hold direct identifiers: configured identifier names, and
    detected ones (phone numbers, ID numbers, e-mail addresses, GPS coordinates, person-name columns).

    ``allow`` lists columns known not to be identifiers (a false positive declared in the study
    configuration); ``hashed`` lists columns replaced by salted hashes, accepted only while every
    value still looks like a hash. Each finding: column, rule, count and example row positions
    (never the values themselves). ``identifier_values`` (from :func:`identifier_value_pattern`)
    finds the values of the study's identifier columns (e.g. respondents' names) in any text column;
    text matching ``safe_patterns`` (``not_identifier_patterns``) is not searched.
    """
    allow, hashed, identifiers = set(allow), set(hashed), set(identifiers)
    safe = safe_text(safe_patterns)
    findings = []
    for column in frame.columns:
        series = frame[column]
        if column in identifiers:
            hit = "configured identifier", series.notna()
        elif column in allow or series.notna().sum() == 0:
            continue
        elif column in hashed:
            hit = _not_hash_rows(series)
        else:
            hit = _detected_identifier(column, series, safe, identifier_values)
        if hit is not None:
            findings.append(_finding(column, *hit))
    return findings


def _finding(column, rule: str, mask: pd.Series) -> dict:
    """One finding: column, rule, count and the first five row positions (never the values)."""
    rows = np.flatnonzero(mask.to_numpy())
    return {"column": str(column), "rule": rule, "count": int(mask.sum()), "rows": rows[:5].tolist()}


# HASH_RE for RE2: Python's "$" also matches before a final newline, RE2's only at the end
HASH_RE2 = r"^[0-9a-f]{16}\n?$"


def _not_hash_rows(series: pd.Series) -> tuple[str, pd.Series] | None:
    """A hashed identifier's rows whose value is not a hash (None when every value is one)."""
    values = _DistinctText(series)
    is_hash = (pc.match_substring_regex(values.arrow, HASH_RE2).to_numpy(zero_copy_only=False)
               if values.arrow is not None else values.test(HASH_RE.match))
    not_hash = series.notna() & ~values.rows(is_hash)
    if not_hash.any():
        return "hashed identifier holds values that are not hashes", not_hash
    return None


def _detected_identifier(column, series: pd.Series, safe, identifier_values: IdentifierValues | None
                         ) -> tuple[str, pd.Series] | None:
    """(rule, rows) of the first detection rule a column breaks: its name, then its numbers or text."""
    by_name = name_finding(column)
    if by_name:
        return by_name, series.notna()
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return _phone_number_integers(series)
    if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
        return None
    return _identifier_text(series, identifier_values, safe)


def _phone_number_integers(series: pd.Series) -> tuple[str, pd.Series] | None:
    """A numeric column of mostly distinct 9-15 digit integers: phone numbers (None otherwise)."""
    if series.dtype.kind in "iuf":   # no value reaches 1e8 (every value a number): none is long
        with np.errstate(invalid="ignore"):
            if not np.any(np.abs(series.to_numpy(dtype="float64", na_value=np.nan)) >= 1e8):
                return None
    values = pd.to_numeric(series, errors="coerce").dropna()
    if len(values) >= 5:
        integral = np.isclose(values % 1, 0)
        long = (values.abs() >= 1e8) & (values.abs() < 1e15) & integral
        if long.mean() >= 0.5 and values[long].nunique() >= 0.9 * long.sum():
            return ("phone numbers (9-15 digit integers)",
                    (pd.to_numeric(series, errors="coerce").abs() >= 1e8).fillna(False))
    return None


def _identifier_text(series: pd.Series, identifier_values: IdentifierValues | None, safe=None
                     ) -> tuple[str, pd.Series] | None:
    """(rule, rows) of the first text rule a column breaks: e-mail, phone, ID number, cued name,
    identifier values, GPS (None when it breaks none). ``safe`` (:func:`safe_text`) blanks the
    allowed text of each value first."""
    values = _DistinctText(series, safe)
    nonnull = int(series.notna().sum()) if safe is None else int((values.codes >= 0).sum())
    emails = values.test(EMAIL_RE.search, "email")
    if emails.any():
        return "e-mail addresses", values.rows(emails)
    phone_values = values.test(has_phone_text, "phone")
    phones = values.rows(phone_values)
    # In free text (a value with letters) one phone number is one too many; a bare number may be
    # an id of phone length, so a column of bare numbers is flagged only when phones are common
    in_text = values.test(has_letters, among=phone_values)
    n_phones = int(phones.sum())
    if in_text.any() or (n_phones and (n_phones >= 5 or n_phones / nonnull >= 0.01)):
        return "phone numbers", phones
    id_number_values = values.test(has_id_number_text, "id_number", "id_number_text")
    if id_number_values.any():   # one is enough: a column of ordinary codes has none (the rule's exclusions)
        return "ID numbers (8-20 digits: national ID, passport, tax, bank account)", values.rows(id_number_values)
    cued = values.test(has_cued_name, "cued_name")
    if cued.any():
        return "a person's name after a title or cue (Mr, spoke to ...) in text", values.rows(cued)
    if identifier_values is not None:
        named = values.test(identifier_values.search, identifier_values.needs)
        if named.any():
            return "values of the configured identifier columns (e.g. names) in text", values.rows(named)
    geo = values.rows(values.test(GEOPOINT_RE.match, "geopoint"))
    if geo.any() and (geo.sum() >= 5 or geo.sum() / nonnull >= 0.01):
        return "GPS coordinates (lat lon pairs)", geo
    return None


_WORD_RE = re.compile(r"\w+")
MAX_NAME_WORDS = 4   # an identifier value longer than this is free text (a note), not a name


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD_RE.findall(text.casefold()))


class IdentifierValues:
    """The name-like values of a study's identifier columns (e.g. "Ann Njeri"), searched as whole
    words, case-insensitively, in other text: ``search(text)`` is true when any run of up to
    :data:`MAX_NAME_WORDS` consecutive words of ``text`` is one of them. A set lookup per word run,
    so thousands of names cost no more than a few."""

    def __init__(self, values: Iterable[str]):
        self.names = {w for w in map(_words, values) if w and len(w) <= MAX_NAME_WORDS}
        self.lengths = sorted({len(w) for w in self.names})
        # The RE2 necessary condition (ASCII text: see identifier_patterns.NEEDS) of search: a name's
        # first word is a whole word of the text (ASCII text's words are ASCII: other first words
        # cannot be among them; "\b\B" never matches)
        first = sorted({w[0] for w in self.names if w[0].isascii()})
        self.needs = ("text", rf"(?i)\b(?:{'|'.join(map(re.escape, first))})\b" if first else r"\b\B")

    def __bool__(self) -> bool:
        return bool(self.names)

    def search(self, text: str) -> bool:
        words = _words(text)
        return any(words[i:i + n] in self.names for n in self.lengths for i in range(len(words) - n + 1))


def _is_name_like(value: Any) -> bool:
    """A value worth searching for elsewhere: text with a letter and at least 3 characters (a name,
    not a code such as 1, "A" or "no")."""
    text = str(value).strip()
    return len(text) >= 3 and any(ch.isalpha() for ch in text)


def identifier_value_pattern(data: pd.DataFrame, value_labels: Mapping[str, Mapping],
                             columns: Iterable[str]) -> IdentifierValues | None:
    """The name-like values of the identifier columns (their distinct values and, for coded
    columns, their value labels: a loan officer coded 3 is named in the label of 3), to be searched
    in the study's other text; None if there are none."""
    found: set[str] = set()
    for column in columns:
        if column in data.columns:
            found |= {str(v).strip() for v in data[column].dropna().unique() if _is_name_like(v)}
        found |= {str(v).strip() for v in (value_labels.get(column) or {}).values() if _is_name_like(v)}
    values = IdentifierValues(found)
    return values if values else None


def value_label_findings(value_labels: Mapping[str, Mapping], *, allow: Iterable[str] = (),
                         skip: Iterable[str] = (), identifier_values: IdentifierValues | None = None,
                         safe_patterns: Iterable[str] = ()) -> list[dict]:
    """Value labels (Stata/SPSS metadata, written to the codebook) that hold a phone number, an
    e-mail address or a value of an identifier column: one finding per column and code, with the
    rule (never the label). ``allow`` (``not_identifiers``) and ``skip`` (the identifier columns,
    whose labels are not written) are not searched."""
    allow, skip = set(allow), set(skip)
    safe = safe_text(safe_patterns) or str
    findings = []
    for column, labels in value_labels.items():
        if column in allow or column in skip:
            continue
        for code, label in (labels or {}).items():
            text = safe(label)
            rule = ("e-mail address" if EMAIL_RE.search(text) else
                    "phone number" if has_phone_text(text) else
                    "ID number" if id_numbers(text) else
                    "a person's name after a title or cue" if has_cued_name(text) else
                    "value of a configured identifier column" if identifier_values is not None
                    and identifier_values.search(text) else None)
            if rule:
                findings.append({"column": str(column), "code": str(code), "rule": rule})
    return findings


def assert_no_identifier_labels(value_labels: Mapping[str, Mapping], cfg: dict, source: str,
                                identifier_values: IdentifierValues | None = None) -> None:
    """Fail (:class:`IdentifierLeakError`) if a value label of a column that is kept holds a
    phone number, e-mail address or identifier value, naming the file, column and code (rule:
    refused, not redacted: the label is the documentation of a code, and only the study author can
    say whether the column is an identifier or the label should be ignored)."""
    cfg = normalise(cfg)
    found = value_label_findings(value_labels, allow=cfg["not_identifiers"],
                                 skip=list(cfg["identifiers"]) + list(cfg["hash_identifiers"]),
                                 identifier_values=identifier_values, safe_patterns=cfg["not_identifier_patterns"])
    if found:
        raise IdentifierLeakError(
            f"{source}: value labels would write direct identifiers to the codebook:\n  "
            + "\n  ".join(f"column {f['column']!r}, code {f['code']}: {f['rule']}" for f in found)
            + "\nDeclare each such column under `identifiers:` (its labels are then not written), or "
              "under `not_identifiers:` if its labels are not identifiers.")


def _text_findings(text: str) -> list[dict]:
    text = re.sub(r"<(style|script)\b.*?</\1>", " ", text, flags=re.S | re.I)
    text = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", " ", text)
    # base64 without a data: prefix (an executed notebook's "image/png" outputs): digits between
    # "+" and "/" could read as a phone number; no prose has a 200-character run of these characters
    text = re.sub(r"[A-Za-z0-9+/=]{200,}", " ", text)
    found = []
    emails = EMAIL_RE.findall(text)
    if emails:
        found.append({"column": "(text)", "rule": "e-mail addresses", "count": len(emails), "rows": []})
    phones = [m.group(0) for m in PHONE_RE.finditer(without_dates(text)) if phone_digits_ok(m.group(0))]
    if phones:
        found.append({"column": "(text)", "rule": "phone numbers", "count": len(phones), "rows": []})
    ids = [m for m in id_numbers(text) if not phone_digits_ok(m) or not PHONE_RE.fullmatch(m)]
    if ids:
        found.append({"column": "(text)", "rule": "ID numbers", "count": len(ids), "rows": []})
    names = cued_names(text)
    if names:
        found.append({"column": "(text)", "rule": "a person's name after a title or cue", "count": len(names),
                      "rows": []})
    return found


# nbconvert's HTML names each cell's element after its nbformat cell id
_HTML_CELL_ID_RE = re.compile(r'\sid="cell-id=[^"]*"')


def without_cell_ids(text: str, suffix: str) -> str:
    """A notebook's text (``ipynb``) or its HTML rendering without the cells' ids. Jupyter gives a new
    cell a random id (nbformat: 8 hex digits, JupyterLab: a UUID), which is all digits about once in
    40 cells and then read as an ID number: the stage failed, naming no data. An id is a key the tools
    made, never an answer; everything else (sources, outputs, metadata) is still searched."""
    if suffix == "ipynb":
        try:
            nb = json.loads(text)
        except ValueError:
            return text                   # not a notebook's JSON: searched as it is
        for cell in nb.get("cells", []) if isinstance(nb, dict) else []:
            if isinstance(cell, dict):
                cell.pop("id", None)
        return json.dumps(nb, ensure_ascii=False, indent=1)
    if suffix in ("html", "htm"):
        return _HTML_CELL_ID_RE.sub(" ", text)
    return text


def assert_no_identifiers(path_or_frame: str | Path | pd.DataFrame, identifiers: Iterable[str] = (), *,
                          cfg: dict | None = None, allow: Iterable[str] = (), hashed: Iterable[str] = (),
                          source: str | None = None, identifier_values: IdentifierValues | None = None,
                          json_keys: bool = True) -> None:
    """Fail (:class:`IdentifierLeakError`) if a table or file holds direct identifiers.

    ``path_or_frame``: a DataFrame, or a file (.parquet, .csv, .xlsx, .dta, .sav, .json, .html,
    .txt, .md) or a folder (every such file in it). With ``cfg`` (a study configuration) its
    identifiers, hashed identifiers and ``not_identifiers`` are used. The message names the
    table, column, rule, count and example row positions, never the values. ``json_keys``: a JSON
    key named like a configured identifier counts as one (off for stage summaries, whose keys are
    field names such as ``notes``; their values are still searched as text).
    """
    identifiers = set(identifiers)
    allow, hashed, safe_patterns = set(allow), set(hashed), []
    if cfg is not None:
        cfg = normalise(cfg)
        identifiers |= set(cfg["identifiers"])
        allow |= set(cfg["not_identifiers"])
        hashed |= set(cfg["hash_identifiers"])
        safe_patterns = cfg["not_identifier_patterns"]
    safe = safe_text(safe_patterns) or str
    problems: list[tuple[str, dict]] = []
    if isinstance(path_or_frame, pd.DataFrame):
        problems += [(source or "table", f) for f in
                     find_identifiers(path_or_frame, identifiers, allow=allow, hashed=hashed,
                                      identifier_values=identifier_values, safe_patterns=safe_patterns)]
    else:
        path = Path(path_or_frame)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            suffix = file.suffix.lower().lstrip(".")
            if file.name.startswith("."):
                continue
            if suffix in ("parquet", "csv", "xlsx", "dta", "sav"):
                reader = {"parquet": pd.read_parquet, "csv": pd.read_csv, "xlsx": pd.read_excel,
                          "dta": pd.read_stata, "sav": pd.read_spss}[suffix]
                found = find_identifiers(reader(file), identifiers, allow=allow, hashed=hashed,
                                         safe_patterns=safe_patterns)
            elif suffix == "json":
                obj = json.loads(file.read_text(encoding="utf-8"))
                keys = _json_keys(obj)
                found = [{"column": k, "rule": "configured identifier", "count": 1, "rows": []}
                         for k in keys if k in identifiers and json_keys]
                found += _text_findings(safe(json.dumps(obj, ensure_ascii=False)))
            elif suffix in ("html", "htm", "txt", "md", "ipynb"):
                text = without_cell_ids(file.read_text(encoding="utf-8", errors="replace"), suffix)
                found = _text_findings(safe(text))
            else:
                continue
            problems += [(str(file), f) for f in found]
    if problems:
        lines = [f"{where}: column {f['column']!r}: {f['rule']} ({f['count']} values"
                 + (f", e.g. rows {f['rows']})" if f["rows"] else ")") for where, f in problems]
        raise IdentifierLeakError(
            "direct identifiers would reach an output:\n  " + "\n  ".join(lines)
            + "\nDeclare each such column under `identifiers:` (dropped, or {column: ..., action: hash}) "
              "in the study configuration, or under `not_identifiers:` if it is not one.")


def _json_keys(obj: Any) -> set[str]:
    keys: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            keys.add(str(k))
            keys |= _json_keys(v)
    elif isinstance(obj, list):
        for v in obj:
            keys |= _json_keys(v)
    return keys


def assert_stage_outputs_clean(outs: Iterable[str | Path], study: str | None = None,
                               root: Path = REPO_ROOT) -> None:
    """The final scan of a stage: every file it wrote (tables, JSON, the executed notebook and its
    HTML) is searched for phone numbers, e-mail addresses and the study's configured identifier
    columns; :class:`IdentifierLeakError` names each file, so the stage fails and its outputs are
    rolled back. ``study``: a per-study stage's study (its ``identifiers``, ``hash_identifiers``
    and ``not_identifiers`` are used); None for pipeline-level stages. Outputs under
    ``<root>/data/raw`` (the synthetic stage's raw survey, identifiers included by design: ingest
    drops them) are not searched."""
    from pipeline.study import load_study

    cfg = load_study(study) if study else None
    raw = Path(root) / "data" / "raw"
    for out in map(Path, outs):
        if out.exists() and not out.resolve().is_relative_to(raw.resolve()):
            assert_no_identifiers(out, cfg=cfg, json_keys=False)
