"""The web page the service serves, in a real headless browser (Chromium)."""
from __future__ import annotations

import pytest
from helpers.servers import chromium, needs_browser
from helpers.shards import HOSTILE_TAG, vocabulary

pytestmark = pytest.mark.slow         # the fixture trains MCC and LocSens


@needs_browser
def test_the_web_page_in_a_real_browser(service, tmp_path):
    """Headless Chromium: pick a sample photo, click two places (the tags differ), search a tag
    near a place (photos appear, as a grid and on the map); a screenshot under tmp_path."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
        driver.get(f"{service}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples img")) >= 3)
        driver.find_elements(By.CSS_SELECTOR, "#samples img")[0].click()
        canvas = driver.find_element(By.ID, "map")

        def click_place(lat: float, lon: float) -> None:
            w, h = canvas.rect["width"], canvas.rect["height"]
            ActionChains(driver).move_to_element_with_offset(
                canvas, int((lon + 180) / 360 * w - w / 2), int((90 - lat) / 180 * h - h / 2)).click().perform()

        def tags() -> list[str]:      # read in one script: the list is re-rendered as answers arrive
            return driver.execute_script("return [...document.querySelectorAll('#tags li')].map(l => l.textContent)")

        click_place(48.85, 2.35)
        wait.until(lambda d: len(tags()) == 10)
        paris = tags()
        assert "Place: 4" in driver.find_element(By.ID, "place").text
        click_place(-33.87, 151.21)
        wait.until(lambda d: len(tags()) == 10 and tags() != paris)
        click_place(48.85, 2.35)
        driver.find_element(By.ID, "tag-input").send_keys("paris")
        driver.find_element(By.ID, "search-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#photos img")) > 0)
        assert driver.find_element(By.ID, "status").text == ""
        assert driver.execute_script("return state.found.length") > 0            # the points drawn on the map
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10000


@needs_browser
def test_a_tag_that_is_markup_shows_as_text_and_never_runs(service):
    """The fixture's vocabulary holds HOSTILE_TAG (an <img> whose onerror sets window.__pwned). With
    ?k=100 the page lists every tag: that one must appear as its literal text, and nothing may run."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    size = len(vocabulary(hostile=True))
    with chromium() as driver:
        driver.get(f"{service}/?k=100")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples img")) >= 1)
        driver.find_elements(By.CSS_SELECTOR, "#samples img")[0].click()
        ActionChains(driver).move_to_element(driver.find_element(By.ID, "map")).click().perform()
        tags = "return [...document.querySelectorAll('#tags li')].map(l => l.firstChild.textContent.trim())"
        wait.until(lambda d: len(d.execute_script(tags)) == size)
        assert HOSTILE_TAG in driver.execute_script(tags)
        assert driver.find_elements(By.CSS_SELECTOR, "#tags img") == []
        assert driver.execute_script("return window.__pwned === undefined")
