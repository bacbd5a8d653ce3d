"""Every bad input gets a 4xx in the one error shape, and no table changes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from rag_loop.services import Services
from tests.conftest import assert_error_shape, row_counts


class EightDaysAgoSigner(TimestampSigner):
    """Signs as if it were eight days ago: a token past the default seven-day lifetime."""

    def get_timestamp(self) -> int:
        return int(time.time()) - 8 * 24 * 3600


@pytest.fixture
def asked(api: httpx.Client) -> dict[str, Any]:
    response = api.post("/v1/ask", json={"query": "How do I unlock the bike if my phone is dead?"})
    assert response.status_code == 200
    return dict(response.json())


def feedback(asked: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"interaction_id": asked["interaction_id"], "token": asked["feedback_token"], **fields}


BAD_FEEDBACK = {
    "unknown interaction": (
        lambda a, s: {
            **feedback(a, thumb="up"),
            "interaction_id": "f" * 32,
            "token": s.tokens.issue("f" * 32),
        },
        404,
        "not_found",
    ),
    "bad token": (lambda a, s: feedback(a, thumb="up", token="not-a-token"), 401, "unauthorized"),
    "token of another interaction": (
        lambda a, s: feedback(a, thumb="up", token=s.tokens.issue("0" * 32)),
        401,
        "unauthorized",
    ),
    "no token and no key": (
        lambda a, s: {"interaction_id": a["interaction_id"], "thumb": "up"},
        401,
        "unauthorized",
    ),
    "chunk not shown": (
        lambda a, s: feedback(a, chunk_labels=[{"chunk_id": "cdeadbeef", "relevant": True}]),
        404,
        "not_found",
    ),
    "chunk labelled twice": (
        lambda a, s: feedback(
            a,
            chunk_labels=[
                {"chunk_id": a["sources"][0]["chunk_id"], "relevant": True},
                {"chunk_id": a["sources"][0]["chunk_id"], "relevant": False},
            ],
        ),
        400,
        "invalid_input",
    ),
    "thumb of wrong type": (lambda a, s: feedback(a, thumb=1), 422, "validation_failed"),
    "thumb sideways": (lambda a, s: feedback(a, thumb="sideways"), 422, "validation_failed"),
    "relevant not a bool": (
        lambda a, s: feedback(
            a, chunk_labels=[{"chunk_id": a["sources"][0]["chunk_id"], "relevant": "maybe"}]
        ),
        422,
        "validation_failed",
    ),
    "unknown field": (lambda a, s: feedback(a, thumb="up", stars=5), 422, "validation_failed"),
    "empty feedback": (lambda a, s: feedback(a), 422, "validation_failed"),
    "only white space": (
        lambda a, s: feedback(a, comment=" \n", correction="\t"),
        422,
        "validation_failed",
    ),
    "NUL in a comment": (lambda a, s: feedback(a, comment="a\x00b"), 422, "validation_failed"),
    "oversize correction": (
        lambda a, s: feedback(a, correction="x" * 8001),
        413,
        "payload_too_large",
    ),
    "oversize comment": (lambda a, s: feedback(a, comment="y" * 8001), 413, "payload_too_large"),
    "unknown source document": (
        lambda a, s: feedback(a, source={"document_id": "nope"}),
        404,
        "not_found",
    ),
    "empty source pointer": (lambda a, s: feedback(a, source={}), 422, "validation_failed"),
}


@pytest.mark.parametrize("case", list(BAD_FEEDBACK))
def test_bad_feedback_is_refused_and_writes_nothing(
    case: str, api: httpx.Client, kestrel: Services, asked: dict[str, Any]
) -> None:
    make, status, code = BAD_FEEDBACK[case]
    before = row_counts(kestrel)
    response = api.post("/v1/feedback", json=make(asked, kestrel))
    assert_error_shape(response, status, code)
    assert row_counts(kestrel) == before


def test_expired_token_is_refused(
    api: httpx.Client, kestrel: Services, asked: dict[str, Any]
) -> None:
    secret = (kestrel.settings.data_dir / "secret.key").read_text().strip()
    old = URLSafeTimedSerializer(secret, salt="rag-loop.feedback", signer=EightDaysAgoSigner)
    token = old.dumps(asked["interaction_id"])
    before = row_counts(kestrel)
    response = api.post("/v1/feedback", json=feedback(asked, thumb="up", token=token))
    error = assert_error_shape(response, 401, "unauthorized")
    assert "expired" in error["message"]
    assert row_counts(kestrel) == before


def test_malformed_json_and_wrong_content(api: httpx.Client, kestrel: Services) -> None:
    before = row_counts(kestrel)
    assert_error_shape(
        api.post(
            "/v1/feedback", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
    )
    assert_error_shape(api.post("/v1/ask", content=b"x" * 1_000_001), 413, "payload_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit counts the bytes
        yield b'{"query": "'
        for _ in range(20):
            yield b"q" * 100_000
        yield b'"}'

    response = api.post("/v1/ask", content=chunked(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error_shape(response, 413, "payload_too_large")
    assert row_counts(kestrel) == before


def test_feedback_body_is_checked_as_fastapi_checks_bodies(
    api: httpx.Client, kestrel: Services, asked: dict[str, Any]
) -> None:
    """The feedback route parses its own body (api/lean.py); the rules and the error shape
    are those of every other route."""
    before = row_counts(kestrel)
    body = json.dumps(feedback(asked, thumb="up")).encode()
    for headers in ({"content-type": "text/plain"}, {}, {"content-type": "application/xml"}):
        response = api.post("/v1/feedback", content=body, headers=headers)
        error = assert_error_shape(response, 422, "validation_failed")
        assert error["details"][0]["field"] == "body", error
        assert "application/json" in error["message"]
    error = assert_error_shape(api.post("/v1/feedback", json=feedback(asked, thumb=1)), 422)
    assert [d["field"] for d in error["details"]] == ["body.thumb"]
    chunk = asked["sources"][0]["chunk_id"]
    labels = [{"chunk_id": chunk, "relevant": "maybe"}]
    error = assert_error_shape(
        api.post("/v1/feedback", json=feedback(asked, chunk_labels=labels)), 422
    )
    assert [d["field"] for d in error["details"]] == ["body.chunk_labels.0.relevant"]
    error = assert_error_shape(
        api.post(
            "/v1/feedback", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
        "validation_failed",
    )
    assert error["details"][0]["type"] == "json_invalid"
    # without the token, a key presented the wrong way is refused, not ignored
    no_token = {"interaction_id": asked["interaction_id"], "thumb": "up"}
    for authorization in ("Basic abc", "Bearer sk-not-ours"):
        response = api.post("/v1/feedback", json=no_token, headers={"Authorization": authorization})
        assert_error_shape(response, 401, "unauthorized")
    assert row_counts(kestrel) == before
    # a JSON media type with parameters, or a +json one, is JSON
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = api.post(
            "/v1/feedback",
            content=json.dumps(feedback(asked, thumb="down")).encode(),
            headers={"content-type": content_type},
        )
        assert response.status_code == 201, response.text


BAD_ASKS = {
    "empty query": ({"query": ""}, 422),
    "blank query": ({"query": "   "}, 422),
    "oversize query": ({"query": "q" * 2001}, 413),
    "top_k a bool": ({"query": "hi", "top_k": True}, 422),
    "top_k a string": ({"query": "hi", "top_k": "5"}, 422),
    "NUL in the query": ({"query": "a\x00b"}, 422),
    "top_k zero": ({"query": "hi", "top_k": 0}, 422),
    "top_k huge": ({"query": "hi", "top_k": 1000}, 422),
    "query not a string": ({"query": 5}, 422),
    "missing query": ({}, 422),
}


@pytest.mark.parametrize("case", list(BAD_ASKS))
def test_bad_ask_is_refused_and_writes_nothing(
    case: str, api: httpx.Client, kestrel: Services
) -> None:
    body, status = BAD_ASKS[case]
    before = row_counts(kestrel)
    assert_error_shape(api.post("/v1/ask", json=body), status)
    assert row_counts(kestrel) == before


def test_a_check_of_ours_says_its_own_words_in_both_error_shapes(
    api: httpx.Client, kestrel: Services
) -> None:
    """A validator's message, without pydantic's "Value error, " before it."""
    error = assert_error_shape(api.post("/v1/ask", json={"query": "a\x00b"}), 422)
    (detail,) = error["details"]
    assert detail["field"] == "body.query"
    assert detail["problem"].startswith("text must be valid Unicode without NUL")
    assert "Value error" not in error["message"]
    openai = api.post(
        "/v1/chat/completions",
        json={"model": "rag-loop", "messages": [{"role": "user", "content": "a\x00b"}]},
    )
    assert openai.status_code == 400, openai.text
    assert "Value error" not in openai.json()["error"]["message"]


def test_admin_routes_refuse_without_admin_key(api: httpx.Client, kestrel: Services) -> None:
    from rag_loop.auth.keys import create_key
    from rag_loop.db.engine import transaction

    with transaction(kestrel.sessions) as session:
        _, ask_key = create_key(session, "asker", ["ask"], actor="test")
        revoked, revoked_key = create_key(session, "gone", ["admin"], actor="test")
    with transaction(kestrel.sessions) as session:
        from rag_loop.auth.keys import revoke_key

        revoke_key(session, revoked.id, actor="test")
    before = row_counts(kestrel)
    for method, path in [
        ("GET", "/v1/corrections"),
        ("POST", "/v1/corrections/1/approve"),
        ("POST", "/v1/corrections/1/reject"),
        ("GET", "/v1/interactions/x"),
        ("GET", "/v1/index-versions"),
    ]:
        assert_error_shape(api.request(method, path), 401, "unauthorized")
        assert_error_shape(
            api.request(method, path, headers={"X-API-Key": ask_key}), 403, "forbidden"
        )
        assert_error_shape(api.request(method, path, headers={"X-API-Key": revoked_key}), 401)
        assert_error_shape(api.request(method, path, headers={"X-API-Key": "rl_nope_nope"}), 401)
        assert_error_shape(api.request(method, path, headers={"Authorization": "Basic abc"}), 401)
    # asking needs no key, but a key presented the wrong way is refused, not ignored
    for authorization in ("Basic abc", "Bearer", "Token rl_x"):
        error = assert_error_shape(
            api.post(
                "/v1/ask",
                json={"query": "How many backup codes do I get?"},
                headers={"Authorization": authorization},
            ),
            401,
            "unauthorized",
        )
        assert "Bearer" in error["message"]
    assert row_counts(kestrel) == before


def test_review_of_unknown_correction(
    api: httpx.Client, kestrel: Services, admin_headers: dict[str, str]
) -> None:
    before = row_counts(kestrel)
    assert_error_shape(api.post("/v1/corrections/999/approve", headers=admin_headers), 404)
    assert_error_shape(api.post("/v1/corrections/0/approve", headers=admin_headers), 422)
    assert_error_shape(api.get("/v1/interactions/unknown", headers=admin_headers), 404)
    assert_error_shape(api.get("/v1/corrections?status=odd", headers=admin_headers), 422)
    assert row_counts(kestrel) == before


def test_a_valid_token_is_enough_whatever_key_comes_with_it(
    api: httpx.Client, kestrel: Services
) -> None:
    """Browsers and SDKs add credentials of their own (an OpenAI client always sends
    `Authorization: Bearer sk-...`; a page may hold an ask key): the token decides."""
    from rag_loop.auth.keys import create_key
    from rag_loop.db.engine import transaction

    with transaction(kestrel.sessions) as session:
        _, ask_key = create_key(session, "asker", ["ask"], actor="test")
    for headers in (
        {"Authorization": "Bearer sk-proj-not-a-rag-loop-key"},
        {"Authorization": "Basic abc"},
        {"Authorization": f"Bearer {ask_key}"},  # a valid key without the feedback scope
        {"X-API-Key": "rl_nope_nope"},
    ):
        answer = api.post("/v1/ask", json={"query": "How long does a full charge take?"}).json()
        response = api.post("/v1/feedback", json=feedback(answer, thumb="up"), headers=headers)
        assert response.status_code == 201, (headers, response.text)
        # a bad token is still refused, key or no key
        bad = {**feedback(answer, thumb="up"), "token": "forged"}
        assert_error_shape(api.post("/v1/feedback", json=bad, headers=headers), 401)
