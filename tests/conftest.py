"""Small fixtures made in code: a study configuration and a raw survey with known mess."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def study_config() -> dict:
    return {
        "study": "tiny",
        "files": [{"path": "survey.dta", "format": "dta", "sha256": None}],
        "identifiers": ["owner_name", "phone"],
        "missing_codes": {-99: "refused", -98: "dont_know", -88: "not_applicable"},
        "unit_id": "firm_id",
        "round": "round",
        "rounds": [0, 1],
        "baseline_round": 0,
        "submission": {"id": "submission_id", "time": "submitted_at"},
        "strata": ["region"],
        "cluster": "market_id",
        "weight": None,
        "female_owner": {"column": "owner_sex", "female_codes": [2]},
        "treatment": {"column": "treat_arm", "arms": {
            1: {"label": "Control", "skills": 0, "capital": 0},
            2: {"label": "Training only", "skills": 1, "capital": 0},
            3: {"label": "Grant only", "skills": 0, "capital": 1},
            4: {"label": "Training + grant", "skills": 1, "capital": 1}}},
        "takeup": {},
        "recall_period": {"column": "recall_period", "codes": {1: "week", 2: "month"}},
        "currency": "LCU",
        "usd_ppp_per_lcu": 0.5,
        "outcomes": {"profit": {"column": "profit", "flow": True, "allow_negative": True},
                     "revenue": {"column": "revenue", "flow": True, "allow_negative": False}},
        "business_open": {"column": "business_open", "closed_codes": [0]},
        "valid_ranges": {"owner_age": [15, 95]},
        "skills_index": {"columns": ["bp_1", "bp_2"], "areas": {"marketing": ["bp_1"], "records": ["bp_2"]}},
        "credit_access": None,
        "covariates": {"owner_age": "owner_age"},
    }


def raw_survey() -> pd.DataFrame:
    """Four firms x two rounds, with the mess each cleaning rule handles.

    firm 1: clean; firm 2: weekly recall at follow-up, refused profit at baseline;
    firm 3: closed at follow-up (-88), impossible age 200 at baseline;
    firm 4: follow-up submitted twice identically and once with a later correction;
    firm 5: follow-up missing (attrition); an extra row with an undefined arm (9).
    """
    rows = [
        # sub, time, firm, round, region, market, sex, arm, open, recall, profit, revenue, age, bp1, bp2, name, phone
        ("s01", "2024-01-01 09:00:00", 1, 0, 1, 11, 2, 1, 1, 2, 100, 300, 30, 1, 0, "Ann", "0712 000 001"),
        ("s02", "2024-06-01 09:00:00", 1, 1, 1, 11, 2, 1, 1, 2, 120, 320, 30, 1, 1, "Ann", "0712 000 001"),
        ("s03", "2024-01-01 10:00:00", 2, 0, 1, 12, 1, 2, 1, 2, -99, 400, 41, 0, 0, "Bob", "0712 000 002"),
        ("s04", "2024-06-01 10:00:00", 2, 1, 1, 12, 1, 2, 1, 1, 30, 90, 41, -98, 1, "Bob", "0712 000 002"),
        ("s05", "2024-01-01 11:00:00", 3, 0, 2, 21, 2, 3, 1, 2, 50, 150, 200, 0, 0, "Cat", "0712 000 003"),
        ("s06", "2024-06-01 11:00:00", 3, 1, 2, 21, 2, 3, 0, 2, -88, -88, 52, 0, 1, "Cat", "0712 000 003"),
        ("s07", "2024-01-01 12:00:00", 4, 0, 2, 22, 1, 4, 1, 2, -20, 0, 25, 1, 1, "Dan", "0712 000 004"),
        ("s08", "2024-06-01 12:00:00", 4, 1, 2, 22, 1, 4, 1, 2, 80, 200, 25, 1, 1, "Dan", "0712 000 004"),
        ("s09", "2024-06-01 12:05:00", 4, 1, 2, 22, 1, 4, 1, 2, 80, 200, 25, 1, 1, "Dan", "0712 000 004"),
        ("s10", "2024-06-02 08:00:00", 4, 1, 2, 22, 1, 4, 1, 2, 90, 210, 25, 1, 1, "Dan", "0712 000 004"),
        ("s11", "2024-01-01 13:00:00", 5, 0, 1, 11, 2, 1, 1, 2, 60, 100, 33, 0, 1, "Eve", "0712 000 005"),
        ("s12", "2024-01-01 14:00:00", 6, 0, 1, 11, 1, 9, 1, 2, 10, 10, 33, 0, 1, "Fay", "0712 000 006"),
    ]
    cols = ["submission_id", "submitted_at", "firm_id", "round", "region", "market_id", "owner_sex", "treat_arm",
            "business_open", "recall_period", "profit", "revenue", "owner_age", "bp_1", "bp_2", "owner_name", "phone"]
    df = pd.DataFrame(rows, columns=cols)
    int_cols = [c for c in cols if c not in ("submission_id", "submitted_at", "owner_name", "phone")]
    return df.astype({c: "int32" for c in int_cols})


VALUE_LABELS = {"owner_sex": {1: "Male", 2: "Female"}, "business_open": {0: "No", 1: "Yes"},
                "bp_1": {0: "No", 1: "Yes", -98: "Don't know"}}


@pytest.fixture
def cfg() -> dict:
    return study_config()


@pytest.fixture
def raw() -> pd.DataFrame:
    return raw_survey()


@pytest.fixture
def interim(raw) -> pd.DataFrame:
    """What ingest makes of the raw survey: identifiers dropped, source rows numbered."""
    df = raw.drop(columns=["owner_name", "phone"])
    df.insert(0, "source_row", np.arange(len(df)))
    df.insert(0, "source_file", "survey.dta")
    return df


@pytest.fixture(scope="module")
def synthetic_interim():
    """The default survey (params.yaml synthetic:, fewer firms) through the ingest stage's own code:
    (normalised study configuration, interim table)."""
    from _params import params_group

    from pipeline import ingest, paths, synthetic
    from pipeline.study import load_study, normalise

    cfg = normalise(load_study("synthetic"))
    survey, value_labels, variable_labels, _ = synthetic.generate(params_group("synthetic", n_firms=600))
    interim, _ = ingest.ingest_frame(survey, value_labels, variable_labels, cfg, cfg["files"][0], salt=None,
                                     scan_identifiers=False, describe=False)
    factor, _ = ingest.conversion_factor(cfg, paths.raw_synthetic_dir())
    return cfg, ingest.interim_table([interim], cfg, factor)


@pytest.fixture
def dta_dir(tmp_path, raw):
    raw.to_stata(tmp_path / "survey.dta", write_index=False, version=118, value_labels=VALUE_LABELS,
                 variable_labels={"profit": "Profit in the recall period"})
    return tmp_path


# ------------------------------------------------------------------------------------------------
# Shared by the tests of real studies, broken inputs and study configurations
# ------------------------------------------------------------------------------------------------
from pathlib import Path  # noqa: E402

from pipeline.io import REPO_ROOT  # noqa: E402

REAL_DATA = REPO_ROOT / ".." / "shared" / "data"   # ../shared/data from the repository root


def stage_context(stage: str, study, data: Path, group: dict | None = None, data_dir: Path | None = None,
                  **extra):
    """The context of ``stage`` for ``study`` (a name or a YAML path) with every data input and output
    under ``data``, a folder named ``data`` standing for the repository's (never the repo's own):
    ``data/interim/<study>/...``, as dvc.yaml declares them. ``data_dir``: the raw files (ingest);
    ``extra``: the EXTRA_PARAMS values (``flow_period=...``). A real study is found in the evidence
    pipeline's list, any other in the default run's."""
    from pipeline.io import load_params
    from pipeline.stage_context import build

    assert data.name == "data", data
    pipeline = "evidence" if str(study) in load_params()["evidence"]["studies"] else "main"
    return build(stage, study, pipeline=pipeline, group=group, extra=extra, root=data.parent,
                 inputs={"data_dir": Path(data_dir)} if data_dir is not None else None)


@pytest.fixture
def outputs(tmp_path) -> Path:
    """The folder standing for data/ in the tests' stage contexts: tmp_path/out/data."""
    return tmp_path / "out" / "data"


def files_under(root: Path) -> set[str]:
    """Every file below ``root`` (relative paths), to show that a failed stage wrote nothing."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file()} if Path(root).exists() else set()


@pytest.fixture(scope="session")
def dask_clients():
    """Dask clients on LocalClusters of 1 and 2 worker processes (as pipeline.parallel starts them),
    whatever DASK_SCHEDULER_ADDRESS the caller has set; shared by the tests that need them."""
    import os
    from unittest import mock

    from pipeline import parallel
    with mock.patch.dict(os.environ):
        os.environ.pop(parallel.SCHEDULER_ADDRESS_ENV, None)
        with parallel.dask_client(1) as one, parallel.dask_client(2) as two:
            yield {1: one, 2: two}


@pytest.fixture(scope="session")
def reproduced_clone(tmp_path_factory) -> Path:
    """A fresh copy of this checkout (tests/_pipeline_copy.py) where `dvc repro` ran the whole default
    pipeline once, shared by the end-to-end tests (tests/test_pipeline.py, tests/test_browser.py): the
    ones that only read its outputs use it as it is, the ones that rerun stages or edit files work on
    their own copy (``_pipeline_copy.copy_tree``)."""
    from _pipeline_copy import fresh_copy, run, stages_run

    repo = fresh_copy(tmp_path_factory.mktemp("clone") / "project")
    assert "report" in stages_run(run(["dvc", "repro"], repo))
    return repo


@pytest.fixture(scope="session")
def loopback_scheduler():
    """The address of a "remote" scheduler: a LocalCluster on the loopback interface (1 worker
    process), reached by address only, as a stage reaches DASK_SCHEDULER_ADDRESS."""
    import dask
    from distributed import LocalCluster

    # as parallel.dask_client: no MALLOC_TRIM_THRESHOLD_ (a nanny also sets it in this process's environment)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), \
            LocalCluster(host="127.0.0.1", n_workers=1, processes=True, threads_per_worker=1,
                         dashboard_address=":0") as cluster:
        yield cluster.scheduler_address
