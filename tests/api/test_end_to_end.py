"""The whole serve -> feedback -> review -> serve path over real HTTP on the sample corpus."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from rag_loop.db.models import AuditEntry, Correction, Interaction, Retrieval
from rag_loop.services import Services

QUESTION = "How much is the theft excess?"
CORRECTION = (
    "Since 2026 the theft excess is 120 euros, or 40 euros when the bike was locked to a "
    "fixed object with an ART-2 certified lock."
)


def test_ask_logs_one_interaction_with_lineage(
    api: httpx.Client, kestrel: Services, admin_headers: dict[str, str]
) -> None:
    response = api.post("/v1/ask", json={"query": QUESTION})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sources"][0]["document_id"] == "insurance/theft"
    assert [s["rank"] for s in body["sources"]] == [1, 2, 3, 4, 5]
    assert "150 euros" in body["answer"] and "[1]" in body["answer"]
    assert body["versions"]["embedder_version"].startswith("all-MiniLM-L6-v2@")
    assert body["versions"]["prompt_version"].startswith("extractive@")
    assert set(body["latency_ms"]) == {"embed", "search", "generate", "total"}
    assert body["feedback_token"]

    with kestrel.sessions() as session:
        interaction = session.get(Interaction, body["interaction_id"])
        assert interaction is not None and interaction.status == "ok"
        stored = session.scalars(
            select(Retrieval)
            .where(Retrieval.interaction_id == interaction.id)
            .order_by(Retrieval.rank)
        ).all()
        assert [(r.chunk_id, r.score, r.text) for r in stored] == [
            (s["chunk_id"], s["score"], s["text"]) for s in body["sources"]
        ]

    lineage = api.get(f"/v1/interactions/{body['interaction_id']}", headers=admin_headers)
    assert lineage.status_code == 200
    view = lineage.json()
    assert view["query"] == QUESTION and view["answer"] == body["answer"]
    assert view["index_version"]["mlflow_run_id"]
    assert view["versions"] == body["versions"]
    run = kestrel.tracker.get_run(view["index_version"]["mlflow_run_id"])
    assert run.data.params["corpus_hash"] == view["index_version"]["corpus_hash"]


def test_correction_approved_becomes_rank_one_and_is_cited(
    api: httpx.Client, kestrel: Services, admin_headers: dict[str, str]
) -> None:
    first = api.post("/v1/ask", json={"query": QUESTION}).json()
    shown = first["sources"]
    feedback = api.post(
        "/v1/feedback",
        json={
            "interaction_id": first["interaction_id"],
            "token": first["feedback_token"],
            "thumb": "down",
            "chunk_labels": [{"chunk_id": shown[1]["chunk_id"], "relevant": False}],
            "correction": CORRECTION,
            "idempotency_key": "e2e-1",
        },
    )
    assert feedback.status_code == 201, feedback.text
    correction_id = feedback.json()["correction_id"]

    pending = api.get("/v1/corrections", headers=admin_headers).json()
    assert [c["id"] for c in pending] == [correction_id]
    approved = api.post(
        f"/v1/corrections/{correction_id}/approve",
        json={"note": "policy changed"},
        headers=admin_headers,
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"

    again = api.post("/v1/ask", json={"query": QUESTION}).json()
    top = again["sources"][0]
    assert top["document_id"] == f"correction-{correction_id}", again["sources"]
    assert top["text"] == CORRECTION
    assert 1 in again["cited_ranks"] and "120 euros" in again["answer"]
    assert again["versions"]["index_version"] == first["versions"]["index_version"]

    reworded = api.post("/v1/ask", json={"query": "what's the excess if my e-bike gets stolen?"})
    assert f"correction-{correction_id}" in [s["document_id"] for s in reworded.json()["sources"]]

    with kestrel.sessions() as session:
        row = session.get(Correction, correction_id)
        assert row is not None and row.reviewer and row.reviewed_at and row.chunk_id
        audit = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "correction.approve")
        ).one()
        assert audit.details["interaction_id"] == first["interaction_id"]


def test_rejected_correction_never_reaches_the_index(
    api: httpx.Client, kestrel: Services, admin_headers: dict[str, str]
) -> None:
    first = api.post("/v1/ask", json={"query": "How long is a password reset link valid?"})
    first_body = first.json()
    secret_text = "Reset links are valid forever and never expire, zebra-canary-7781."
    receipt = api.post(
        "/v1/feedback",
        json={
            "interaction_id": first_body["interaction_id"],
            "token": first_body["feedback_token"],
            "thumb": "down",
            "correction": secret_text,
        },
    ).json()
    rejected = api.post(
        f"/v1/corrections/{receipt['correction_id']}/reject",
        json={"note": "wrong"},
        headers=admin_headers,
    )
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    again = api.post(f"/v1/corrections/{receipt['correction_id']}/approve", headers=admin_headers)
    assert again.status_code == 409

    with kestrel.sessions() as session:
        from rag_loop.index.versions import champion

        collection = champion(session).collection_name
    assert not any("zebra-canary-7781" in text for text in kestrel.store.texts(collection))
    answer = api.post("/v1/ask", json={"query": "Do reset links never expire?"}).json()
    assert all("zebra-canary-7781" not in s["text"] for s in answer["sources"])


def test_thumb_can_change_latest_wins_history_kept(
    api: httpx.Client, admin_headers: dict[str, str]
) -> None:
    asked = api.post("/v1/ask", json={"query": "How long does a full charge take?"}).json()
    for thumb in ("down", "up"):
        response = api.post(
            "/v1/feedback",
            json={
                "interaction_id": asked["interaction_id"],
                "token": asked["feedback_token"],
                "thumb": thumb,
            },
        )
        assert response.status_code == 201
    view = api.get(f"/v1/interactions/{asked['interaction_id']}", headers=admin_headers).json()
    assert view["labels"]["thumb"] == "up"
    history = [e["thumb"] for s in view["feedback"] for e in s["events"]]
    assert history == ["down", "up"]


def test_idempotent_retry_is_recorded_once(api: httpx.Client, kestrel: Services) -> None:
    asked = api.post("/v1/ask", json={"query": "What tyre pressure should I use?"}).json()
    body = {
        "interaction_id": asked["interaction_id"],
        "token": asked["feedback_token"],
        "thumb": "up",
        "comment": "clear",
        "idempotency_key": "retry-me",
    }
    first = api.post("/v1/feedback", json=body)
    second = api.post("/v1/feedback", json=body)
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["submission_id"] == second.json()["submission_id"]
    assert second.json()["created"] is False
    changed = api.post("/v1/feedback", json={**body, "thumb": "down"})
    assert changed.status_code == 409
    from tests.conftest import row_counts

    assert row_counts(kestrel)["feedback_submissions"] == 1
    assert row_counts(kestrel)["feedback_events"] == 2


def test_feedback_with_api_key_and_source_pointer(api: httpx.Client, kestrel: Services) -> None:
    from rag_loop.auth.keys import create_key
    from rag_loop.db.engine import transaction

    with transaction(kestrel.sessions) as session:
        _, key = create_key(session, "widget backend", ["feedback"], actor="test")
    asked = api.post("/v1/ask", json={"query": "Where are the Hubs?"}).json()
    response = api.post(
        "/v1/feedback",
        headers={"X-API-Key": key},
        json={
            "interaction_id": asked["interaction_id"],
            "source": {"document_id": "support/kestrel-hubs"},
        },
    )
    assert response.status_code == 201, response.text
