"""The control plane over HTTP: the registry backlog (GET /v1/outbox, POST /v1/outbox/flush,
POST /v1/outbox/{id}/discard, the /readyz detail, /metrics), serving a version
(POST /v1/index-versions/{id}/serve), and a refused loop action as a 409 in the one error
shape."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from rag_loop.db.engine import transaction
from rag_loop.registry import outbox
from rag_loop.services import Services
from tests.conftest import assert_error_shape, stuck_outbox_entry


def _pending_gauge(text: str) -> dict[str, float]:
    return {
        s.labels["failing"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "rag_loop_outbox_pending"
    }


def test_the_backlog_is_visible_and_flushed_over_http(
    api: httpx.Client, admin_headers: dict[str, str], kestrel: Services
) -> None:
    assert api.get("/v1/outbox").status_code == 401  # admin only
    body = api.get("/v1/outbox", headers=admin_headers).json()
    assert body["backlog"]["pending"] == 0 and body["entries"] == []
    done = api.get("/v1/outbox?status=done", headers=admin_headers).json()["entries"]
    assert {e["kind"] for e in done} >= {"mlflow_register", "mlflow_run", "mlflow_alias"}

    # a drop that is not due yet: pending everywhere until it is applied
    with transaction(kestrel.sessions) as session:
        outbox.drop_collection(session, "rag_loop_v99999", "test: never existed")
    with kestrel.sessions() as session:
        from sqlalchemy import update

        from rag_loop.db.models import OutboxEntry, now_of

        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.done_at.is_(None))
            .values(next_attempt_at=now_of(session).replace(year=2099))
        )
        session.commit()
    backlog = api.get("/v1/outbox", headers=admin_headers).json()
    assert backlog["backlog"]["pending"] == 1
    assert backlog["entries"][0]["summary"]["collection"] == "rag_loop_v99999"
    assert api.get("/readyz").json()["checks"]["registry_outbox"]["pending"] == 1
    assert api.get("/readyz").status_code == 200  # a backlog never makes it unready
    assert _pending_gauge(api.get("/metrics").text) == {"true": 0.0, "false": 1.0}

    flushed = api.post("/v1/outbox/flush", headers=admin_headers).json()
    assert len(flushed["applied"]) == 1 and flushed["pending"] == 0
    entry = api.get("/v1/outbox?status=done&limit=1", headers=admin_headers).json()
    assert entry["entries"][0]["outcome"] == {"gone": "rag_loop_v99999"}
    assert _pending_gauge(api.get("/metrics").text) == {"true": 0.0, "false": 0.0}


def test_an_entry_that_can_never_be_applied_is_discarded_with_a_reason(
    api: httpx.Client, admin_headers: dict[str, str], kestrel: Services, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A run whose artifact file was deleted fails on every flush; the operator's way out
    is to discard it, with a reason that goes to the audit log."""
    from sqlalchemy import select

    from rag_loop.db.models import AuditEntry

    stuck_outbox_entry(kestrel, tmp_path / "deleted.jsonl")
    flushed = api.post("/v1/outbox/flush", headers=admin_headers).json()
    assert len(flushed["failed"]) == 1 and flushed["pending"] == 1, flushed
    (entry,) = api.get("/v1/outbox", headers=admin_headers).json()["entries"]
    assert "deleted.jsonl" in entry["last_error"], entry

    url = f"/v1/outbox/{entry['id']}/discard"
    assert api.post(url, json={"reason": "x"}).status_code == 401  # admin only
    for body in ({}, {"reason": ""}):  # a reason is required
        assert_error_shape(
            api.post(url, json=body, headers=admin_headers), 422, "validation_failed"
        )
    assert_error_shape(
        api.post("/v1/outbox/99999/discard", json={"reason": "x"}, headers=admin_headers),
        404,
        "not_found",
    )
    done = api.post(url, json={"reason": "model deleted by hand"}, headers=admin_headers)
    assert done.status_code == 200, done.text
    assert done.json()["outcome"]["discarded"]["reason"] == "model deleted by hand"
    assert api.get("/v1/outbox", headers=admin_headers).json()["backlog"]["pending"] == 0
    assert_error_shape(
        api.post(url, json={"reason": "again"}, headers=admin_headers), 409, "conflict"
    )
    with kestrel.sessions() as session:
        audit = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "outbox.discard")
        ).one()
    assert audit.target == f"outbox_entry:{entry['id']}"
    assert audit.details["reason"] == "model deleted by hand" and audit.details["last_error"]


def test_serve_a_version_and_a_refused_action_over_http(
    api: httpx.Client, admin_headers: dict[str, str]
) -> None:
    # the only version serves already: a 409 in the one shape, nothing changed
    error = assert_error_shape(
        api.post("/v1/index-versions/1/serve", json={}, headers=admin_headers), 409, "conflict"
    )
    assert "serves already" in error["message"]
    assert_error_shape(
        api.post("/v1/index-versions/99/serve", json={}, headers=admin_headers), 404, "not_found"
    )
    assert_error_shape(
        api.post("/v1/loop/rollback", json={}, headers=admin_headers), 409, "conflict"
    )
    versions = api.get("/v1/index-versions", headers=admin_headers).json()
    assert [v["aliases"] for v in versions] == [["champion"]]
    assert versions[0]["expansions"] == 0 and versions[0]["retrieval"]
