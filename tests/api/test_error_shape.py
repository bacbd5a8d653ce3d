"""The one JSON error shape, pinned (as datasette's test_error_shape does)."""

from __future__ import annotations

import httpx

from tests.conftest import assert_error_shape


def test_error_shape_is_pinned(api: httpx.Client) -> None:
    response = api.get("/v1/interactions/abc")
    assert response.json() == {
        "error": {
            "code": "unauthorized",
            "message": "this route needs an API key with the 'admin' scope",
            "details": [],
        }
    }
    assert response.headers["www-authenticate"] == "Bearer"


def test_every_kind_of_error_uses_it(api: httpx.Client) -> None:
    assert_error_shape(api.get("/no/such/route"), 404, "not_found")
    assert_error_shape(api.delete("/v1/ask"), 405, "method_not_allowed")
    error = assert_error_shape(api.post("/v1/ask", json={"query": 1}), 422, "validation_failed")
    assert error["details"][0]["field"] == "body.query"


def test_openapi_documents_every_route_and_its_errors(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            assert operation.get("operationId"), (method, path)
            errors = [code for code in operation["responses"] if code.startswith(("4", "5"))]
            # listing the one model reads nothing that can fail: no error to document
            assert errors or operation["operationId"] == "list_models", (method, path)
    assert "ErrorBody" in spec["components"]["schemas"]
    # both ways of presenting an API key are documented as security schemes of the routes
    assert set(spec["components"]["securitySchemes"]) == {"api_key_bearer", "api_key_header"}
    assert spec["components"]["securitySchemes"]["api_key_header"]["name"] == "X-API-Key"
    keyed = [{"api_key_bearer": []}, {"api_key_header": []}]
    assert spec["paths"]["/v1/corrections"]["get"]["security"] == keyed
    # a key is optional where the route takes an anonymous ask or a feedback token instead
    for path in ("/v1/ask", "/v1/feedback", "/v1/chat/completions"):
        assert spec["paths"][path]["post"]["security"] == [{}, *keyed], path
    assert "security" not in spec["paths"]["/v1/models"]["get"]
    # the OpenAI-compatible routes answer a schema mismatch with 400, never 422
    assert "422" not in spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    # tags keep the documented order, not the order routes are matched in
    assert [tag["name"] for tag in spec["tags"]][:3] == [
        "ask",
        "feedback",
        "chat (OpenAI-compatible)",
    ]


def test_healthz(api: httpx.Client) -> None:
    response = api.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
