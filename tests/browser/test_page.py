"""The page at ``/``, driven in Debian's Chromium as a person would use it (``nox -s browser``).

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (Debian's ``chromium`` and
``chromium-driver`` packages; ``.ci/run`` installs them) and Selenium. Writes a screenshot
to ``$KERAS_PNEUMONIA_SCREENSHOT`` (the docs' ``docs/_static/serve_page.png`` under nox).
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # conftest's helpers

import keras_pneumonia as kp  # noqa: E402
from conftest import KAGGLE, running  # noqa: E402
from keras_pneumonia.serve import create_app  # noqa: E402

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver

    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed: apt-get install -y chromium chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers on the internet
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1500",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(DRIVER)))
    yield driver
    driver.quit()


def test_a_person_drops_two_xrays_and_sees_answers_and_overlays(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    files = [sorted((KAGGLE / "test" / name).glob("*.jpeg"))[0] for name in ("NORMAL", "PNEUMONIA")]
    model = kp.PneumoniaCNN.from_pretrained(compile=False)
    with running(create_app(model)) as url:
        browser.get(url)
        WebDriverWait(browser, 30).until(lambda d: "threshold" in d.find_element(By.ID, "model-name").text)
        assert "Not a medical device" in browser.find_element(By.CLASS_NAME, "notice").text
        browser.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))
        WebDriverWait(browser, 180).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result .verdict")) == 2)
        cards = browser.find_elements(By.CSS_SELECTOR, ".result")
        names = {card.find_element(By.TAG_NAME, "h2").text for card in cards}
        assert names == {f.name for f in files}
        for card in cards:
            verdict = card.find_element(By.CLASS_NAME, "verdict").text
            assert ("NORMAL" in verdict or "PNEUMONIA" in verdict) and "P(pneumonia) =" in verdict
            overlay = card.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']")
            assert overlay and browser.execute_script("return arguments[0].naturalWidth", overlay[0]) >= 160
        assert "Done: 2 file(s)." in browser.find_element(By.ID, "status").text
        screenshot = Path(os.environ.get("KERAS_PNEUMONIA_SCREENSHOT", tmp_path / "page.png"))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(screenshot))
