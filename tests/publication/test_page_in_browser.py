"""The public page rendered by a real headless browser (Chromium driven by Playwright).

Runs where a Chromium binary is installed (Debian: ``apt-get install -y chromium``; the Python
package ``playwright`` from the dev dependencies drives it, no browser download); skips with
that reason elsewhere. ``test_page_and_openapi.py`` checks the served HTML and data without a
browser, so the page is covered on every machine.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.publication.helpers import Scenario, serve


def _chromium() -> str | None:
    for candidate in (os.environ.get("SIPAS_TEST_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


CHROMIUM = _chromium()
# Skipped before the stack is started, with the reason and the fix — except where a browser is
# required (CI installs Chromium and sets SIPAS_REQUIRE_BROWSER=1): there a missing one fails.
if CHROMIUM is None and os.environ.get("SIPAS_REQUIRE_BROWSER") == "1":
    raise RuntimeError("SIPAS_REQUIRE_BROWSER=1 but no Chromium was found (apt-get install -y chromium)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: `apt-get install -y chromium` runs this test")


async def test_the_page_draws_the_ranking_chart_and_table_of_the_latest_release_in_a_browser(stack, clients):
    chromium = CHROMIUM
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed (pip install -e '.[dev]')")
    s = Scenario(stack, clients)
    await s.keys()
    _, release_id = await s.published_release()

    async with serve(s.app) as url, playwright_api.async_playwright() as pw:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Every call the script makes must succeed (the browser's own favicon request aside).
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
            api_calls: list[str] = []
            page.on("request", lambda r: api_calls.append(r.url) if "/v1/public/" in r.url else None)
            await page.goto(url + "/")
            await page.wait_for_function("document.querySelectorAll('#ranking tbody tr').length === 5", timeout=30_000)

            # The chart: one bar per province, in rank order, the unreliable one lighter, CI whiskers.
            bars = await page.eval_on_selector_all(
                "#chart rect.bar", "els => els.map(e => [e.dataset.province, e.getAttribute('class')])")
            assert [b[0] for b in bars] == ["92", "79", "04", "02", "01"]
            assert dict(bars)["92"] == "bar unreliable" and dict(bars)["01"] == "bar"
            assert await page.locator("#chart line.ci").count() == 5
            labels = await page.eval_on_selector_all("#chart text", "els => els.map(e => e.textContent)")
            assert "1. 92" in labels and "5. 01" in labels

            # The table: rank, province, SIPAS, 95% CI, n, rank change, notes (Vietnamese first).
            rows = await page.eval_on_selector_all(
                "#ranking tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent))")
            assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
            assert [r[1] for r in rows] == ["92", "79", "04", "02", "01"]
            assert all(" – " in r[3] for r in rows) and all(r[4] == "120" for r in rows)
            assert rows[0][6] != "" and rows[4][6] == ""  # 92 is flagged unreliable in the notes
            assert await page.get_attribute("html", "lang") == "vi"
            assert await page.text_content("h2[data-i18n=chart]") == "Xếp hạng các tỉnh, thành phố"
            assert "SIPAS" in await page.text_content("#meta")
            # It read the release through the public API, as any dashboard would.
            assert any(u.endswith("/v1/public/releases?limit=1") for u in api_calls)
            assert any(f"/v1/public/releases/{release_id}/rankings" in u for u in api_calls)

            # The language button switches to English without reloading.
            await page.click("#lang")
            assert await page.get_attribute("html", "lang") == "en"
            assert await page.text_content("h2[data-i18n=chart]") != "Xếp hạng các tỉnh, thành phố"
            assert await page.text_content("#error") == ""
            assert errors == []
        finally:
            await browser.close()
