"""Driving the operator console in headless Chromium: sign in, and check a page the way a
keyboard or screen-reader user and a 400 px phone would meet it (screenshots kept)."""

from __future__ import annotations

from typing import Any

from rag_loop.auth.keys import create_key
from rag_loop.db.engine import transaction
from rag_loop.services import Services
from tests.conftest import ARTIFACTS

SHOTS = ARTIFACTS / "console"


def make_key(services: Services, name: str, scopes: list[str]) -> str:
    with transaction(services.sessions) as session:
        _, secret = create_key(session, name, scopes, actor="test")
    return secret


def click_through(browser: Any, element: Any) -> str:
    """Click a link or a form's button and wait for the next page; its flash message."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 30).until(expected_conditions.staleness_of(page))
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )
    flashes = browser.find_elements(By.CSS_SELECTOR, ".flash")
    return str(flashes[0].text) if flashes else ""


def sign_in(browser: Any, url: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/console")
    assert "/console/sign-in" in browser.current_url
    browser.find_element(By.ID, "api_key").send_keys(key)
    flash = click_through(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    assert "Signed in as" in flash, flash


def check_page(browser: Any, name: str) -> None:
    """Every control has an accessible name (a label for inputs), the page does not
    overflow 400 px (tables scroll in their own region), and a screenshot at both widths."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    unlabelled = browser.execute_script(
        "return Array.from(document.querySelectorAll('input, select, textarea'))"
        ".filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length)"
        " && !e.getAttribute('aria-label')).map(e => e.outerHTML);"
    )
    assert unlabelled == [], unlabelled
    nameless = browser.execute_script(
        "return Array.from(document.querySelectorAll('button, a'))"
        ".filter(e => !e.textContent.trim() && !e.getAttribute('aria-label'))"
        ".map(e => e.outerHTML);"
    )
    assert nameless == [], nameless
    assert browser.execute_script("return document.querySelector('h1') !== null")
    browser.set_window_size(1280, 900)
    browser.save_screenshot(str(SHOTS / f"{name}.png"))
    browser.set_window_size(400, 900)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
    )
    assert overflow <= 1, f"{name} is {overflow} px wider than 400 px"
    browser.save_screenshot(str(SHOTS / f"{name}-400px.png"))
    browser.set_window_size(1280, 900)
