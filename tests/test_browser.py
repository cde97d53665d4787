"""A real browser (Debian's headless Chromium, driven by Playwright) opens the reviewer's report.

It must load with no console errors, make no request beyond the local files, and render
something that is not blank; every linked stage notebook must load the same way.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def reports(reproduced_clone) -> Path:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (`make test` installs Debian's chromium package when run as root)")
    return reproduced_clone / "reports"


def visit(page, path: Path) -> tuple[list[str], list[str]]:
    errors, external = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(("file://", "data:")) else None)
    page.goto(path.resolve().as_uri(), wait_until="load")
    return errors, external


def test_index_opens_offline_without_errors_and_is_not_blank(reports, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors, external = visit(page, reports / "index.html")
        shot = tmp_path / "index.png"
        page.screenshot(path=str(shot), full_page=True)
        links = page.eval_on_selector_all("a[href$='.html']", "els => els.map(e => e.getAttribute('href'))")
        images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        for href in links:
            sub = browser.new_page()
            sub_errors, sub_external = visit(sub, reports / href)
            assert not sub_errors and not sub_external, (href, sub_errors, sub_external)
            sub.close()
        browser.close()
    assert errors == [] and external == []
    assert len(links) >= 4 and images and all(w > 0 for w in images)
    import matplotlib.image
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 900 and float(np.std(pixels[..., :3])) > 0.05  # text and a figure, not blank
