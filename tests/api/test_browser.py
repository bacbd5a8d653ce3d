"""The demo page and the widget in headless Chromium: ask, thumbs-down, correct; then the
database has the feedback and the pending correction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from rag_loop.api import create_app
from rag_loop.db.models import Correction, FeedbackEvent, Retrieval
from rag_loop.services import Services
from tests.conftest import ARTIFACTS, LiveServer


@pytest.fixture
def live(kestrel: Services) -> Iterator[LiveServer]:
    with LiveServer(create_app(kestrel.settings, kestrel)) as server:
        yield server


def wait_for(browser: Any, css: str, timeout: float = 30) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def wait_text(browser: Any, css: str, text: str, timeout: float = 30) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(
        expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css), text)
    )


@pytest.mark.slow
def test_ask_thumbs_down_and_correct_in_the_demo_page(
    browser: Any, live: LiveServer, kestrel: Services
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{live.url}/")
    question = browser.find_element(By.ID, "question")
    question.send_keys("Can I take my bike on the train?", Keys.ENTER)  # keyboard only
    turn = wait_for(browser, "section.turn[data-state=answered]")
    interaction_id = turn.get_attribute("data-interaction")
    assert turn.find_element(By.CSS_SELECTOR, ".answer").text.strip()

    # the widget: labelled buttons, reachable and usable from the keyboard
    down = turn.find_element(By.CSS_SELECTOR, "button[aria-label='Not a helpful answer']")
    assert down.get_attribute("aria-pressed") == "false"
    down.send_keys(Keys.ENTER)
    wait_text(browser, "section.turn .rag-loop-status", "saved")
    assert down.get_attribute("aria-pressed") == "true"
    sources = turn.find_elements(By.CSS_SELECTOR, ".rag-loop-sources li")
    assert sources and sources[0].find_element(By.TAG_NAME, "button").accessible_name
    # each source once (the widget's list is the only one), with a snippet of its text
    with kestrel.sessions() as session:
        served = session.scalars(
            select(Retrieval.title).where(Retrieval.interaction_id == interaction_id)
        ).all()
    assert len(sources) == len(served) and len(turn.find_elements(By.CSS_SELECTOR, "ol, ul")) == 1
    assert all(li.find_element(By.CSS_SELECTOR, ".rag-loop-snippet").text for li in sources)
    # no glyph that needs an emoji font (an empty box without one), and an icon
    assert not [c for c in browser.find_element(By.TAG_NAME, "body").text if ord(c) > 0x2FFF]
    assert browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")

    turn.find_element(By.TAG_NAME, "summary").click()
    box = turn.find_element(By.CSS_SELECTOR, ".rag-loop-correction textarea")
    label = turn.find_element(By.CSS_SELECTOR, f"label[for='{box.get_attribute('id')}']")
    assert label.text == "The correct answer"
    box.send_keys("Folded bikes ride free; full-size bikes need a bike ticket.")
    turn.find_element(By.XPATH, ".//button[text()='Send correction']").click()
    wait_text(browser, "section.turn .rag-loop-status", "will be reviewed")
    browser.save_screenshot(str(ARTIFACTS / "demo-chat.png"))

    with kestrel.sessions() as session:
        events = session.execute(
            select(FeedbackEvent.kind, FeedbackEvent.thumb).where(
                FeedbackEvent.interaction_id == interaction_id
            )
        ).all()
        corrections = session.scalars(
            select(Correction).where(Correction.interaction_id == interaction_id)
        ).all()
    assert sorted(events, key=str) == [("correction", None), ("thumb", "down")]
    assert [(c.status, c.text) for c in corrections] == [
        ("pending", "Folded bikes ride free; full-size bikes need a bike ticket.")
    ]


@pytest.mark.slow
def test_the_widget_says_clearly_when_a_post_fails(
    browser: Any, live: LiveServer, kestrel: Services
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{live.url}/")
    browser.execute_script(
        "const box = document.createElement('div'); box.id = 'w';"
        "document.body.appendChild(box);"
        "RagLoopFeedback.attach(box, {interactionId: 'nope', token: 'forged'});"
    )
    browser.find_element(By.CSS_SELECTOR, "#w button[aria-label='Helpful answer']").click()
    wait_text(browser, "#w .rag-loop-status", "could not be sent")
    status = browser.find_element(By.CSS_SELECTOR, "#w .rag-loop-status")
    assert status.get_attribute("role") == "alert"
    assert "token" in status.text  # the server's own message is shown
    with kestrel.sessions() as session:
        assert session.scalars(select(FeedbackEvent)).all() == []
