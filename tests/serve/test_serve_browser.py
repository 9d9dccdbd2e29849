"""The web page in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``, driven by Selenium).

Type a prompt, see the images and the budget go down (and the ε plot grow), see the refusal once the budget is gone.
Skipped when chromium, chromedriver or selenium is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import shutil

import pytest
from server_process import ServerProcess

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian chromium and chromium-driver")


@pytest.fixture()
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_web_page_generates_until_the_budget_is_gone(make_index, add_key, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    index_dir = make_index(low=3, high=10)
    upload = tmp_path / "query.png"
    Image.new("RGB", (28, 28), (255, 255, 255)).save(upload)
    token = add_key(index_dir, "web", shards=("low",))
    server = ServerProcess(index_dir, "--max-batch", "4")
    try:
        wait = WebDriverWait(browser, 120)
        browser.get(server.url + "/")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "connect").click()
        wait.until(lambda d: d.find_element(By.ID, "remaining").text == "3")
        shards = [el.get_attribute("value") for el in browser.find_elements(By.CSS_SELECTOR, "input.shard")]
        assert shards == ["low"]  # the picker offers only the key's shards
        assert browser.find_element(By.ID, "keyname").text == "key: web"
        browser.find_element(By.ID, "prompt").send_keys("a handwritten seven")
        for field, value in (("n", "2"), ("steps", "1")):
            element = browser.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        generate = browser.find_element(By.ID, "generate")
        for remaining, images in (("2", 2), ("1", 4)):
            wait.until(lambda d: d.find_element(By.ID, "generate").is_enabled())
            generate.click()
            wait.until(lambda d, r=remaining: d.find_element(By.ID, "remaining").text == r)
            wait.until(lambda d, n=images: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) == n)
        browser.find_element(By.ID, "kind-image").click()  # an image query through the upload box
        browser.find_element(By.ID, "image").send_keys(str(upload))
        generate.click()
        wait.until(lambda d: d.find_element(By.ID, "remaining").text == "0")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) == 6)
        assert float(browser.find_element(By.ID, "epsilon").text) > 0
        points = browser.find_element(By.ID, "plot-line").get_attribute("points").split()
        assert len(points) == 4  # the start and one point per query
        ys = [float(point.split(",")[1]) for point in points]
        assert ys == sorted(ys, reverse=True) and ys[-1] < ys[0]  # epsilon spent rises (SVG y grows downwards)
        wait.until(lambda d: d.find_element(By.ID, "generate").is_enabled())
        generate.click()
        wait.until(lambda d: d.find_element(By.ID, "error").text != "")
        assert browser.find_element(By.ID, "error").text.startswith("budget_exhausted:")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery img")) == 6
        assert browser.find_element(By.ID, "remaining").text == "0"
    finally:
        server.kill()
