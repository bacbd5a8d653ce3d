"""Shared fixtures: real SQLite and PostgreSQL, real Chroma, real MLflow, the real embedder,
and a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
import uvicorn
from sqlalchemy import func, select

from rag_loop.api import create_app
from rag_loop.corpus.ingest import ingest
from rag_loop.db import models
from rag_loop.index.embedders import SentenceTransformerEmbedder
from rag_loop.services import Services
from rag_loop.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpora" / "kestrel" / "docs"
QUESTIONS = ROOT / "corpora" / "kestrel" / "questions.jsonl"
ARTIFACTS = ROOT / "test-artifacts"  # screenshots; CI keeps them
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,4000",
)
PG_ADMIN = os.environ.get("RAG_LOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        action="append",
        choices=["sqlite", "postgres"],
        help="store backends to run the store tests on (default: both)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" in metafunc.fixturenames:
        backends = metafunc.config.getoption("db") or ["sqlite", "postgres"]
        metafunc.parametrize("db_backend", backends)


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    name = f"rag_loop_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite by default; tests that take `db_backend` run on SQLite and PostgreSQL."""
    backend = "sqlite"
    if "db_backend" in request.fixturenames:
        backend = request.getfixturevalue("db_backend")
    if backend == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'rag_loop.db'}"


@pytest.fixture
def make_settings(tmp_path: Path, mlflow_uri: str, db_url: str) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "corpus_path": CORPUS,
            "api": {"ingest_roots": [CORPUS, tmp_path]},
            "database": {"url": db_url},
            "mlflow": {"tracking_uri": mlflow_uri},
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def services(make_settings: Callable[..., Settings], embedder: Any) -> Iterator[Services]:
    svc = Services.from_settings(make_settings(), embedder=embedder)
    yield svc
    svc.close()


@pytest.fixture
def kestrel(services: Services) -> Services:
    """Services with the sample corpus ingested."""
    ingest(services, CORPUS, actor="test")
    return services


class CountingEmbedder:
    """The real embedder, counting the batches of queries it embeds (an Embedder)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches = 0
        self.name, self.version, self.dimension = inner.name, inner.version, inner.dimension

    def embed_documents(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        return np.asarray(self.inner.embed_documents(texts, progress=progress))

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        self.batches += 1
        return np.asarray(self.inner.embed_queries(texts))

    def embed_query(self, text: str) -> np.ndarray:
        return np.asarray(self.inner.embed_query(text))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OpenAI-compatible LLM server: llama_cpp.server running SmolLM2-135M on
    loopback. Yields its base URL (http://127.0.0.1:PORT/v1)."""
    from evals.llama_server import LlamaServer

    server = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log")
    yield server.url
    server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Debian's headless Chromium driven by Selenium through Debian's chromedriver."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "install Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


class LiveServer:
    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def api(kestrel: Services) -> Iterator[httpx.Client]:
    """A real HTTP client talking to a real server on loopback, sample corpus ingested."""
    with (
        LiveServer(create_app(kestrel.settings, kestrel)) as live,
        httpx.Client(base_url=live.url, timeout=60) as client,
    ):
        yield client


@pytest.fixture
def admin_headers(kestrel: Services) -> dict[str, str]:
    from rag_loop.auth.keys import create_key
    from rag_loop.db.engine import transaction

    with transaction(kestrel.sessions) as session:
        _, secret = create_key(session, "test admin", ["admin"], actor="test")
    return {"Authorization": f"Bearer {secret}"}


def stuck_outbox_entry(services: Services, gone: Path) -> None:
    """An MLflow run entry that can never be applied: its artifact file `gone` does not
    exist (deleted by hand, say)."""
    from rag_loop.db.engine import transaction
    from rag_loop.registry import outbox

    with transaction(services.sessions) as session:
        outbox.log_run(
            session, "rag-loop-test", "gone", params={}, metrics={}, artifact_files={"x": str(gone)}
        )


def row_counts(services: Services) -> dict[str, int]:
    """Rows in every table: a bad request must leave all of them unchanged."""
    with services.sessions() as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table)) or 0
            for table in models.Base.metadata.sorted_tables
        }


def assert_error_shape(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


def finished_job(
    api: httpx.Client, queued: httpx.Response, headers: dict[str, str], timeout: float = 600
) -> dict[str, Any]:
    """Long work answers 202 with a job: poll the job's Location until it is done or failed."""
    assert queued.status_code == 202, queued.text
    location = queued.headers["location"]
    assert location == f"/v1/jobs/{queued.json()['id']}"
    deadline = time.monotonic() + timeout
    while True:
        job = dict(api.get(location, headers=headers).json())
        if job["status"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"job not finished: {job}"
        time.sleep(0.2)
