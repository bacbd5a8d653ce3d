"""Client-facing benchmark, measured side by side in one run on loopback.

1. One `rag-loop serve` (extractive generator, SQLite): at 8 and 32 concurrent clients, in
   turn, POST /v1/ask, POST /v1/chat/completions (plain) and POST /v1/chat/completions with
   `stream: true` (time to the first chunk, the role chunk sent once retrieval is done; time
   to the first content chunk; time to [DONE]); latency p50/p95/p99 and requests/s, and the
   ratio chat p50 / ask p50.
2. Two `rag-loop serve` processes on one PostgreSQL database: POST /v1/feedback at 32
   clients spread over both, then the rows counted to prove none were lost.

    python evals/bench_clients.py [--requests 300] [--feedback 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.bench_serving import (  # noqa: E402
    PG_ADMIN,
    QUESTIONS,
    ChromaServer,
    Server,
    bench_feedback,
    load,
    percentile,
    summary,
)


def chat_body(question: str, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "rag-loop",
        "messages": [{"role": "user", "content": question}],
        "stream": stream,
    }


async def stream_load(url: str, n: int, concurrency: int) -> dict[str, float]:
    """Streaming chat completions: time to first chunk, first content chunk, [DONE]."""
    first, first_content, done = [], [], []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                got_first = got_content = None
                body = chat_body(QUESTIONS[i % len(QUESTIONS)], stream=True)
                async with session.post(url, json=body) as response:
                    assert response.status == 200, await response.text()
                    async for raw in response.content:
                        line = raw.decode().strip()
                        if not line.startswith("data: "):
                            continue
                        now = time.perf_counter()
                        if got_first is None:
                            got_first = now
                        if line == "data: [DONE]":
                            break
                        chunk = json.loads(line[6:])
                        if got_content is None and chunk["choices"][0]["delta"].get("content"):
                            got_content = now
                end = time.perf_counter()
                assert got_first and got_content
                first.append((got_first - t0) * 1000)
                first_content.append((got_content - t0) * 1000)
                done.append((end - t0) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "first_chunk_p50_ms": percentile(first, 50),
        "first_content_p50_ms": percentile(first_content, 50),
        "first_content_p95_ms": percentile(first_content, 95),
        "done_p50_ms": percentile(done, 50),
        "done_p99_ms": percentile(done, 99),
        "req_per_s": n / wall,
    }


def bench_chat(server: Server, n: int) -> dict[int, dict[str, dict[str, float]]]:
    results: dict[int, dict[str, dict[str, float]]] = {}
    # warm-up: every route once per concurrency's worth
    asyncio.run(load(f"{server.url}/v1/ask", [{"query": q} for q in QUESTIONS[:16]], 4))
    for concurrency in (8, 32):
        row: dict[str, dict[str, float]] = {}
        asks = [{"query": QUESTIONS[i % len(QUESTIONS)]} for i in range(n)]
        latencies, wall, statuses, _ = asyncio.run(load(f"{server.url}/v1/ask", asks, concurrency))
        assert statuses == {200: n}, statuses
        row["ask"] = summary(latencies, wall)
        chats = [chat_body(QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]
        latencies, wall, statuses, _ = asyncio.run(
            load(f"{server.url}/v1/chat/completions", chats, concurrency)
        )
        assert statuses == {200: n}, statuses
        row["chat"] = summary(latencies, wall)
        row["stream"] = asyncio.run(
            stream_load(f"{server.url}/v1/chat/completions", n, concurrency)
        )
        results[concurrency] = row
    return results


def bench_two_processes(work: Path, n: int) -> dict[str, float]:
    name = f"rag_loop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    servers: list[Server] = []
    chroma = ChromaServer(work / "chroma")
    try:
        env = {
            "RAG_LOOP_DATABASE_URL": url,
            "RAG_LOOP_AUTH_SECRET_KEY": uuid.uuid4().hex,  # shared: tokens verify anywhere
            "RAG_LOOP_CHROMA_HOST": "127.0.0.1",
            "RAG_LOOP_CHROMA_PORT": str(chroma.port),
        }
        servers.append(Server(work / "pg", env))  # migrates and ingests
        servers.append(Server(work / "pg", env))
        dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"

        def rows() -> int:
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT count(*) FROM feedback_submissions").fetchone()
                return int(row[0]) if row else 0

        return bench_feedback(servers, n, rows)
    finally:
        for server in servers:
            server.stop()
        chroma.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per route and concurrency")
    parser.add_argument("--feedback", type=int, default=3000, help="feedback posts")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rag-loop-bench-clients-"))
    try:
        Server(work / "sqlite", {}).stop()  # the first start ingests; serve from a fresh one
        server = Server(work / "sqlite", {})
        chat = bench_chat(server, args.requests)
        server.stop()
        feedback = bench_two_processes(work, args.feedback)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {os.cpu_count()} cores; client: aiohttp; extractive generator")
    print("clients  route                      p50 ms   p95 ms   p99 ms   req/s")
    for concurrency, row in chat.items():
        for route in ("ask", "chat"):
            r = row[route]
            name = "/v1/ask" if route == "ask" else "/v1/chat/completions"
            print(
                f"{concurrency:7d}  {name:24s} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} "
                f"{r['p99_ms']:8.2f} {r['req_per_s']:7.1f}"
            )
        s = row["stream"]
        print(
            f"{concurrency:7d}  chat stream: first chunk p50 {s['first_chunk_p50_ms']:.2f} ms, "
            f"first content p50 {s['first_content_p50_ms']:.2f} / p95 "
            f"{s['first_content_p95_ms']:.2f} ms, [DONE] p50 {s['done_p50_ms']:.2f} / p99 "
            f"{s['done_p99_ms']:.2f} ms, {s['req_per_s']:.1f} req/s"
        )
        print(
            f"{concurrency:7d}  ratio chat p50 / ask p50: "
            f"{row['chat']['p50_ms'] / row['ask']['p50_ms']:.2f}"
        )
    r = feedback
    print(
        f"/v1/feedback, 2 API processes on PostgreSQL, 32 clients: {r['writes_per_s']:.1f} "
        f"writes/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms; accepted "
        f"{r['accepted']}, rows {r['rows']}, lost {r['lost']}, errors {r['errors']}"
    )


if __name__ == "__main__":
    main()
