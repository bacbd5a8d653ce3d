"""The operator console in headless Chromium and over plain HTTP: sign in with a key,
amend a correction and see the next answer change; a reviewer key reaches no loop action;
a form without its CSRF token changes nothing; the cookies are HttpOnly and SameSite."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from rag_loop.api import create_app
from rag_loop.db.models import AuditEntry, Correction
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.feedback.service import submit_feedback
from rag_loop.interactions.ask import ask
from rag_loop.services import Services
from tests.conftest import LiveServer, stuck_outbox_entry
from tests.console import check_page, click_through, make_key, sign_in

THEFT = "How much is the theft excess?"


@pytest.fixture
def live(kestrel: Services) -> Iterator[LiveServer]:
    with LiveServer(create_app(kestrel.settings, kestrel)) as server:
        yield server


def pending_correction(services: Services, text: str) -> int:
    answer = ask(services, THEFT)
    receipt = submit_feedback(
        services,
        FeedbackIn.model_validate(
            {"interaction_id": answer.interaction_id, "thumb": "down", "correction": text}
        ),
        actor="test",
    )
    assert receipt.correction_id is not None
    return receipt.correction_id


@pytest.mark.slow
def test_sign_in_amend_a_correction_and_the_next_answer_changes(
    browser: Any, live: LiveServer, kestrel: Services
) -> None:
    from selenium.webdriver.common.by import By

    correction_id = pending_correction(kestrel, "Since 2026 the theft excess is 120 euros.")
    key = make_key(kestrel, "alice the reviewer", ["review"])
    browser.get(f"{live.url}/console/sign-in")
    check_page(browser, "sign-in")
    sign_in(browser, live.url, key)
    assert browser.current_url.endswith("/console/reviews")
    check_page(browser, "reviews")
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav a")]
    assert nav == ["Reviews"]  # a reviewer sees no loop, interactions or evaluations

    click_through(browser, browser.find_element(By.LINK_TEXT, f"Correction {correction_id}"))
    check_page(browser, "review")
    selected = browser.find_element(By.CSS_SELECTOR, "input[name=chunk_id]:checked")
    passage = selected.find_element(By.XPATH, "..").find_element(By.TAG_NAME, "blockquote").text
    assert "150 euros" in passage  # the passage the answer quoted is pre-selected
    assert browser.find_elements(By.CSS_SELECTOR, ".diff del")  # the draft as a diff
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys(passage.replace("150 euros", "120 euros"))
    browser.find_element(By.ID, "note").send_keys("new policy")
    flash = click_through(browser, browser.find_element(By.CSS_SELECTOR, "button[value=amend]"))
    assert "approved and serves now" in flash, flash
    check_page(browser, "review-approved")

    again = ask(kestrel, THEFT)
    assert "120 euros" in again.answer
    assert not any("150 euros" in t for t in [again.answer, *(s["text"] for s in again.sources)])
    with kestrel.sessions() as session:
        assert session.get_one(Correction, correction_id).mode == "amend"
        actors = session.scalars(
            select(AuditEntry.actor).where(AuditEntry.action == "correction.approve")
        ).all()
    assert [a.split(" (key:")[0] for a in actors] == ["alice the reviewer"]

    # the amendment is listed and can be reverted from the queue
    browser.get(f"{live.url}/console/reviews")
    revert = browser.find_element(By.XPATH, "//button[starts-with(text(), 'Revert amendment')]")
    assert "old text serves" in click_through(browser, revert)
    assert "150 euros" in " ".join(s["text"] for s in ask(kestrel, THEFT).sources)

    click_through(browser, browser.find_element(By.CSS_SELECTOR, ".signout button"))
    assert "/console/sign-in" in browser.current_url
    browser.get(f"{live.url}/console/reviews")
    assert "/console/sign-in" in browser.current_url


@pytest.mark.slow
def test_an_admin_reads_interactions_lineage_and_evaluations(
    browser: Any, live: LiveServer, kestrel: Services
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    pending_correction(kestrel, "It is 120 euros now.")
    ask(kestrel, "How long does a full charge take?")
    sign_in(browser, live.url, make_key(kestrel, "olga the operator", ["admin"]))
    browser.get(f"{live.url}/console/interactions")
    check_page(browser, "interactions")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tbody tr")) == 2
    browser.find_element(By.ID, "q").send_keys("theft")
    Select(browser.find_element(By.ID, "thumb")).select_by_value("down")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, ".filters button"))
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 1 and "theft" in rows[0].text
    click_through(browser, rows[0].find_element(By.TAG_NAME, "a"))
    check_page(browser, "interaction")
    body = browser.find_element(By.TAG_NAME, "main").text
    assert THEFT in body and "Chunks as served" in body and "correction" in body
    browser.get(f"{live.url}/console/evaluations")
    check_page(browser, "evaluations")
    assert browser.find_elements(By.CSS_SELECTOR, "figure img")


def test_an_admin_discards_an_outbox_entry_that_can_never_be_applied(
    browser: Any, live: LiveServer, kestrel: Services, tmp_path: Any
) -> None:
    """The loop page lists the failing outbox entries; one whose file is gone is discarded
    from there, with a reason (required), confirmed first."""
    from selenium.webdriver.common.by import By

    stuck_outbox_entry(kestrel, tmp_path / "deleted.jsonl")
    (failed,) = kestrel.outbox.flush(now_too=True).failed
    sign_in(browser, live.url, make_key(kestrel, "olga the operator", ["admin"]))
    browser.get(f"{live.url}/console/loop")
    check_page(browser, "loop-failing-entry")
    entry = browser.find_element(By.ID, f"entry-{failed}")
    assert "deleted.jsonl" in entry.text and "1 try" in entry.text
    click_through(browser, entry.find_element(By.LINK_TEXT, f"Discard entry {failed}"))
    check_page(browser, "confirm-discard")
    assert kestrel.outbox.backlog()["pending"] == 1  # nothing happens before the confirmation
    browser.find_element(By.ID, "reason").send_keys("the training set was deleted by hand")
    flash = click_through(browser, browser.find_element(By.XPATH, "//button[text()='Confirm']"))
    assert f"Outbox entry {failed} was discarded" in flash, flash
    assert kestrel.outbox.backlog()["pending"] == 0
    assert not browser.find_elements(By.ID, f"entry-{failed}")
    with kestrel.sessions() as session:
        audit = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "outbox.discard")
        ).one()
    assert audit.actor.startswith("olga the operator (key:")
    assert audit.details["reason"] == "the training set was deleted by hand"


def test_a_reviewer_key_cannot_reach_loop_actions_and_forms_need_their_token(
    live: LiveServer, kestrel: Services
) -> None:
    reviewer = make_key(kestrel, "rita", ["review"])
    asker = make_key(kestrel, "ask only", ["ask"])
    correction_id = pending_correction(kestrel, "The theft excess is 120 euros.")
    with httpx.Client(base_url=live.url, follow_redirects=False, timeout=60) as client:
        assert client.get("/console/reviews").headers["location"].startswith("/console/sign-in")
        page = client.get("/console/sign-in")
        cookie = page.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        # sign-in without the form's token, or with a key without a console scope: refused
        refused = client.post("/console/sign-in", data={"api_key": reviewer})
        assert refused.status_code == 403
        wrong = client.post(
            "/console/sign-in", data={"api_key": asker, "csrf_token": token.group(1)}
        )
        assert wrong.status_code == 401 and "review or admin scope" in wrong.text
        signed = client.post(
            "/console/sign-in", data={"api_key": reviewer, "csrf_token": token.group(1)}
        )
        assert signed.status_code == 303
        session_cookie = signed.headers.get_list("set-cookie")
        assert any(
            c.startswith("rag_loop_console=") and "HttpOnly" in c and "Path=/console" in c
            for c in session_cookie
        )
        review = client.get(f"/console/reviews/{correction_id}")
        assert review.status_code == 200
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', review.text)
        assert csrf is not None

        # a form posted without its token (another site's form, say) changes nothing
        forged = client.post(f"/console/reviews/{correction_id}", data={"decision": "add"})
        assert forged.status_code == 403
        bad = client.post(
            f"/console/reviews/{correction_id}", data={"decision": "add", "csrf_token": "x"}
        )
        assert bad.status_code == 403
        with kestrel.sessions() as session:
            assert session.get_one(Correction, correction_id).status == "pending"

        # a reviewer reaches no loop page and no loop action, even with a good token
        assert client.get("/console/loop").status_code == 403
        assert client.get("/console/interactions").status_code == 403
        action = client.post(
            "/console/loop/rollback",
            data={"csrf_token": csrf.group(1), "confirmed": "yes"},
        )
        assert action.status_code == 403
        with kestrel.sessions() as session:
            assert not session.scalars(
                select(AuditEntry).where(AuditEntry.action == "loop.rollback")
            ).all()

        # with the token, the reviewer's decision goes through the same service
        done = client.post(
            f"/console/reviews/{correction_id}",
            data={"decision": "add", "csrf_token": csrf.group(1), "note": "ok"},
        )
        assert done.status_code == 303
        with kestrel.sessions() as session:
            assert session.get_one(Correction, correction_id).status == "approved"


def test_console_refuses_input_the_database_cannot_take(
    live: LiveServer, kestrel: Services
) -> None:
    """Ids beyond what a row id holds, NUL characters and non-numbers are refused before
    any SQL runs (PostgreSQL would fail on each), as the API's error shape."""
    admin = make_key(kestrel, "olga", ["admin"])
    with httpx.Client(base_url=live.url, follow_redirects=False, timeout=60) as client:
        page = client.get("/console/sign-in")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        signed = client.post("/console/sign-in", data={"api_key": admin, "csrf_token": token[1]})
        assert signed.status_code == 303
        for path in (
            "/console/reviews/99999999999999999999",
            "/console/interactions?q=a%00b",
            "/console/interactions?index_version=12abc",
            "/console/interactions?index_version=99999999999",
            "/console/interactions/a%00b",
            "/console/loop/confirm?action=approve&cycle_id=99999999999999",
        ):
            response = client.get(path)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["error"]["code"] == "validation_failed"
        assert client.get("/console/reviews/12345").status_code == 404
        assert client.get("/console/interactions?q=theft&thumb=down").status_code == 200
