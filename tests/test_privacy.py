"""Privacy (pipeline/privacy.py): identifiers detected and refused in every output; pseudonyms."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.privacy import IdentifierLeakError, assert_no_identifiers, find_identifiers, salted_hash


def test_detector_finds_identifiers_and_not_ordinary_survey_columns():
    n = 200
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "submission_id": [f"uuid:{rng.integers(0, 16**8):08x}-{rng.integers(0, 16**4):04x}" for _ in range(n)],
        "submitted_at": pd.date_range("2024-01-01", periods=n, freq="h").astype(str),
        "firm_id": np.arange(100000, 100000 + n),
        "profit": rng.normal(5000, 3000, n).round(2),
        "assets": rng.integers(0, 5_000_000, n),
        "district": ["Agua Prieta - Outlying"] * n,
        "district_name": ["Nairobi"] * n,
        "mobile_money": rng.integers(0, 2, n),
        "longterm_loan": rng.integers(0, 2, n),
        "notes": ["sold 2 goats"] * n,
    })
    assert find_identifiers(frame) == []
    leaky = frame.assign(
        owner_phone=[f"+2547{rng.integers(10**7, 10**8)}" for _ in range(n)],
        memo=["ok"] * (n - 3) + ["call 0712 345 678", "0722-111-222", "nothing"],
        email_address=["a@b.org"] * n,
        _geolocation=["-1.28 36.8"] * n,
        gps_latitude=[-1.28] * n,
        FirstName=["Ann"] * n,
    )
    rules = {f["column"]: f["rule"] for f in find_identifiers(leaky)}
    assert rules == {"owner_phone": "phone-number column name", "memo": "phone numbers",
                     "email_address": "e-mail column name", "_geolocation": "GPS coordinate column name",
                     "gps_latitude": "GPS coordinate column name", "FirstName": "person-name column name"}
    assert {f["column"] for f in find_identifiers(leaky, allow=["memo", "FirstName"])} == {
        "owner_phone", "email_address", "_geolocation", "gps_latitude"}


def test_assert_no_identifiers_on_frames_and_files(tmp_path):
    frame = pd.DataFrame({"firm": [1, 2], "phone": ["0712 000 001", "0712 000 002"]})
    with pytest.raises(IdentifierLeakError, match=r"column 'phone': phone-number column name \(2 values"):
        assert_no_identifiers(frame)
    with pytest.raises(IdentifierLeakError, match="configured identifier"):
        assert_no_identifiers(pd.DataFrame({"hhname": ["x"]}), ["hhname"])
    frame.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "r.html").write_text("<html><style>.a{x:1}</style><p>Effect 12.3 (4.5), n = 476</p></html>")
    (tmp_path / "m.json").write_text(json.dumps({"n": 845, "contact": "x@example.org"}))
    with pytest.raises(IdentifierLeakError) as err:
        assert_no_identifiers(tmp_path)
    assert "t.parquet" in str(err.value) and "m.json" in str(err.value) and "r.html" not in str(err.value)
    (tmp_path / "t.parquet").unlink()
    (tmp_path / "m.json").unlink()
    assert_no_identifiers(tmp_path)


def test_salted_hash_links_within_a_salt_only():
    values = pd.Series(["Shampa", "Rina", "Shampa", None, 12.0, "12"])
    a, b = salted_hash(values, "one"), salted_hash(values, "two")
    assert a[0] == a[2] and a[0] != a[1] and a[4] == a[5] and a[3] is None
    assert a[0] != b[0] and len(a[0]) == 16


def test_phone_at_sentence_end_in_brackets_or_rare_is_found():
    ok = ["sold 2 goats", "paid 1,250,000 on 2024-01-05", "loan 12.5% for 18 months", "id 00123", "v1.26.4",
          "1,250,000 2024-01-05", "visit 2024-01-05 0930"]   # an amount's tail or a date before digits: no phone
    for text in ["please call 0712 345 678.", "contact (0712 345 678) later", "call +254 712 345 678, thanks",
                 "mail ann.k@example.co.ke."]:
        frame = pd.DataFrame({"comment": ok * 40 + [text]})  # 1 in 281 rows: below any count threshold
        found = find_identifiers(frame)
        assert [(f["column"], f["count"], f["rows"]) for f in found] == [("comment", 1, [len(ok) * 40])], text
    # ordinary numbers are not phones: amounts, dates, decimals, short ids; bare 9-digit ids only if common
    assert find_identifiers(pd.DataFrame({"comment": ok * 40})) == []
    ids = pd.DataFrame({"ref": [str(123456789 + i) for i in range(2)] + ["x"] * 500})
    assert find_identifiers(ids) == []


def _ingest_one(raw, cfg, value_labels):
    from pipeline import ingest
    from pipeline.study import normalise

    cfg = normalise(cfg)
    return ingest.ingest_frame(raw, value_labels, {}, cfg, cfg["files"][0], salt=None)


def test_value_labels_with_phones_emails_or_identifier_values_are_refused(raw, cfg):
    from pipeline.ingest import IngestError

    labels = {"owner_sex": {1: "Male", 2: "Female"}}
    _, book = _ingest_one(raw, cfg, labels)                      # ordinary labels pass
    assert "Female" in book.set_index("column").loc["owner_sex", "value_labels"]
    for column, code, label, rule in [
            ("market_id", 11, "stall of Ann.", "value of a configured identifier column"),   # Ann is an owner_name
            ("region", 1, "agent (0712 345 678)", "phone number"),
            ("region", 1, "agent: bob@example.org.", "e-mail address")]:
        with pytest.raises(IngestError, match=rf"tiny: survey\.dta: .*\n  column '{column}', code {code}: {rule}"):
            _ingest_one(raw, cfg, {**labels, column: {code: label, 99: "other"}})
    # the allow-list: a column whose labels are known to be safe
    _ingest_one(raw, {**cfg, "not_identifiers": ["market_id"]}, {"market_id": {11: "stall of Ann"}})
    # an identifier column's own labels are never written, so they are not refused
    _, book = _ingest_one(raw, cfg, {"owner_name": {1: "Ann"}})
    assert book.set_index("column").loc["owner_name", "value_labels"] == ""


def test_free_text_with_one_phone_or_an_identifier_value_stops_ingest(raw, cfg):
    from pipeline.ingest import IngestError

    quiet = ["fine"] * len(raw)
    _ingest_one(raw.assign(remarks=quiet), cfg, {})
    for text, rule in [("met bob at the market", "values of the configured identifier columns"),
                       ("call me on 0712 345 678.", "phone numbers")]:
        leaky = raw.assign(remarks=quiet[:-1] + [text])
        expected = rf"(?s)tiny: .*column 'remarks': {rule}.*\(1 values, e\.g\. rows \[{len(raw) - 1}\]"
        with pytest.raises(IngestError, match=expected):
            _ingest_one(leaky, cfg, {})
        _ingest_one(leaky, {**cfg, "not_identifiers": ["remarks"]}, {})   # declared safe


def _base64_with_digits(n: int = 400) -> str:
    """A base64 run (as in an embedded PNG) holding "+0712345678+": digits between two "+"."""
    import base64

    blob = base64.b64encode(bytes(range(256)) * 2).decode()[:n]
    return blob[: n // 2] + "+0712345678+" + blob[n // 2:]


def test_final_scan_passes_report_noise_and_fails_a_planted_phone(tmp_path):
    from pipeline.privacy import assert_stage_outputs_clean

    nb = {"cells": [{"outputs": [{"data": {"image/png": _base64_with_digits(),
                                           "text/plain": "pandas 2.2.3, Python 3.11.9, 2026-12-04T05:20:22.123456"}}]}],
          "metadata": {"papermill": {"duration": 12.345678901}}}
    (tmp_path / "n.ipynb").write_text(json.dumps(nb))
    (tmp_path / "n.html").write_text(f'<img src="data:image/png;base64,{_base64_with_digits()}"><p>n = 11594. '
                                     "Effect 1234.5 (99.1); total 1,250,000,000; id 20240105</p>")
    (tmp_path / "s.json").write_text(json.dumps({"notes": [], "rows": 11594, "sha256": "ab" * 32}))
    pd.DataFrame({"profit": [1.5, 2.5], "note": ["sold 2 goats", "ok"]}).to_parquet(tmp_path / "t.parquet")
    outs = [tmp_path / name for name in ("n.ipynb", "n.html", "s.json", "t.parquet", "absent.csv")]
    assert_stage_outputs_clean(outs, root=tmp_path)
    # the same base64 run with no image around it is still not a phone number; prose is
    (tmp_path / "n.html").write_text(f"<p>{_base64_with_digits()}</p><p>Call the owner on 0712 345 678.</p>")
    with pytest.raises(IdentifierLeakError, match=r"n\.html: column '\(text\)': phone numbers \(1 values\)"):
        assert_stage_outputs_clean(outs, root=tmp_path)
    # raw survey files written by the synthetic stage hold identifiers by design
    (tmp_path / "n.html").unlink()
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    pd.DataFrame({"phone": ["0712 345 678"]}).to_csv(raw / "survey.csv")
    assert_stage_outputs_clean(outs + [raw], root=tmp_path)
    with pytest.raises(IdentifierLeakError, match="survey.csv"):
        assert_stage_outputs_clean([raw], root=tmp_path / "elsewhere")


def test_cell_ids_of_all_digits_are_not_id_numbers_but_the_same_digits_in_a_cell_are(tmp_path):
    """Jupyter gives a new cell a random id, all digits about once in 40 cells (a test's added cell
    "41464423" failed the synthetic stage): the executed notebook and its HTML pass; the same digits
    in a cell's source, its output or the HTML's text are still an ID number."""
    import nbformat

    from pipeline.notebook_html import export_html
    from pipeline.privacy import assert_stage_outputs_clean

    def notebook(source: str, output: str) -> nbformat.NotebookNode:
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell(source, outputs=[nbformat.v4.new_output("stream", name="stdout", text=output)])
        cell["id"] = "41464423"
        uuid_cell = nbformat.v4.new_markdown_cell("# Profits")
        uuid_cell["id"] = "12345678-abcd-4ef0-9abc-901234567890"      # JupyterLab's UUID form
        nb.cells = [cell, uuid_cell]
        return nb

    outs = [tmp_path / "n.ipynb", tmp_path / "n.html"]
    for nb in (notebook("x = 1", "1"),):
        nbformat.write(nb, str(outs[0]))
        (outs[1]).write_text(export_html(nb, hide_code=False))
        assert 'id="cell-id=41464423"' in outs[1].read_text()
        assert_stage_outputs_clean(outs, root=tmp_path)
    for source, output in (("owner_id = '41464423'", "1"), ("x = 1", "ID 41464423")):
        nb = notebook(source, output)
        nbformat.write(nb, str(outs[0]))
        outs[1].write_text(export_html(nb, hide_code=False))
        with pytest.raises(IdentifierLeakError, match=r"n\.ipynb: column '\(text\)': ID numbers"):
            assert_stage_outputs_clean(outs, root=tmp_path)
        if output != "1":                 # printed: in the HTML's text too
            with pytest.raises(IdentifierLeakError, match=r"n\.html: column '\(text\)': ID numbers"):
                assert_stage_outputs_clean(outs[1:], root=tmp_path)


def test_a_stage_whose_output_holds_a_phone_fails_and_keeps_the_previous_outputs(tmp_path, monkeypatch):
    import nbformat
    import papermill

    from pipeline import paths, run_stage
    from pipeline.io import write_text

    root, name = tmp_path / "repo", paths.STAGE_NOTEBOOKS["report"]
    notebooks = root / "reports" / "notebooks"
    outs = [root / "reports" / "results.csv"] + [notebooks / f"{name}{s}" for s in (".ipynb", ".html", ".code.html")]
    monkeypatch.setattr(run_stage, "REPO_ROOT", root)
    monkeypatch.setattr(run_stage, "stage_outs", lambda stage, study, pipeline="main": outs)
    monkeypatch.setattr(paths, "executed_notebook_dir", lambda stage, study, pipeline="main": notebooks)
    monkeypatch.setenv("PYTHONPATH", "")
    for out in outs:
        write_text(out, "old\n")

    def execute_notebook(source, output, **kwargs):
        write_text(root / "reports" / "results.csv", "study,comment\nx,call 0712 345 678.\n")
        nbformat.write(nbformat.v4.new_notebook(), output)

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    with pytest.raises(IdentifierLeakError, match=r"results\.csv: column 'comment': phone numbers"):
        run_stage.run("report")
    assert {out.name: out.read_text() for out in outs} == {out.name: "old\n" for out in outs}


def test_id_numbers_in_text_are_found_once_and_ordinary_numbers_are_not():
    ordinary = ["sold 2 goats", "paid 12500000 in 2023", "paid 1,250,000 on 2024-01-05", "visit on 20240105",
                "loan 12.5% for 18 months", "code 1234567", "ref 12345678.5", "uuid:12345678-1234-5678-9abc-0123",
                "hash ab12345678cd", "at 2026-12-04T05:20:22.123456", "pages 5559-5583", "in 2012-2013",
                "<td>11415.837</td>", "mean 1234567.891"]   # decimals in a rendered table (a report notebook)
    for text in ["her national ID is 12345678.", "passport A1234567", "acct 0123-4567-8901, branch 4",
                 "card 4111 1111 1111 1111", "DNI 12.345.678", "KRA PIN A012345678Z"]:
        frame = pd.DataFrame({"notes": ordinary * 20 + [text]})   # 1 in 241 rows
        found = find_identifiers(frame)
        assert [(f["column"], f["count"], f["rows"]) for f in found] == [("notes", 1, [len(ordinary) * 20])], text
        # a 9-15 digit account number in phone-like groups is refused as a phone number first
        assert found[0]["rule"].startswith("phone" if text.startswith("acct") else "ID numbers"), text
    assert find_identifiers(pd.DataFrame({"notes": ordinary * 20})) == []
    # bare values: a grouped account number is one; bare digit runs and thousands-grouped amounts are codes
    codes = pd.DataFrame({"ref": ["12345678", "12 345 678", "2024", "12.345.678", "00123"] * 40})
    assert find_identifiers(codes) == []
    planted = codes.assign(ref=codes["ref"].where(codes.index != 7, "0123-4567-8901"))
    assert [f["rows"] for f in find_identifiers(planted)] == [[7]]
    # numeric columns of amounts, years and 8-digit codes are data (judged as a whole, as before)
    rng = np.random.default_rng(1)
    numeric = pd.DataFrame({"amount": rng.integers(10**7, 10**8, 300), "year": rng.integers(1990, 2025, 300),
                            "code": rng.integers(10**7, 10**8, 300).astype(str)})
    assert find_identifiers(numeric) == []
    # the allow-list: a column declared safe is not searched
    assert find_identifiers(pd.DataFrame({"notes": ["ID 12345678"]}), allow=["notes"]) == []


def test_id_numbers_in_value_labels_and_stage_outputs_are_refused(raw, cfg, tmp_path):
    from pipeline.ingest import IngestError
    from pipeline.privacy import assert_stage_outputs_clean

    with pytest.raises(IngestError, match=r"column 'region', code 1: ID number"):
        _ingest_one(raw, cfg, {"region": {1: "agent ID 23456789", 2: "north"}})
    _ingest_one(raw, {**cfg, "not_identifiers": ["region"]}, {"region": {1: "agent ID 23456789"}})
    out = tmp_path / "r.html"
    out.write_text("<p>n = 11594; seed 20241204; total 1,250,000,000; 12500000 LCU; p = 0.000123456</p>")
    assert_stage_outputs_clean([out], root=tmp_path)
    out.write_text("<p>Owner passport A1234567 kept.</p>")
    with pytest.raises(IdentifierLeakError, match=r"r\.html: column '\(text\)': ID numbers \(1 values\)"):
        assert_stage_outputs_clean([out], root=tmp_path)


def test_a_person_named_after_a_title_or_cue_in_an_innocent_column_is_found():
    ordinary = ["sold 2 goats", "Cape Town market closed", "Business Services and Fees", "spoke to the owner",
                "met Monday with NGO staff", "sold to Mary", "Composite Profits Winsorized", "loan from Equity Bank"]
    for text in ["spoke to Mary Wanjiku at her shop", "Met Mr. Otieno", "talked with Juma about stock",
                 "wife of Kamau runs it", "Mama Akinyi was away", "the owner, named Peter, refused"]:
        frame = pd.DataFrame({"notes": ordinary * 25 + [text]})
        assert [(f["column"], f["count"], f["rows"], f["rule"][:15]) for f in find_identifiers(frame)] == [
            ("notes", 1, [200], "a person's name")], text
    assert find_identifiers(pd.DataFrame({"notes": ordinary * 25})) == []


def test_names_of_the_identifier_columns_or_after_a_cue_stop_ingest_and_label_writing(raw, cfg):
    from pipeline.ingest import IngestError

    named = raw.assign(owner_name=["Mary Wanjiku"] + raw["owner_name"].tolist()[1:])
    quiet = ["fine"] * len(raw)
    for text in ["MARY WANJIKU paid late", "spoke to Zawadi at her shop"]:   # a known name; a cued one
        with pytest.raises(IngestError, match=r"(?s)column 'remarks': .*\(1 values, e\.g\. rows \[2\]"):
            _ingest_one(named.assign(remarks=quiet[:2] + [text] + quiet[3:]), cfg, {})
    with pytest.raises(IngestError, match=r"column 'region', code 2: a person's name after a title or cue"):
        _ingest_one(raw, cfg, {"region": {1: "north", 2: "agent Mrs Otieno"}})


def test_the_new_rules_flag_nothing_in_the_real_studies_labels():
    """ID numbers and cued names against every value and variable label of the 10 real studies
    (read in place; bdgk2015 is not one of them): 0 found (a bare pair of capitalised words would
    flag 92 of the 521 labels, hence the cue)."""
    from conftest import REAL_DATA
    from pipeline.ingest import read_raw
    from pipeline.identifier_patterns import has_cued_name, id_numbers
    from pipeline.study import load_study, resolve_file

    studies = ["acz2018", "berge2015", "field2013"] + [f"meager_{s}" for s in (
        "angelucci", "attanasio", "augsberg", "banerjee", "crepon", "karlan", "tarozzi")]
    if not all((REAL_DATA / ("meager" if s.startswith("meager") else s)).is_dir() for s in studies):
        pytest.skip("real data absent")
    labels = []
    for study in studies:
        cfg = load_study(study)
        for entry in cfg["files"]:
            path = resolve_file(entry, REAL_DATA / ("meager" if study.startswith("meager") else study))
            _, value_labels, variable_labels = read_raw(path, entry["format"], entry)
            labels += [str(v) for labs in value_labels.values() for v in labs.values()]
            labels += [str(v) for v in variable_labels.values() if v]
    assert len(labels) == 521
    assert [t for t in labels if id_numbers(t) or has_cued_name(t)] == []


# ------------------------------------------------------------------------------------------------
# Property: random messy surveys through ingest and clean
# ------------------------------------------------------------------------------------------------

_NAMES = ["Mary Wanjiku", "Juma Otieno", "Akinyi Achieng", "Peter Kamau", "Zawadi Njeri", "Halima Omondi"]
_PHONES = ["0712 345 678", "+254 722 111 222", "0733-456-789", "0700111222", "(020) 345 6782", "0755 000 123"]
_WORDS = ["sold", "goats", "shop", "closed", "rain", "market", "stock", "Cape", "Town", "NGO", "Equity", "Bank",
          "2024-01-05", "05.01.2024", "1,250,000", "12.5%", "ok", "-99", "n/a", "Business", "Services"]
# "name": a name that is in owner_name (a dropped identifier column)
_PLANTS = {"phone": lambda i: f"call {_PHONES[i]}.", "name": lambda i: f"{_NAMES[i].lower()} paid",
           "cued": lambda i: f"spoke to Mr Baraka at stall {i}", "id": lambda i: f"ID {23456789 + 1111 * i}",
           "email": lambda i: f"mail k{i}@shop.co.ke"}


@st.composite
def messy_surveys(draw):
    """A tiny study's raw survey (conftest columns): 2-6 firms x rounds 0/1, with random missing codes,
    negative and text values in the money columns, exact and corrected duplicates, missing follow-ups,
    blank clusters, undefined arms and a free-text column; maybe one planted identifier in it."""
    n_firms = draw(st.integers(2, 6))
    money = st.one_of(st.integers(-500, 5000), st.sampled_from([-99, -98, -88]), st.none(),
                      st.sampled_from(["1,200", " 300 ", "n/a", "abc"]))
    rows = []
    for firm in range(1, n_firms + 1):
        region, market = firm % 2 + 1, 10 + firm
        arm = draw(st.sampled_from([1, 2, 3, 4, 4, 3, 2, 1, 9]))
        sex = draw(st.sampled_from([1, 2]))
        for rnd in draw(st.sampled_from([[0, 1], [0], [0, 1, 1]])):
            submitted = f"2024-0{1 + 5 * min(rnd, 1)}-0{1 + len(rows) % 8} 09:00:00"
            rows.append({"submission_id": f"s{len(rows):02d}", "submitted_at": submitted,
                         "firm_id": firm, "round": rnd, "region": region,
                         "market_id": draw(st.sampled_from([market] * 5 + [None])),
                         "owner_sex": sex, "treat_arm": arm, "business_open": draw(st.sampled_from([1, 1, 0, -88])),
                         "recall_period": draw(st.sampled_from([1, 2, 2])), "profit": draw(money),
                         "revenue": draw(money), "owner_age": draw(st.sampled_from([30, 41, 200, -99])),
                         "bp_1": draw(st.sampled_from([0, 1, -98])), "bp_2": draw(st.sampled_from([0, 1])),
                         "owner_name": _NAMES[(firm - 1) % len(_NAMES)], "phone": _PHONES[(firm - 1) % len(_PHONES)],
                         "remarks": " ".join(draw(st.lists(st.sampled_from(_WORDS), max_size=5)))})
    if draw(st.booleans()):
        rows.append({**rows[0]})                                       # an exact duplicate submission
    raw = pd.DataFrame(rows)
    plant = draw(st.sampled_from([None, None, *_PLANTS]))
    at = draw(st.integers(0, len(raw) - 1))
    if plant:
        raw.loc[at, "remarks"] = _PLANTS[plant](_NAMES.index(raw.loc[at, "owner_name"]))
    return raw, plant, at


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_surveys())
def test_messy_surveys_keep_every_row_and_no_identifier(case):
    from pipeline import clean, ingest
    from pipeline.ingest import IngestError
    from pipeline.study import normalise
    from _params import params_group
    from conftest import study_config

    raw, plant, at = case
    cfg = normalise(study_config())
    entry = cfg["files"][0]
    if plant:   # refused at ingest, naming the study, the file, the column and the row
        with pytest.raises(IngestError, match=rf"(?s)tiny: .*survey\.dta: column 'remarks': .*rows \[{at}\]"):
            ingest.ingest_frame(raw, {}, {}, cfg, entry, salt=None)
        return
    interim, book = ingest.ingest_frame(raw, {}, {}, cfg, entry, salt=None)
    try:
        out = clean.clean(interim.assign(usd_ppp_per_lcu=0.5), cfg, params_group("clean"))
    except ValueError as exc:   # a refusal must say where
        assert str(exc).startswith("tiny: ") and "survey.dta" in str(exc), str(exc)
        return
    kept, rejected = out["clean"], out["rejected"]
    assert sorted(kept["source_row"].tolist() + rejected["source_row"].tolist()) == list(range(len(raw)))
    assert rejected["reason"].astype(str).str.len().gt(0).all()
    for table in (interim, book, kept, rejected, out["log"]):
        text = table.astype(str).to_csv(index=False).casefold()
        assert not any(v.casefold() in text for v in _NAMES + _PHONES)



def test_known_safe_patterns_are_not_searched_and_the_rest_of_the_text_is(raw, cfg):
    from pipeline.ingest import IngestError
    from pipeline.study import StudyConfigError, normalise

    notes = pd.DataFrame({"notes": ["batch LOT 23456789 sold", "ok", "batch LOT 34567890"]})
    assert [f["rows"] for f in find_identifiers(notes)] == [[0, 2]]                  # read as ID numbers
    assert find_identifiers(notes, safe_patterns=[r"LOT \d{8}"]) == []
    phone = notes.assign(notes=notes["notes"] + [" call 0712 345 678", "", ""])
    assert [(f["rule"], f["rows"]) for f in find_identifiers(phone, safe_patterns=[r"LOT \d{8}"])] == [
        ("phone numbers", [0])]
    labels = {"region": {1: "stock LOT 23456789", 2: "north"}}
    with pytest.raises(IngestError, match="column 'region', code 1: ID number"):
        _ingest_one(raw, cfg, labels)
    _ingest_one(raw, {**cfg, "not_identifier_patterns": [r"LOT \d{8}"]}, labels)
    with pytest.raises(StudyConfigError, match=r"not_identifier_patterns: 'LOT-\(' is not a regular expression"):
        normalise({**cfg, "not_identifier_patterns": ["LOT-("]})
