"""Driving the operator console in headless Chromium: sign in, and check a page the way a
keyboard or screen-reader user and a 400 px phone would meet it (screenshots kept)."""

from __future__ import annotations

from typing import Any

from rag_loop.auth.keys import create_key
from rag_loop.db.engine import transaction
from rag_loop.services import Services
from tests.conftest import ARTIFACTS

SHOTS = ARTIFACTS / "console"

# WCAG 2 contrast of every element's own text against the first opaque background behind
# it: at least 4.5:1 (3:1 for large text). Elements on an image or a gradient are skipped.
CONTRAST = """
function rgb(value) {
  const m = value.match(/rgba?\\(([^)]+)\\)/);
  if (!m) return null;
  const p = m[1].split(",").map(Number);
  return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
}
function luminance(c) {
  const f = v => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
}
function background(el) {
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c && c.a >= 1) return c;
    if (getComputedStyle(e).backgroundImage !== "none") return null;
  }
  return {r: 255, g: 255, b: 255, a: 1};
}
const low = [];
for (const el of document.querySelectorAll("body *")) {
  const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
  if (!own || el.offsetParent === null) continue;
  const style = getComputedStyle(el);
  const fg = rgb(style.color), bg = background(el);
  if (!fg || !bg) continue;
  const [a, b] = [luminance(fg), luminance(bg)].sort((x, y) => y - x);
  const ratio = (a + 0.05) / (b + 0.05);
  const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
  const large = size >= 24 || (bold && size >= 18.66);
  if (ratio < (large ? 3 : 4.5)) {
    low.push(el.tagName + " " + ratio.toFixed(2) + " " + el.textContent.trim().slice(0, 40));
  }
}
return low;
"""


def make_key(services: Services, name: str, scopes: list[str]) -> str:
    with transaction(services.sessions) as session:
        _, secret = create_key(session, name, scopes, actor="test")
    return secret


def click_through(browser: Any, element: Any) -> str:
    """Click a link or a form's button and wait for the next page; its flash message."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("window.consoleTestOldPage = true;")  # gone with the page
    element.click()
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script(
            "return !window.consoleTestOldPage && document.readyState === 'complete';"
        )
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
    # focus follows the page's order: no positive tabindex
    assert (
        browser.execute_script(
            "return Array.from(document.querySelectorAll('[tabindex]'))"
            ".filter(e => e.tabIndex > 0).length"
        )
        == 0
    )
    low = browser.execute_script(CONTRAST)
    assert low == [], f"text below WCAG AA contrast on {name}: {low[:5]}"
    browser.set_window_size(1280, 900)
    browser.save_screenshot(str(SHOTS / f"{name}.png"))
    browser.set_window_size(400, 900)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
    )
    assert overflow <= 1, f"{name} is {overflow} px wider than 400 px"
    browser.save_screenshot(str(SHOTS / f"{name}-400px.png"))
    browser.set_window_size(1280, 900)
