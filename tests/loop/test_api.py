"""The loop over real HTTP: start a cycle (it runs in the background), follow it, trace an
answer, roll back; bad input gets the one error shape."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from rag_loop.api import create_app
from rag_loop.auth.keys import create_key
from rag_loop.db.engine import transaction
from rag_loop.services import Services
from tests.conftest import LiveServer, assert_error_shape
from tests.loop.test_cycle import ALWAYS_PASS

pytestmark = pytest.mark.slow


def test_loop_routes(with_feedback: Callable[..., Services]) -> None:
    services = with_feedback(loop=ALWAYS_PASS)
    with transaction(services.sessions) as session:
        _, secret = create_key(session, "ops", ["admin"], actor="test")
    admin = {"Authorization": f"Bearer {secret}"}
    with (
        LiveServer(create_app(services.settings, services)) as live,
        httpx.Client(base_url=live.url, timeout=60) as client,
    ):
        assert_error_shape(client.post("/v1/loop/cycles"), 401, "unauthorized")
        started = client.post("/v1/loop/cycles", headers=admin)
        assert started.status_code == 202, started.text
        cycle_id = started.json()["id"]
        assert started.json()["state"] == "collecting"
        assert_error_shape(client.post("/v1/loop/cycles", headers=admin), 409, "conflict")

        deadline = time.monotonic() + 600
        while True:
            view = client.get(f"/v1/loop/cycles/{cycle_id}", headers=admin).json()
            if view["state"] in ("promoted", "rejected", "failed"):
                break
            assert time.monotonic() < deadline, view
            time.sleep(0.5)
        assert view["state"] == "promoted", view["error"]
        listed = client.get("/v1/loop/cycles", headers=admin).json()
        assert [c["id"] for c in listed] == [cycle_id]

        answer = client.post("/v1/ask", json={"query": "How do I report a stolen bike?"}).json()
        assert answer["versions"]["index_version"] == view["candidate_index_version_id"]
        walk = client.get(f"/v1/interactions/{answer['interaction_id']}/trace", headers=admin)
        assert walk.status_code == 200
        assert walk.json()["promoted_by"]["loop_cycle"] == cycle_id
        assert walk.json()["training_set"]["content_hash"] == view["training_set"]["content_hash"]

        assert_error_shape(
            client.post(f"/v1/loop/cycles/{cycle_id}/approve", headers=admin), 409, "conflict"
        )
        rolled = client.post("/v1/loop/rollback", headers=admin, json={"reason": "test"})
        assert rolled.status_code == 200 and rolled.json()["state"] == "rolled_back"
        assert_error_shape(client.post("/v1/loop/rollback", headers=admin, json={}), 409)
        assert_error_shape(client.get("/v1/loop/cycles/999", headers=admin), 404, "not_found")
        assert_error_shape(
            client.post("/v1/loop/cycles/abc/approve", headers=admin), 422, "validation_failed"
        )
        assert_error_shape(
            client.post("/v1/loop/rollback", headers=admin, json={"cycle": "x"}), 422
        )
        assert_error_shape(
            client.post("/v1/loop/cycles/1/reject", headers=admin, json={"why": "?"}), 422
        )
        assert_error_shape(client.get("/v1/interactions/nope/trace", headers=admin), 404)
