"""What `make evidence` wrote: every configured real study in the evidence report and its metrics,
the synthesis pooled, the DVC lock in sync, and the report opening offline in a browser.

Runs on this checkout's outputs after `make evidence`. Without them the tests skip, unless
EVIDENCE_REQUIRED is set (.ci/run sets it after running `make evidence`): then they fail.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline import paths
from pipeline.io import load_params

REPORT = paths.reports_dir("evidence") / "index.html"


@pytest.fixture(scope="module")
def evidence():
    if not REPORT.exists():
        if os.environ.get("EVIDENCE_REQUIRED"):
            pytest.fail(f"{REPORT} is absent although EVIDENCE_REQUIRED is set (make evidence did not write it)")
        pytest.skip("no evidence outputs here (run `make evidence`)")
    return json.loads((paths.reports_dir("evidence") / "metrics.json").read_text())


def test_every_configured_study_has_its_pooled_effects_in_the_metrics(evidence):
    for study in load_params()["evidence"]["studies"]:
        block = evidence[study]
        assert block["primary_outcome"], study
        pooled = {k: v for k, v in block.items() if k.startswith("pooled_")}
        assert pooled and all(v["se"] > 0 for v in pooled.values()), (study, block)
        if study in ("acz2018", "berge2015"):  # owner gender recorded: the women and men effects too
            assert any(k.endswith("_women") for k in block) and any(k.endswith("_men") for k in block), (study, sorted(block))


def test_berge2015_reproduces_the_published_by_gender_effects(evidence):
    """../shared/data/README.md: training + grant, men 0.377 (0.177), women 0.066 (0.119)."""
    block = evidence["berge2015"]
    both = {sex: block[f"arm_training_grant_{sex}"] for sex in ("men", "women")}
    assert both["men"]["estimate"] == pytest.approx(0.3769, rel=0.01) and both["men"]["se"] == pytest.approx(0.1774, rel=0.01)
    assert both["women"]["estimate"] == pytest.approx(0.0657, abs=0.01) and both["women"]["se"] == pytest.approx(0.1189, rel=0.01)


def test_the_synthesis_pools_what_two_or_more_studies_report(evidence):
    pooled = pd.read_csv(paths.synthesis_dir() / "pooled.csv")
    pct = pooled[pooled["scale"] == "pct_of_control_mean"].set_index(["intervention", "group"])
    # capital for men: berge2015 alone reports it, so it is listed as not pooled
    for key in (("capital", "women"), ("capital", "all"), ("skills", "women"), ("skills", "men")):
        row = pct.loc[key]
        assert row["n_studies"] >= 2 and row["mu_lower"] <= row["mu_mean"] <= row["mu_upper"], key
        assert 0.5 <= row["coverage_mu"] <= 1.0
    assert "synthesis" in evidence and evidence["synthesis"]


def test_a_second_run_does_nothing(evidence):
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "evidence/dvc.yaml"], cwd=paths.REPO_ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "up to date" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_the_evidence_report_opens_offline_without_errors(evidence, tmp_path):
    from playwright.sync_api import sync_playwright

    from test_browser import ARGS, CHROMIUM, visit

    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors, external = visit(page, REPORT)
        text = page.inner_text("body")
        links = page.eval_on_selector_all("a[href$='.html']", "els => els.map(e => e.getAttribute('href'))")
        images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        page.screenshot(path=str(tmp_path / "evidence.png"), full_page=True)
        for href in links:
            if href == "../index.html":  # the default run's report: written by `make repro`, not by `make evidence`
                continue
            sub = browser.new_page()
            sub_errors, sub_external = visit(sub, REPORT.parent / href)
            assert not sub_errors and not sub_external, (href, sub_errors, sub_external)
            sub.close()
        browser.close()
    assert errors == [] and external == []
    assert "Across the studies" in text and "Coverage of the interval" in text and "Meta-regression" in text
    assert images and all(w > 0 for w in images)
    for study in load_params()["evidence"]["studies"]:
        assert study in text, study
