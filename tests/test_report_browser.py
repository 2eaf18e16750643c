"""The report in a real browser: headless Chromium opens it from disk, runs its script
without console errors, opens a failing cell's drill-down from the matrix, and a
screenshot is saved (tests/artifacts/report.png, or $REPORT_SCREENSHOT_DIR); a report of
thousands of cells stays small enough to open, and a quick-start-sized one fits a
laptop's width.

Chromium is Debian's `chromium` package (.ci/run installs it) driven by Playwright.
Without it the test is skipped with the reason, except under CI, where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from conformance.cli import main
from conformance.results import write_results

from results_sample import many, write

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
#: A laptop's screen, the width the page must fit without scrolling sideways.
LAPTOP = {"width": 1366, "height": 768}
#: The most a report of 5,000 cells may weigh.
MAX_BYTES = 10_000_000


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


@contextlib.contextmanager
def browser_page(viewport: dict[str, int] = LAPTOP) -> Iterator[tuple[object, list[str]]]:
    """A Chromium page, and the list of what went wrong in it: console errors, page errors, fetches."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: problems.append(f"fetched {r.url}") if not r.url.startswith(("file:", "data:")) else None)
            yield page, problems
        finally:
            browser.close()


def _report(results: Path, site: Path) -> Path:
    html = site / "index.html"
    assert main(["report", str(results), "-o", str(html)]) == 0
    return html


def _scrolls_sideways(page) -> bool:
    return page.evaluate("document.scrollingElement.scrollWidth > window.innerWidth")


def _lined_up(page) -> bool:
    """Whether the headings of every matrix span as many columns as each of its rows has cells showing."""
    return page.evaluate("""Array.from(document.querySelectorAll('table.matrix')).every(t => {
        const shown = r => Array.from(r.cells).filter(c => getComputedStyle(c).display !== 'none');
        const width = shown(t.tHead.rows[0]).reduce((n, c) => n + c.colSpan, 0);
        return Array.from(t.tBodies[0].rows).every(r => shown(r).length === width);
    })""")


def test_report_opens_in_chromium_and_a_failing_cell_drills_down(tmp_path, root):
    html = _report(write(tmp_path / "results.json"), tmp_path / "site")
    shots = Path(os.environ.get("REPORT_SCREENSHOT_DIR", root / "tests" / "artifacts"))
    shots.mkdir(parents=True, exist_ok=True)
    with browser_page() as (page, problems):
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
        assert details.locator("figure.heat svg").count() == 3  # reference, implementation, difference
        page.screenshot(path=str(shots / "report-drilldown.png"), full_page=False)

        # folding a column group keeps the table's columns lined up
        assert _lined_up(page)
        page.locator("table.matrix th.grp").first.click()
        assert page.locator("table.matrix th.grp.closed").count() >= 1
        assert _lined_up(page) and not _scrolls_sideways(page)
    assert problems == []
    assert (shots / "report.png").stat().st_size > 10_000


def test_a_quick_start_sized_report_fits_a_laptops_width(tmp_path):
    """960 slots as in the quick start, most of them unable to run: no sideways scrolling at 1366 pixels,
    with the page as it opens, with every column group unfolded, and with drill-downs open."""
    results = write_results(tmp_path / "results.json", many(960))
    html = _report(results, tmp_path / "site")
    with browser_page() as (page, problems):
        page.goto(html.as_uri())
        assert not _scrolls_sideways(page)
        closed = page.locator("table.matrix th.grp.closed:visible")
        while closed.count():  # a device's modes show (folded) once the device unfolds
            closed.first.click()
        assert page.locator("table.matrix th.grp.closed").count() == 0
        assert not _scrolls_sideways(page)
        assert _lined_up(page)
        for kind in ("non-conformant", "known-deviation", "conformant"):
            page.locator(f"table.matrix td.v-{kind} a").first.click()
        assert page.locator("details.slot[open]").count() == 3
        assert not _scrolls_sideways(page)
    assert problems == []


def test_a_report_of_5000_cells_is_small_and_opens(tmp_path):
    """Size is asserted; the time to open is measured by `benchmarks/bench.py report`, not here."""
    results = write_results(tmp_path / "results.json", many(5000))
    html = _report(results, tmp_path / "site")
    assert html.stat().st_size <= MAX_BYTES
    with browser_page() as (page, problems):
        page.goto(html.as_uri(), wait_until="load", timeout=60_000)
        assert page.locator("details.slot").count() > 1000
        assert page.locator("table.matrix").count() == 2
        assert not _scrolls_sideways(page)
    assert problems == []
