"""The report in a real browser: headless Chromium opens it from disk, runs its script
without console errors, opens a failing cell's drill-down from the matrix, and a
screenshot is saved (tests/artifacts/report.png, or $REPORT_SCREENSHOT_DIR).

Chromium is Debian's `chromium` package (.ci/run installs it) driven by Playwright.
Without it the test is skipped with the reason, except under CI, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conformance.cli import main

from results_sample import write

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    reason = None
    if found is None:
        reason = "Chromium is not installed (Debian: apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e '.[test]')"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run under CI: {reason}")
        pytest.skip(reason)
    return found


def test_report_opens_in_chromium_and_a_failing_cell_drills_down(tmp_path, root):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    results = write(tmp_path / "results.json")
    html = tmp_path / "site" / "index.html"
    assert main(["report", str(results), "-o", str(html)]) == 0

    shots = Path(os.environ.get("REPORT_SCREENSHOT_DIR", root / "tests" / "artifacts"))
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: problems.append(f"fetched {r.url}") if not r.url.startswith(("file:", "data:")) else None)
            page.goto(html.as_uri())
            page.screenshot(path=str(shots / "report.png"), full_page=False)

            failing = page.locator("table.matrix td.v-non-conformant a").first
            target = failing.get_attribute("href").lstrip("#")
            details = page.locator(f"details.slot[id='{target}']")
            assert details.get_attribute("open") is None, "drill-downs start closed"
            failing.click()
            page.wait_for_function("id => document.getElementById(id).open", arg=target)
            assert details.locator("text=reproduce").first.is_visible() or details.locator("pre").first.is_visible()
            assert "minimal counterexample" in details.inner_text()
            page.screenshot(path=str(shots / "report-drilldown.png"), full_page=False)

            # folding a column group keeps the table's columns lined up
            page.locator("table.matrix th.grp").first.click()
            assert page.locator("table.matrix th.grp.closed").count() >= 1
        finally:
            browser.close()
    assert problems == []
    assert (shots / "report.png").stat().st_size > 10_000
