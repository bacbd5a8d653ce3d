"""Operations: liveness, readiness, Prometheus metrics, the widget script and demo page."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from rag_loop.api import create_app
from rag_loop.services import Services
from tests.conftest import LiveServer, finished_job


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_readyz_names_what_is_missing(services: Services) -> None:
    """No index yet: alive, not ready, and the body says why."""
    with LiveServer(create_app(services.settings, services)) as live:
        assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}
        response = httpx.get(f"{live.url}/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"]["ok"] and checks["chroma"]["ok"]
    assert not checks["serving_index"]["ok"] and "ingest" in checks["serving_index"]["error"]


def test_readyz_when_ready(api: httpx.Client) -> None:
    body = api.get("/readyz").json()
    assert body["status"] == "ready" and body["checks"]["serving_index"]["index_version"] == 1


def test_metrics_count_what_happened(api: httpx.Client, admin_headers: dict[str, str]) -> None:
    answer = api.post("/v1/ask", json={"query": "How do I pause my subscription?"}).json()
    api.post("/v1/ask", json={"query": "q" * 2001})  # refused by the service: 413
    api.post(
        "/v1/chat/completions",
        json={
            "model": "rag-loop",
            "messages": [{"role": "user", "content": "Is there a cargo bike?"}],
        },
    )
    feedback = {
        "interaction_id": answer["interaction_id"],
        "token": answer["feedback_token"],
        "thumb": "down",
        "chunk_labels": [{"chunk_id": answer["sources"][0]["chunk_id"], "relevant": False}],
        "correction": "Pause it in the app under Plan.",
        "idempotency_key": "k1",
    }
    assert api.post("/v1/feedback", json=feedback).status_code == 201
    assert api.post("/v1/feedback", json=feedback).status_code == 200  # a retry: not counted
    run = api.post("/v1/evals", json={"source": "golden"}, headers=admin_headers)
    assert finished_job(api, run, admin_headers)["status"] == "done"

    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found[("rag_loop_asks_total", (("outcome", "ok"), ("route", "ask")))] == 1
    assert found[("rag_loop_asks_total", (("outcome", "invalid"), ("route", "ask")))] == 1
    assert found[("rag_loop_asks_total", (("outcome", "ok"), ("route", "chat")))] == 1
    for kind in ("thumb_down", "not_relevant", "correction"):
        assert found[("rag_loop_feedback_items_total", (("kind", kind),))] == 1
    latency = (
        "rag_loop_http_request_duration_seconds_count",
        (("method", "POST"), ("route", "/v1/feedback"), ("status", "201")),
    )
    assert found.get(latency) == 1, [k for k in found if "duration_seconds_count" in k[0]]
    assert found[("rag_loop_serving_index_version", ())] == 1
    scores = {
        labels: v for (name, labels), v in found.items() if name == "rag_loop_evaluation_score"
    }
    assert any(
        dict(labels)["metric"] == "ndcg_at_10" and 0 < v <= 1 for labels, v in scores.items()
    )


def test_widget_and_demo_page_are_served(api: httpx.Client) -> None:
    script = api.get("/widget.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("application/javascript")
    assert "RagLoopFeedback" in script.text and "/v1/feedback" in script.text
    page = api.get("/")
    assert page.status_code == 200 and '<script src="/widget.js">' in page.text


def test_cors_allows_configured_origins_only(kestrel: Services) -> None:
    settings = kestrel.settings.model_copy(
        update={
            "api": kestrel.settings.api.model_copy(
                update={"cors_origins": ["https://docs.example.com"]}
            )
        }
    )
    with LiveServer(create_app(settings, kestrel)) as live:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        allowed = httpx.options(
            f"{live.url}/v1/feedback", headers={"Origin": "https://docs.example.com", **preflight}
        )
        refused = httpx.options(
            f"{live.url}/v1/feedback", headers={"Origin": "https://evil.example", **preflight}
        )
        chat = httpx.post(
            f"{live.url}/v1/chat/completions",
            headers={"Origin": "https://docs.example.com"},
            json={
                "model": "rag-loop",
                "messages": [{"role": "user", "content": "Is there a cargo bike?"}],
            },
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://docs.example.com"
    assert "access-control-allow-origin" not in refused.headers
    exposed = chat.headers["access-control-expose-headers"].lower()
    assert "x-rag-loop-feedback-token" in exposed
