"""The HTML report as a reader opens it: headless Chromium, no console errors, every image loads.

Needs the `chromium` and `chromium-driver` Debian packages (.ci/run installs them). Without them
the test is skipped, unless CONCEPTGUARD_REQUIRE_BROWSER=1 (set by .ci/run) makes that a failure.
"""

import os
import shutil

import pytest
from PIL import Image

from conceptguard.eval.report import write_report
from test_report import _row, make_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CONCEPTGUARD_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium/chromedriver on this machine")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,700"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def load_every_image(browser) -> list[int]:
    """Open every prompt set's strip and load every lazy image now (a reader scrolling would, one
    screen at a time); each image's natural width once decoded (0: it did not load)."""
    browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true);"
                           "document.querySelectorAll('img').forEach(i => i.loading = 'eager');")
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all([...document.images].map(i => i.decode().then(() => i.naturalWidth, () => 0)))"
        ".then(done);")


def test_report_opens_in_chromium_without_errors_and_its_images_load(tmp_path, browser):
    results = make_results()
    for stack in ("uce", "esd-x", "sanitizer+espresso-ft+a-long-name"):  # wide tables: five concepts
        for concept in ("burning", "shattered", "glimmer", "zorbo", "velmora"):
            results["rows"].append(_row(stack, concept, "unacceptable", 0.25))
    for i, row in enumerate(results["rows"]):
        row["samples"] = []
        for k in range(4):
            name = f"images/{i:02d}/{k}.png"
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (40 * k, 100, 200)).save(tmp_path / name)
            row["samples"].append({"image": name, "prompt": f"a prompt {i}", "blocked": k == 1})
    page = write_report(results, tmp_path)["html"]

    browser.get(page.resolve().as_uri())
    loaded = load_every_image(browser)
    assert len(loaded) == 2 + 4 * len(results["rows"])  # two plots and every strip
    assert all(width > 0 for width in loaded), loaded
    inside = browser.execute_script(  # every strip's images stay within their own cell
        "return [...document.querySelectorAll('td.strip img')].every(i => {"
        "const r = i.getBoundingClientRect(), c = i.closest('td').getBoundingClientRect();"
        "return r.left >= c.left - 0.5 && r.right <= c.right + 0.5; });")
    assert inside
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    assert browser.title == "ConceptGuard benchmark report"
    assert browser.find_element("tag name", "h1").text == "ConceptGuard benchmark report"


def test_a_missing_sample_image_is_caught(tmp_path, browser):
    """The check above can fail: a strip pointing at a file that is not there."""
    results = make_results()
    results["rows"][0]["samples"] = [{"image": "images/missing.png", "prompt": "p", "blocked": False}]
    page = write_report(results, tmp_path)["html"]
    browser.get(page.resolve().as_uri())
    loaded = load_every_image(browser)
    assert 0 in loaded
    assert any(e["level"] == "SEVERE" and "missing.png" in e["message"] for e in browser.get_log("browser"))
