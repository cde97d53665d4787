import json

import pandas as pd
import pytest

from pipeline import ingest
from pipeline.io import file_sha256


def test_ingest_reads_labels_drops_identifiers_and_numbers_rows(cfg, dta_dir, raw):
    interim, book, summary = ingest.ingest(cfg, dta_dir)
    assert len(interim) == len(raw) == summary["rows"]
    assert "owner_name" not in interim.columns and "phone" not in interim.columns
    assert not interim.astype(str).apply(lambda s: s.str.contains("0712 000")).any().any()
    assert interim["source_row"].tolist() == list(range(len(raw)))
    # codes kept, not labels: cleaning must see -98
    assert interim["bp_1"].tolist() == raw["bp_1"].tolist()
    sex = book.set_index("column").loc["owner_sex"]
    assert json.loads(sex["value_labels"]) == {"1": "Male", "2": "Female"}
    assert book.set_index("column").loc["profit", "label"] == "Profit in the recall period"
    assert book.set_index("column").loc["phone", "status"] == "dropped: direct identifier"


def test_checksum_mismatch_names_the_file(cfg, dta_dir):
    cfg["files"][0]["sha256"] = "0" * 64
    with pytest.raises(ingest.IngestError, match=r"survey\.dta: sha256 .* does not match"):
        ingest.ingest(cfg, dta_dir)
    cfg["files"][0]["sha256"] = file_sha256(dta_dir / "survey.dta")
    ingest.ingest(cfg, dta_dir)


def test_missing_required_column_is_named(cfg, dta_dir, raw):
    raw.drop(columns=["market_id"]).to_stata(dta_dir / "survey.dta", write_index=False, version=118)
    with pytest.raises(ingest.IngestError, match=r"survey\.dta: required columns \['market_id'\]"):
        ingest.ingest(cfg, dta_dir)


def test_configured_identifier_absent_is_an_error(cfg, dta_dir):
    cfg["identifiers"] = ["owner_name", "phone", "email"]
    with pytest.raises(ingest.IngestError, match=r"identifier columns \['email'\] not in the file"):
        ingest.ingest(cfg, dta_dir)


def test_empty_and_unreadable_files(cfg, tmp_path):
    (tmp_path / "survey.dta").write_bytes(b"")
    with pytest.raises(ingest.IngestError, match="file is empty"):
        ingest.ingest(cfg, tmp_path)
    (tmp_path / "survey.dta").write_bytes(b"not a stata file at all")
    with pytest.raises(ingest.IngestError, match="cannot read as Stata"):
        ingest.ingest(cfg, tmp_path)
    (tmp_path / "survey.dta").unlink()
    with pytest.raises(ingest.IngestError, match="file not found"):
        ingest.ingest(cfg, tmp_path)


def test_group_prefixes_are_stripped():
    assert ingest.strip_prefix("group_business/profit", ["/", "-"]) == "profit"
    assert ingest.strip_prefix("grp1-profit", ["/", "-"]) == "profit"
    assert ingest.strip_prefix("meta/instanceID", ["/"]) == "instanceID"
    assert ingest.strip_prefix("_submission_time", ["/", "-"]) == "_submission_time"
    data = pd.DataFrame(columns=["g/a", "x-b", "c"])
    renamed, _ = ingest.rename_columns(data, {"strip_group_prefixes": ["/", "-"], "rename": {"c": "d"}}, "f")
    assert list(renamed.columns) == ["a", "b", "d"]


def test_ingest_adds_the_conversion_factor_and_generated_ids(cfg, dta_dir, raw):
    cfg["unit_id"] = None                  # a cross-section without ids: one row = one unit
    cfg["round"], cfg["rounds"], cfg["baseline_round"] = None, None, None
    cfg["submission"] = None
    interim, _, summary = ingest.ingest(cfg, dta_dir)
    assert interim["_row_id"].tolist() == list(range(len(raw)))
    assert (interim["usd_ppp_per_lcu"] == 0.5).all()
    assert summary["unit_id"] == "generated: one unit per row"


@pytest.mark.parametrize("column", ["source_row", "source_file"])
def test_a_raw_column_named_like_a_pipeline_column_is_named(cfg, raw, column):
    from pipeline.study import normalise

    cfg = normalise(cfg)
    with pytest.raises(ingest.IngestError, match=rf"tiny: survey\.dta: the raw file has a column {column!r}, "
                                                 rf"a name the pipeline adds"):
        ingest.ingest_frame(raw.assign(**{column: 1}), {}, {}, cfg, cfg["files"][0], salt=None)
    renamed = {**cfg["files"][0], "rename": {column: f"raw_{column}"}}
    data, _ = ingest.ingest_frame(raw.assign(**{column: 1}), {}, {}, cfg, renamed, salt=None)
    assert data[f"raw_{column}"].eq(1).all() and data["source_row"].tolist() == list(range(len(raw)))
