"""The web page in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven by Selenium.

Loads the page of a running server, learns an attribute from two prompts on the page, edits a seed, and
checks that the edited image appears and differs from the source in the way the attribute says. With
SVDEDIT_SCREENSHOT=PATH the final page is saved there (the README's screenshot comes from such a run).
"""

from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from models.shapes_data import read_attributes
from tests.serve.conftest import local_server

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                 "(apt-get install chromium chromium-driver; `make test` installs them where it can)")]


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _image(driver, element_id: str) -> np.ndarray:
    src = driver.find_element("id", element_id).get_attribute("src")
    assert src.startswith("data:image/png;base64,"), src[:80]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def test_learn_edit_and_see_before_and_after(shapes_engine, tmp_path, browser):
    from selenium.webdriver.support import expected_conditions as when
    from selenium.webdriver.support.ui import WebDriverWait

    server = local_server(shapes_engine, tmp_path / "store")
    try:
        browser.get(server.url)
        wait = WebDriverWait(browser, 120)
        wait.until(when.text_to_be_present_in_element(("id", "attributes"), "No attribute yet"))
        browser.find_element("id", "learn-button").click()            # the default prompts: red -> blue
        wait.until(when.presence_of_element_located(("css selector", "#attributes input:checked")))
        assert "red circle in the middle" in browser.find_element("id", "attributes").text
        browser.find_element("id", "seed").clear()
        browser.find_element("id", "seed").send_keys("7")
        browser.find_element("id", "edit-button").click()
        wait.until(lambda d: (d.find_element("id", "after").get_attribute("src") or "").startswith("data:"))
        before, after = _image(browser, "before"), _image(browser, "after")
        assert np.abs(before.astype(int) - after).mean() > 5
        assert read_attributes(before)["colour"] == "red" and read_attributes(after)["colour"] == "blue"
        assert browser.find_element("id", "download").is_displayed()
        assert "blue square" in browser.find_element("id", "after-caption").text
        assert browser.find_element("id", "error").get_attribute("hidden") is not None
        if os.environ.get("SVDEDIT_SCREENSHOT"):
            browser.save_screenshot(os.environ["SVDEDIT_SCREENSHOT"])
        # a mistake is shown in words, not as JSON
        browser.find_element("id", "prompt").clear()
        browser.find_element("id", "prompt").send_keys("a small green square on the left")
        browser.find_element("id", "edit-button").click()
        wait.until(lambda d: d.find_element("id", "error").is_displayed())
        message = browser.find_element("id", "error").text
        assert "does not contain 'red'" in message and "{" not in message
    finally:
        server.stop()


def test_a_lora_adapter_is_chosen_to_learn_and_its_attributes_edit_with_it(lora_engine, lora_adapters, tmp_path,
                                                                           browser):
    """With adapters (`svdedit serve --lora`), the page offers them for learning, shows each attribute's, and edits
    with the attributes' adapter (the service refuses an edit on another: a 409 would show as an error here)."""
    import httpx
    from selenium.webdriver.support import expected_conditions as when
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.serve.conftest import TEST_LIMITS

    server = local_server(lora_engine, tmp_path / "store", lora=(("b", str(lora_adapters["B"]), 1.0),), **TEST_LIMITS)
    try:
        browser.get(server.url)
        wait = WebDriverWait(browser, 120)
        wait.until(lambda d: d.find_element("id", "adapter-row").is_displayed())

        def learn(adapter: str) -> None:
            Select(browser.find_element("id", "adapter")).select_by_value(adapter)
            for field, text in (("learn-source", "a red cat"), ("learn-target", "a blue cat")):
                browser.find_element("id", field).clear()
                browser.find_element("id", field).send_keys(text)
            count = len(browser.find_elements("css selector", "#attributes input"))
            browser.find_element("id", "learn-button").click()
            wait.until(lambda d: len(d.find_elements("css selector", "#attributes input")) == count + 1)

        learn("b")
        assert "(LoRA b)" in browser.find_element("id", "attributes").text
        browser.find_element("id", "prompt").clear()
        browser.find_element("id", "prompt").send_keys("a red cat")
        browser.find_element("id", "edit-button").click()
        wait.until(lambda d: (d.find_element("id", "after").get_attribute("src") or "").startswith("data:")
                   or d.find_element("id", "error").is_displayed())
        assert not browser.find_element("id", "error").is_displayed(), browser.find_element("id", "error").text
        (learned,) = httpx.get(server.url + "/v1/attributes").json()
        assert learned["lora"] == "b"
        learn("")  # the engine as exported: the two attributes cannot be edited together
        for box in browser.find_elements("css selector", "#attributes input"):
            if not box.is_selected():
                box.click()
        browser.find_element("id", "edit-button").click()
        wait.until(when.visibility_of_element_located(("id", "error")))
        assert "learned with different LoRA adapters (b, none)" in browser.find_element("id", "error").text
    finally:
        server.stop()
