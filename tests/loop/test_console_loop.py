"""The loop from the console in headless Chromium: an admin approves a held candidate
(confirmed first) and sees the champion move, then rolls the promotion back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from rag_loop.api import create_app
from rag_loop.db.models import Alias, AuditEntry
from rag_loop.loop import cycle
from rag_loop.services import Services
from tests.conftest import LiveServer
from tests.console import check_page, click_through, make_key, sign_in

ALWAYS_PASS = {
    "min_improvement": -1.0,
    "max_regression": 1.0,
    "min_gate_queries": 1,
    "max_p_value": 1.0,
}  # mechanics, not quality


def champion_id(services: Services) -> int:
    with services.sessions() as session:
        return session.scalars(select(Alias.index_version_id).where(Alias.name == "champion")).one()


@pytest.mark.slow
def test_approve_a_held_candidate_and_roll_it_back_from_the_console(
    browser: Any, with_feedback: Callable[..., Services]
) -> None:
    from selenium.webdriver.common.by import By

    services = with_feedback(loop={**ALWAYS_PASS, "require_approval": True})
    held = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert held["state"] == "awaiting_approval"
    before = champion_id(services)
    with LiveServer(create_app(services.settings, services)) as live:
        sign_in(browser, live.url, make_key(services, "olga the operator", ["admin"]))
        browser.get(f"{live.url}/console/loop")
        check_page(browser, "loop")
        row = browser.find_element(By.ID, f"cycle-{held['id']}")
        assert "awaiting_approval" in row.text and "examples" in row.text
        click_through(browser, row.find_element(By.LINK_TEXT, f"Approve cycle {held['id']}"))
        check_page(browser, "confirm")
        assert champion_id(services) == before  # nothing happens before the confirmation
        flash = click_through(browser, browser.find_element(By.XPATH, "//button[text()='Confirm']"))
        assert "promoted" in flash, flash
        assert champion_id(services) == held["candidate_index_version_id"]
        row = browser.find_element(By.ID, f"cycle-{held['id']}")
        assert "promoted" in row.text

        click_through(browser, browser.find_element(By.LINK_TEXT, "Roll back the latest promotion"))
        browser.find_element(By.ID, "reason").send_keys("answers got worse")
        flash = click_through(browser, browser.find_element(By.XPATH, "//button[text()='Confirm']"))
        assert "Rolled back" in flash, flash
        assert champion_id(services) == before
        check_page(browser, "loop-rolled-back")
    with services.sessions() as session:
        actors = dict(
            session.execute(
                select(AuditEntry.action, AuditEntry.actor).where(
                    AuditEntry.action.in_(["loop.promote", "loop.rollback"])
                )
            ).all()
        )
    assert set(actors) == {"loop.promote", "loop.rollback"}
    assert all(a.startswith("olga the operator (key:") for a in actors.values())
