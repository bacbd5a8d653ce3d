"""The OpenAPI document is the contract: a property-based fuzzer (Schemathesis) drives every
route of a real server over real HTTP from `/openapi.json`, and the suite fails on any
failure class it reports (server errors, undocumented statuses, media types or headers,
responses that break their schema, schema-valid requests refused, schema-invalid ones
accepted, a missing auth check, wrong `Allow` headers, ...).

All phases run: the schema's examples, the coverage phase (boundary values of every
constraint), fuzzing, and stateful sequences that follow links between operations (an
ask's interaction id and feedback token into feedback, a job's id into the job). The slow or
destructive routes are sandboxed: evaluations use a three-question golden set, index builds
may only read under a scratch folder (`api.ingest_roots`), and the loop trains on whatever
the fuzzer's feedback gave it. Examples are bounded and the seed fixed, so a run is the
same on every machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_loop import jobs
from rag_loop.api.app import create_app
from rag_loop.auth.keys import create_key
from rag_loop.corpus.ingest import ingest
from rag_loop.db.engine import transaction
from rag_loop.services import Services
from rag_loop.settings import Settings
from tests.conftest import CORPUS, ROOT, LiveServer, assert_error_shape, row_counts

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
MAX_EXAMPLES = 25
SEED = 17


@pytest.fixture(scope="module")
def fuzzed_server(
    tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str, embedder: Any
) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("contract")
    golden = root / "golden.jsonl"
    lines = (ROOT / "corpora" / "kestrel" / "questions.jsonl").read_text().splitlines()[:3]
    golden.write_text("\n".join(lines) + "\n")
    scratch = root / "scratch"
    scratch.mkdir()
    (scratch / "note.md").write_text("# A note\n\nThe fuzzer may index this folder only.\n")
    settings = Settings(
        data_dir=root / "data",
        corpus_path=CORPUS,
        mlflow={"tracking_uri": mlflow_uri},
        evaluation={"golden_sets": [golden]},
        api={"ingest_roots": [scratch]},
        loop={"auto": False},
    )
    services = Services.from_settings(settings, embedder=embedder)
    ingest(services, CORPUS, actor="test")
    with transaction(services.sessions) as session:
        _, key = create_key(session, "fuzzer", ["admin", "ask", "feedback"], actor="test")
    try:
        with LiveServer(create_app(settings, services)) as live:
            yield live.url, key
            settle(services)
    finally:
        services.close()


def settle(services: Services, timeout: float = 600) -> None:
    """Let the jobs the fuzzer started (evaluations, index builds, cycles on threads of the
    server) finish before the services close under them."""
    deadline = time.monotonic() + timeout
    while any(j["status"] in ("queued", "running") for j in jobs.list_jobs(services)):
        assert time.monotonic() < deadline, "the fuzzer's jobs did not finish"
        time.sleep(0.5)


def test_every_route_keeps_the_openapi_contract(
    fuzzed_server: tuple[str, str], tmp_path: Path
) -> None:
    url, key = fuzzed_server
    report = tmp_path / "report.json"
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--header",
        f"Authorization: Bearer {key}",
        "--request-timeout",
        "120",
        "--workers",
        "1",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    # in tmp_path: the fuzzer keeps a cache of what it found in its working folder
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    print(done.stdout[done.stdout.find("=== WARNINGS") :])  # the figures, in the test log
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    ran = json.loads(report.read_text())
    assert ran, "the fuzzer wrote no report"


# -- cases the fuzzer found, kept as regular tests -----------------------------------------


def test_ids_out_of_range_are_422_and_store_nothing(
    api: httpx.Client, admin_headers: dict[str, str], kestrel: Services
) -> None:
    huge = 2**63
    before = row_counts(kestrel)
    for method, path, body in [
        ("POST", f"/v1/corrections/{huge}/approve", {}),
        ("POST", f"/v1/corrections/{huge}/reject", {}),
        ("GET", f"/v1/loop/cycles/{huge}", None),
        ("POST", f"/v1/loop/cycles/{huge}/approve", None),
        ("POST", f"/v1/loop/cycles/{huge}/reject", {}),
        ("POST", f"/v1/loop/cycles/{huge}/resume", None),
        ("POST", f"/v1/index-versions/{huge}/serve", None),
        ("GET", f"/v1/events?after={huge}", None),
        ("POST", "/v1/loop/rollback", {"cycle": huge}),
        ("POST", "/v1/evals", {"index_version": huge}),
        ("POST", "/v1/evals", {"index_version": 2**31}),  # PostgreSQL's INTEGER ends before
    ]:
        response = api.request(method, path, json=body, headers=admin_headers)
        assert_error_shape(response, 422, "validation_failed")
    assert row_counts(kestrel) == before  # no failed evaluation run stored either


def test_text_that_cannot_be_stored_is_refused_on_every_protocol(
    api: httpx.Client, kestrel: Services
) -> None:
    before = row_counts(kestrel)
    for text in ("\udc00", "a\x00b"):
        body = json.dumps({"model": "rag-loop", "messages": [{"role": "user", "content": text}]})
        response = api.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text  # OpenAI's status and shape
        assert response.json()["error"]["param"] == "messages.0.content"
        ask = api.post(
            "/v1/ask",
            content=json.dumps({"query": text}),
            headers={"content-type": "application/json"},
        )
        assert_error_shape(ask, 422, "validation_failed")
    assert row_counts(kestrel) == before


def test_integers_are_integers(api: httpx.Client) -> None:
    # JSON Schema's integer includes 3.0; a string or a boolean is not one
    assert api.post("/v1/ask", json={"query": "battery", "top_k": 3.0}).status_code == 200
    for top_k in ("3", True, 3.5):
        assert_error_shape(api.post("/v1/ask", json={"query": "battery", "top_k": top_k}), 422)


def test_405_lists_every_method_of_the_path(
    api: httpx.Client, admin_headers: dict[str, str]
) -> None:
    for path, allowed in [
        ("/v1/evals", "GET, POST"),
        ("/v1/index-versions", "GET, POST"),
        ("/v1/loop/cycles", "GET, POST"),
        ("/v1/ask", "POST"),
    ]:
        response = api.request("DELETE", path, headers=admin_headers)
        assert_error_shape(response, 405, "method_not_allowed")
        assert response.headers["allow"] == allowed, path


def test_the_same_mistake_gets_the_same_answer_chunked_or_not(api: httpx.Client) -> None:
    """An oversize body is refused before the app reads it (Content-Length) or while it
    reads it (chunked): the same status and, per protocol, the same shape."""
    big = b'{"query": "' + b"x" * 1_100_000 + b'"}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    json_type = {"content-type": "application/json"}
    for path, openai_shape in (("/v1/ask", False), ("/v1/chat/completions", True)):
        for content in (big, chunks()):
            response = api.post(path, content=content, headers=json_type)
            assert response.status_code == 413, response.text
            error = response.json()["error"]
            assert ("type" in error) is openai_shape and ("details" in error) is not openai_shape
    # a body that is not UTF-8 JSON: 422 on every rag-loop route, LeanRoute or not
    for path in ("/v1/ask", "/v1/feedback", "/v1/corrections/1/approve"):
        response = api.post(path, content=b"\xff\xfe{", headers=json_type)
        assert response.status_code in (401, 422), (path, response.text)


def test_errors_of_the_report_are_json_as_documented(
    api: httpx.Client, admin_headers: dict[str, str]
) -> None:
    spec = api.get("/openapi.json").json()
    responses = spec["paths"]["/v1/reports/latest"]["get"]["responses"]
    assert set(responses["200"]["content"]) == {"text/html", "application/json"}
    assert set(responses["422"]["content"]) == {"application/json"}
    response = api.get("/v1/reports/latest?format=pdf", headers=admin_headers)
    assert_error_shape(response, 422, "validation_failed")
