"""The multi-process topology of docker-compose.yml, as plain processes on 127.0.0.1:
PostgreSQL (already running), a Chroma server (`chroma run`), an MLflow tracking server with
a PostgreSQL backend store and a local artifact root, Redis (already running), two API
processes and two workers. The end-to-end flow goes through them: ingest (a job), asks and
feedback spread over both APIs, an evaluation (a job), one loop cycle (a job, its message
delivered twice), the promoted index served by both APIs without a restart, and a worker
killed in the middle of a job, which the other worker takes over."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from rag_loop.feedback.simulated import SimulatedUser
from tests.conftest import CORPUS, PG_ADMIN, ROOT, free_port
from tests.loop.conftest import FAST_TRAINING, GOLDEN_SHARE, questions
from tests.servers import BIN, Process, chroma_server, mlflow_server, rag_loop

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
USER_QUESTIONS = ROOT / "corpora" / "kestrel" / "user_questions.jsonl"


def create_database() -> str:
    name = f"rag_loop_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Stack:
    def __init__(self, env: dict[str, str], urls: list[str], workers: list[Process]):
        self.env = env
        self.urls = urls
        self.workers = workers
        self.clients = [httpx.Client(base_url=url, timeout=60) for url in urls]

    def api(self, n: int) -> httpx.Client:
        return self.clients[n % len(self.clients)]

    def cli(self, *args: str) -> Any:
        done = subprocess.run(
            [str(BIN / "rag-loop"), *args],
            env={**os.environ, "HF_HUB_OFFLINE": "1", **self.env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    logs = tmp_path / "logs"
    logs.mkdir()
    databases = [create_database(), create_database()]
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    started: list[Process] = []
    try:
        chroma, chroma_port = chroma_server(tmp_path / "chroma", logs)
        started.append(chroma)
        mlflow, mlflow_url = mlflow_server(f"{base}/{databases[1]}", tmp_path / "mlartifacts", logs)
        started.append(mlflow)
        golden = tmp_path / "golden.jsonl"
        golden.write_text("".join(json.dumps(q) + "\n" for q in questions()[:GOLDEN_SHARE]))
        env = {
            "RAG_LOOP_DATA_DIR": str(tmp_path / "shared-data"),  # a volume all processes share
            "RAG_LOOP_DATABASE_URL": f"{base}/{databases[0]}",
            "RAG_LOOP_CHROMA_HOST": "127.0.0.1",
            "RAG_LOOP_CHROMA_PORT": str(chroma_port),
            "RAG_LOOP_MLFLOW_TRACKING_URI": mlflow_url,
            "RAG_LOOP_QUEUE_BROKER_URL": "redis://127.0.0.1:6379/0",
            "RAG_LOOP_QUEUE_QUEUE_NAME": f"test-{uuid.uuid4().hex[:8]}",
            "RAG_LOOP_QUEUE_LEASE_SECONDS": "4",
            "RAG_LOOP_AUTH_SECRET_KEY": uuid.uuid4().hex,
            "RAG_LOOP_CORPUS_PATH": str(CORPUS),
            "RAG_LOOP_EVALUATION_GOLDEN_SETS": json.dumps([str(golden)]),
            "RAG_LOOP_LOOP_AUTO": "false",
            **{f"RAG_LOOP_TRAINING_{k.upper()}": str(v) for k, v in FAST_TRAINING.items()},
            # the topology is under test, not the learning (tests/loop/test_improvement.py):
            # the one short cycle's candidate passes the gate whatever it measures
            "RAG_LOOP_LOOP_MIN_IMPROVEMENT": "-1",
            "RAG_LOOP_LOOP_MAX_REGRESSION": "1",
            "RAG_LOOP_LOOP_MIN_GATE_QUERIES": "1",
            "RAG_LOOP_LOOP_MAX_P_VALUE": "1",
        }
        urls = []
        for n in range(2):  # one after the other: the first one migrates the database
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            urls.append(url)
            started.append(
                rag_loop(
                    f"api{n}",
                    ["serve", "--no-ingest", "--host", "127.0.0.1", "--port", str(port)],
                    env,
                    logs,
                    ready_url=f"{url}/healthz",
                )
            )
        workers = [rag_loop(f"worker{n}", ["worker"], env, logs) for n in range(2)]
        started.extend(workers)
        stack = Stack(env, urls, workers)
        yield stack
        for client in stack.clients:
            client.close()
    except BaseException:
        for process in started:
            print(f"--- {process.name} ---\n{process.tail()}")
        raise
    finally:
        for process in reversed(started):
            process.stop()
        for name in databases:
            drop_database(name)


def thread_nice_values(pid: int) -> list[int]:
    """The nice value of every thread of process `pid` (proc(5): the 19th field of stat)."""
    values = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended
            continue
        values.append(int(fields[16]))
    return values


def wait_job(client: httpx.Client, job_id: str, headers: dict[str, str], timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished: {job}")


def test_end_to_end_through_two_apis_and_two_workers(stack: Stack) -> None:
    key = stack.cli("keys", "create", "ops", "--scope", "admin")["key"]
    admin = {"Authorization": f"Bearer {key}"}
    api0, api1 = stack.api(0), stack.api(1)
    assert api0.get("/readyz").status_code == 503  # nothing ingested yet

    # ingest: a job one of the workers runs; both APIs then serve it
    job = api0.post("/v1/index-versions", json={"path": str(CORPUS)}, headers=admin).json()
    job = wait_job(api1, job["id"], admin)
    assert job["status"] == "done", job
    index_version = job["result"]["index_version_id"]
    for client in (api0, api1):
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["checks"]["serving_index"]["index_version"] == index_version

    # asks and feedback, alternating between the two API processes
    user = SimulatedUser(seed=0, label_noise=0.0)
    items = [json.loads(line) for line in USER_QUESTIONS.read_text().splitlines() if line]
    for n, item in enumerate(items):
        client = stack.api(n)
        answer = client.post("/v1/ask", json={"query": item["question"]}).json()
        feedback = user.feedback(
            answer["interaction_id"],
            answer["feedback_token"],
            answer["sources"],
            set(item["document_ids"]),
        )
        assert feedback is not None  # this user answers every time
        response = stack.api(n + 1).post(  # the other process checks the token
            "/v1/feedback", json=feedback.model_dump(exclude_none=True)
        )
        assert response.status_code == 201, response.text

    # an evaluation: queued (202), run by a worker, recorded in SQL and on the MLflow server
    queued = api1.post("/v1/evals", json={"source": "golden"}, headers=admin)
    assert queued.status_code == 202, queued.text
    job = wait_job(api0, queued.json()["id"], admin)
    assert job["status"] == "done", job
    run = api0.get(f"/v1/evals/{job['result']['eval_run_id']}", headers=admin).json()
    assert run["status"] == "done" and run["metrics"]["ndcg_at_10"] > 0.5
    assert run["mlflow_run_id"]

    # one loop cycle; its message is delivered a second time: still one run
    cycle = api0.post("/v1/loop/cycles", headers=admin)
    assert cycle.status_code == 202, cycle.text
    cycle_id = cycle.json()["id"]
    [loop_job] = [
        j for j in api0.get("/v1/jobs", headers=admin).json() if j["kind"] == "loop_cycle"
    ]
    duplicate = stack.cli("jobs", "show", loop_job["id"])
    assert duplicate["kind"] == "loop_cycle"
    from rag_loop.queue import DramatiqQueue
    from rag_loop.settings import QueueSettings

    queue = DramatiqQueue(
        QueueSettings(
            broker_url=stack.env["RAG_LOOP_QUEUE_BROKER_URL"],
            queue_name=stack.env["RAG_LOOP_QUEUE_QUEUE_NAME"],
            lease_seconds=4,
        )
    )
    queue.send(loop_job["id"])
    queue.close()
    loop_job = wait_job(api1, loop_job["id"], admin, timeout=900)
    assert loop_job["status"] == "done" and loop_job["attempts"] == 1, loop_job
    view = api1.get(f"/v1/loop/cycles/{cycle_id}", headers=admin).json()
    assert view["state"] == "promoted", view
    candidate = view["candidate_index_version_id"]
    for client in (api0, api1):  # switched without a restart, in both processes
        answer = client.post("/v1/ask", json={"query": "How do I pause my plan?"}).json()
        assert answer["versions"]["index_version"] == candidate

    # a worker killed in the middle of a job: the other one takes it over
    queued = api0.post("/v1/evals", json={"source": "golden"}, headers=admin).json()
    deadline = time.monotonic() + 120
    while (job := api0.get(f"/v1/jobs/{queued['id']}", headers=admin).json())["status"] != (
        "running"
    ):
        assert time.monotonic() < deadline and job["status"] == "queued", job
        time.sleep(0.05)
    while not any(r["status"] == "running" for r in api0.get("/v1/evals", headers=admin).json()):
        assert time.monotonic() < deadline, "the evaluation run never started"
        time.sleep(0.05)  # killed now, the worker leaves a run behind that never finishes
    pid = int(job["worker"].split(":")[1])
    # the worker runs jobs below any API process beside it: every thread of it, the one
    # running this evaluation (and torch's) among them
    assert set(thread_nice_values(pid)) == {max(10, os.nice(0))}
    [victim] = [w for w in stack.workers if w.process.pid == pid]
    victim.kill()
    job = wait_job(api1, queued["id"], admin)
    assert job["status"] == "done" and job["attempts"] == 2, job
    assert job["worker"].split(":")[1] != str(pid)
    runs = api1.get("/v1/evals?limit=10", headers=admin).json()
    lost = [r for r in runs if r["status"] == "failed"]
    assert lost and "worker was lost" in lost[0]["error"]


def test_serve_with_worker_processes(tmp_path: Path) -> None:
    """`rag-loop serve --workers 2`: two API processes on one port, SQLite and a Chroma
    server; without a Chroma server it refuses with a clear message."""
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {"RAG_LOOP_DATA_DIR": str(tmp_path / "data"), "RAG_LOOP_CORPUS_PATH": str(CORPUS)}
    refused = subprocess.run(
        [str(BIN / "rag-loop"), "serve", "--workers", "2", "--no-ingest"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "needs a Chroma server" in refused.stderr
    assert "Traceback" not in refused.stderr

    chroma, chroma_port = chroma_server(tmp_path / "chroma", logs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env |= {"RAG_LOOP_CHROMA_HOST": "127.0.0.1", "RAG_LOOP_CHROMA_PORT": str(chroma_port)}
    api = rag_loop(
        "api",
        ["serve", "--workers", "2", "--port", str(port)],
        env,
        logs,
        ready_url=f"{url}/readyz",
        timeout=300,
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(12):
                answer = client.post("/v1/ask", json={"query": "How do I pause my plan?"})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                feedback = client.post(
                    "/v1/feedback",
                    json={
                        "interaction_id": body["interaction_id"],
                        "token": body["feedback_token"],
                        "thumb": "up",
                    },
                )
                assert feedback.status_code == 201, feedback.text
        children = subprocess.run(
            ["pgrep", "-P", str(api.process.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) >= 2  # the uvicorn worker processes
    finally:
        api.stop()
        chroma.stop()
