"""scripts/bench.py (make bench): the logic that needs no timing — targets, rows built from
measured numbers, the table and README rows, argument parsing. Nothing here times anything."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("bench")
ROW_FIELDS = {"figure", "measured", "value", "target", "met"}


@pytest.mark.parametrize(("value", "target", "met"), [
    (1.3, "<= 1.3", True), (1.31, "<= 1.3", False), (10.0, ">= 10", True), (9.99, ">= 10", False),
    (4095, "< 4096", True), (4096, "< 4096", False), (0.5, "< 1", True), (2.0, "", None)])
def test_target_met(value, target, met):
    assert bench.target_met(value, target) is met


def test_tax_rows_ratio_of_medians():
    rows = bench.tax_rows({"synthetic": {"function_s": [2.0, 4.0, 3.0], "stage_s": [6.0, 3.0, 4.5]},
                           "estimate": {"function_s": [200.0], "stage_s": [210.0]}})
    assert [r["value"] for r in rows] == pytest.approx([4.5 / 3.0, 1.05])
    assert [r["met"] for r in rows] == [False, True]
    assert "synthetic:" in rows[0]["figure"] and "medians of 3" in rows[0]["figure"]
    assert "estimate@synthetic" in rows[1]["figure"] and "medians of 1" in rows[1]["figure"]
    assert rows[0]["measured"] == "4.5 s vs 3.0 s"


def test_simulation_rows_project_the_stage_from_cpu_per_draw():
    sim = {"draws": 2000, "few_cluster_draws": 500, "workers": 2}
    # a reference without few-cluster draws: 2000 x 1.5 = 3000 s; this checkout 2000 x 0.5 + 500 x 0.4 = 1200 s
    rows = bench.simulation_rows({"reference": {"main": 1.5, "few": None},
                                  "this checkout": {"main": 0.5, "few": 0.4}}, "a73bafe", sim)
    per_draw, stage, wall = rows
    assert per_draw["value"] == pytest.approx(3.0) and per_draw["met"] is None
    assert stage["value"] == pytest.approx(2.5) and stage["target"] == ">= 10" and stage["met"] is False
    assert "none at a73bafe" in stage["figure"]
    assert wall["value"] == pytest.approx(600.0) and "1,500 s" in wall["figure"]
    # both with few-cluster draws: 3000 + 500 x 0.8 = 3400 s against 1200 s
    rows = bench.simulation_rows({"reference": {"main": 1.5, "few": 0.8},
                                  "this checkout": {"main": 0.5, "few": 0.4}}, "cece073", sim)
    assert rows[1]["value"] == pytest.approx(3400 / 1200)


def _contender(role, seconds, peak_mb, exit_code=0):
    return {"role": role, "seconds": seconds, "peak_gb": peak_mb / 1024, "peak_mb": peak_mb, "exit": exit_code}


def test_duckdb_rows_time_ratio_and_engine_peak():
    result = {"survey": {"rows": 1_000_046},
              "contenders": [_contender("baseline", 20.0, 900), _contender("engine", 27.0, 1100)]}
    time_row, peak_row = bench.duckdb_rows(result)
    assert time_row["value"] == pytest.approx(1.35) and time_row["met"] is True
    assert peak_row["value"] == 1100 and peak_row["met"] is True
    assert "1,000,046 rows" in time_row["figure"]


def test_duckdb_rows_name_a_failed_contender():
    result = {"survey": {"rows": 10}, "contenders": [_contender("baseline", 1.0, 10), _contender("engine", 1.0, 10, 1)]}
    with pytest.raises(RuntimeError, match="engine failed"):
        bench.duckdb_rows(result)


def test_estimation_rows_warm_time_and_peak_ratios():
    runs = [{"n": 100_000, "tool": "fastols", "first_s": 0.02, "warm_s": 0.01, "peak_gb": 0.2},
            {"n": 100_000, "tool": "pyfixest", "first_s": 4.0, "warm_s": 0.05, "peak_gb": 0.25}]
    time_row, peak_row = bench.estimation_rows({"runs": runs, "verdicts": [{"n": 100_000}]})
    assert time_row["value"] == pytest.approx(0.2) and time_row["met"] is True
    assert peak_row["value"] == pytest.approx(0.8) and peak_row["met"] is True
    assert "100,000 rows" in time_row["figure"]


def test_every_part_is_measured_and_rows_have_the_fields():
    assert set(bench.MEASURE) == set(bench.PARTS) | {"cold_repro"}
    rows = bench.tax_rows({"clean": {"function_s": [1.0], "stage_s": [1.2]}}) + bench.simulation_rows(
        {"reference": {"main": 1.0, "few": None}, "this checkout": {"main": 0.1, "few": 0.1}}, "x",
        {"draws": 10, "few_cluster_draws": 1, "workers": 1})
    for r in rows:
        assert set(r) == ROW_FIELDS
        json.dumps(r)


def test_table_and_markdown_list_every_row():
    rows = [bench.row("tax clean", "5.0 s vs 4.0 s", 1.25, "<= 1.3"), bench.row("wall", "600 s", 600.0)]
    text = bench.table(rows).splitlines()
    assert len(text) == 2 + len(rows)
    assert text[2].startswith("tax clean") and text[2].endswith("yes") and text[3].endswith("-")
    machine = {"date_utc": "2026-12-04 15:00:00", "cores": 2, "load_average_start": (9.5, 8, 7),
               "load_average_end": (6.25, 5, 4)}
    md = bench.markdown(rows, machine).splitlines()
    assert "2026-12-04, 2 cores, load average 9.5 at start, 6.2 at end" in md[0]
    assert md[2] == "| tax clean | 5.0 s vs 4.0 s | 1.25 | <= 1.3 | yes |"
    assert md[3] == "| wall | 600 s | 600 | - | - |"
    assert all(line.count("|") == 6 for line in md)


def test_parse_args():
    args = bench.parse_args([])
    assert args.only == list(bench.PARTS) and not args.cold_repro and args.markdown is None
    assert args.duckdb_rows == 1_000_000 and args.simulation_against == bench.SIMULATION_REFERENCE
    args = bench.parse_args(["--only", "duckdb,tax", "--tax-stages", "estimate", "synthetic", "--markdown"])
    assert args.only == ["duckdb", "tax"] and args.tax_stages == ["synthetic", "estimate"] and args.markdown == ""
    assert bench.parse_args(["--markdown", "x.json"]).markdown == "x.json"
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "tax,speed"])


def test_markdown_of_an_earlier_run(tmp_path, capsys):
    results = {"machine": {"date_utc": "2026-12-04 15:00:00", "cores": 2, "load_average_start": [3.0, 2, 1]},
               "rows": [bench.row("tax clean", "5 s vs 4 s", 1.25, "<= 1.3")]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(results))
    assert bench.main(["--markdown", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "load average 3.0 at start) |" in out[0]          # a run stopped early: no end load
    assert out[2] == "| tax clean | 5 s vs 4 s | 1.25 | <= 1.3 | yes |"


def test_duckdb_rows_to_firms():
    assert _load("bench_duckdb").firms_for(10_000_200) == 2_600_000
