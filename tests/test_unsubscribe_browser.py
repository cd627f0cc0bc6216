"""Browser test (issue 6): headless Chromium opens the unsubscribe link of a delivered message,
clicks the button, and the store and the event show the unsubscription; the page renders in
English and in Chinese.

Chromium and chromedriver are Debian packages (``.ci/run`` installs them): this test does not
skip when they are missing, it fails. Selenium Manager is never asked to download anything:
the driver and the browser are given by path. Set ``UNSUB_SCREENSHOTS=DIR`` to save the
pages as PNG files (docs/unsubscribe-en.png and -zh.png were made that way).
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from unsub_util import free_port, html_mail, list_unsubscribe, submit, unsub_config

from gateway import suppression
from gateway.testing import GatewayHarness

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "install the Debian packages chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=720,520",
                "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def unsubscribe_in_browser(driver: webdriver.Chrome, url: str, shot: str | None) -> dict[str, str]:
    """Open the page, read it, click the button, read the result (runs in a thread: blocking)."""
    driver.get(url)
    page = {"lang": driver.find_element(By.TAG_NAME, "html").get_attribute("lang") or "",
            "title": driver.title, "question": driver.find_element(By.ID, "question").text,
            "button": driver.find_element(By.ID, "unsubscribe").text}
    if shot:
        driver.save_screenshot(shot)
    driver.find_element(By.ID, "unsubscribe").click()
    done = WebDriverWait(driver, 10).until(expected_conditions.presence_of_element_located((By.ID, "done")))
    page["done"] = done.text
    page["url_after"] = driver.current_url
    return page


async def test_browser_unsubscribes_in_english_and_chinese(tmp_path, sink, browser):
    shots = os.environ.get("UNSUB_SCREENSHOTS")
    http_port = free_port()
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port)) as gw:
        store = gw.gateway.store
        cases = [("alice@example.net", "2", "en"), ("bob@example.net", "1", "zh")]
        for index, (recipient, code, lang) in enumerate(cases, 1):
            await submit(gw.host, gw.port, html_mail(to=recipient, headers={"X-SES-Unsubscribe": code}), [recipient])
            await sink.wait_for(index)
            url, _ = list_unsubscribe(sink.messages[index - 1].data)
            shot = str(Path(shots) / f"unsubscribe-{lang}.png") if shots else None
            page = await asyncio.to_thread(unsubscribe_in_browser, browser, url, shot)
            if lang == "en":
                assert page["lang"] == "en" and page["title"] == "Unsubscribe" and page["button"] == "Unsubscribe"
                assert page["question"] == "Stop emails from example.com to a***e@example.net?"
                assert page["done"].startswith("You are unsubscribed.")
            else:
                assert page["lang"] == "zh-Hans" and page["title"] == "退订" and page["button"] == "退订"
                assert "不再接收 example.com" in page["question"]
                assert page["done"].startswith("您已成功退订")
            assert page["url_after"] == url                          # answered in place, no redirect
            assert await suppression.unsubscribed(store, "example.com", recipient)
            rows = await store.query_status(recipient=recipient)
            assert rows[0]["UserUnsubscribed"] is True
            items = await store.outbox(limit=1000)
            assert [i.event.email for i in items if i.event.event == "unsubscribe"] == [r for r, _, _ in cases[:index]]
        if shots:
            # The confirmation page after the click, for the docs.
            await asyncio.to_thread(browser.save_screenshot, str(Path(shots) / "unsubscribe-zh-done.png"))
