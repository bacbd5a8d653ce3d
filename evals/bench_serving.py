"""Serving benchmark, measured side by side in one run on loopback.

1. bare cost: one query embedding plus one Chroma query, in this process with the service's
   own embedder and Chroma collection (median);
2. POST /v1/ask (extractive) latency p50/p95/p99 and throughput at 1, 8 and 32 concurrent
   clients against a real `rag-loop serve` process. At 1 client each ask alternates with
   one bare-cost measurement, so both see the same machine (this one is shared and noisy);
   prints ask p50 / bare cost;
3. POST /v1/feedback writes/s at 32 clients on SQLite (one API process, and two:
   `rag-loop serve --workers 2` with a Chroma server) and on PostgreSQL: the median of
   several runs, counting the rows afterwards to prove none were lost;
4. POST /v1/ask at 1 client while a loop cycle runs in the same API process (no broker:
   the cycle is a thread of the process that answers), beside the same asks before and
   after it: the sample corpus's user questions are asked and rated by the generous
   simulated user first, then a cycle is started through the API. `--cycle-runs` cycles
   with the cycle's thread at the process's priority (`RAG_LOOP_QUEUE_BACKGROUND_NICE=0`)
   and as many at the default nice value, alternating, each on a new copy.
5. The first ask after another process changed what serves, and after a restart, with the
   versions loaded ahead (`RAG_LOOP_RETRIEVAL_WARM_SECONDS`, the default) and without (0),
   alternating, each run on a new copy of one prepared state: the sample corpus, its user
   questions asked and rated, a loop cycle awaiting approval (a fine-tuned encoder, a
   hybrid version), Chroma as a server shared by the processes. A `rag-loop serve` process
   answers 10 asks, `rag-loop loop approve` in another process promotes the candidate, and
   the next ask is timed; then the server restarts and its first ask is timed.

    python evals/bench_serving.py [--asks 300] [--feedback 3000] [--rounds 5] [--no-postgres]
        [--parts asks,feedback,cycle,warm] [--cycle-runs 3] [--warm-runs 3] [--warm-corpus PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psycopg

from rag_loop.settings import QueueSettings, RetrievalSettings

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpora" / "kestrel" / "docs"
QUESTIONS = [
    json.loads(line)["question"]
    for line in (ROOT / "corpora" / "kestrel" / "questions.jsonl").read_text().splitlines()
]
USER_QUESTIONS = [
    json.loads(line)
    for line in (ROOT / "corpora" / "kestrel" / "user_questions.jsonl").read_text().splitlines()
]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ACTIVE = ("collecting", "training", "indexing", "evaluating")  # a cycle's working states


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class BareCost:
    """embed_query + one Chroma query with the service's own objects, in this process."""

    def __init__(self, data_dir: Path) -> None:
        from rag_loop.index.versions import serving_index
        from rag_loop.services import Services
        from rag_loop.settings import Settings

        self.services = Services.from_settings(Settings(data_dir=data_dir, corpus_path=CORPUS))
        self.collection = serving_index(self.services.engine).collection_name

    def __call__(self, question: str) -> float:
        t0 = time.perf_counter()
        self.services.store.query(self.collection, self.services.embedder.embed_query(question), 5)
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.services.close()


class ChromaServer:
    """`chroma run` on loopback: two API processes share it (embedded Chroma is one
    process's)."""

    def __init__(self, path: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "chroma"),
                "run",
                "--path",
                str(path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("chroma run did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class Server:
    def __init__(self, data_dir: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = (data_dir / "serve.log").open("w")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "rag-loop"),
                "serve",
                "--port",
                str(self.port),
                *args,
            ],
            env={
                **os.environ,
                "RAG_LOOP_DATA_DIR": str(data_dir),
                "RAG_LOOP_CORPUS_PATH": str(CORPUS),
                **env,
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((data_dir / "serve.log").read_text())
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


async def load(
    url: str, bodies: list[dict[str, Any]], concurrency: int
) -> tuple[list[float], float, dict[int, int], list[dict[str, Any]]]:
    """POST every body with `concurrency` workers; latencies (ms), wall seconds, statuses."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    replies: list[dict[str, Any]] = []
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                async with session.post(url, json=body) as response:
                    payload = await response.json()
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[response.status] = statuses.get(response.status, 0) + 1
                replies.append(payload)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, wall, statuses, replies


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    return {
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "req_per_s": len(latencies) / wall,
    }


async def one_client(
    server: Server, bare: BareCost, n: int
) -> tuple[dict[str, float], float, float]:
    """1 client, each ask right after one bare-cost measurement of the same question.
    Also returns the median embed+search time the server reported for itself."""
    latencies, bare_ms, served_ms = [], [], []
    url = f"{server.url}/v1/ask"
    async with aiohttp.ClientSession() as session:
        for question in QUESTIONS[:20]:  # warm-up, both sides
            bare(question)
            async with session.post(url, json={"query": question}) as response:
                await response.read()
        wall = 0.0
        for i in range(n):
            question = QUESTIONS[i % len(QUESTIONS)]
            bare_ms.append(bare(question))
            t0 = time.perf_counter()
            async with session.post(url, json={"query": question}) as response:
                payload = await response.json()
            elapsed = time.perf_counter() - t0
            assert response.status == 200, payload
            latencies.append(elapsed * 1000)
            served_ms.append(payload["latency_ms"]["embed"] + payload["latency_ms"]["search"])
            wall += elapsed
    pairs = sorted(a / b for a, b in zip(latencies, bare_ms, strict=True))
    single = {**summary(latencies, wall), "pair_ratio_p25": percentile(pairs, 25)}
    single["pair_ratio_p50"] = percentile(pairs, 50)
    single["pair_ratio_p75"] = percentile(pairs, 75)
    return single, statistics.median(bare_ms), statistics.median(served_ms)


def bench_asks(server: Server, n: int) -> dict[int, dict[str, float]]:
    results = {}
    for concurrency in (8, 32):
        bodies = [{"query": QUESTIONS[i % len(QUESTIONS)]} for i in range(n)]
        latencies, wall, statuses, _ = asyncio.run(
            load(f"{server.url}/v1/ask", bodies, concurrency)
        )
        assert statuses == {200: n}, statuses
        results[concurrency] = summary(latencies, wall)
    return results


async def spread_load(
    urls: list[str], bodies: list[dict[str, Any]], concurrency: int
) -> tuple[list[float], float, dict[int, int]]:
    """Feedback posts with the clients split evenly over several API processes."""
    per = concurrency // len(urls)
    share = [bodies[i :: len(urls)] for i in range(len(urls))]
    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *(load(f"{url}/v1/feedback", part, per) for url, part in zip(urls, share, strict=True))
    )
    wall = time.perf_counter() - started
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    for lat, _, st, _ in outcomes:
        latencies += lat
        for code, count in st.items():
            statuses[code] = statuses.get(code, 0) + count
    return latencies, wall, statuses


def bench_feedback(
    server: Server | list[Server], n: int, count_rows: Any, rounds: int
) -> dict[str, float]:
    """Feedback writes/s at 32 clients (split over the servers when given several): `rounds`
    runs of `n` posts each (this machine's speed drifts from one second to the next, so one
    run is one sample), and the rows counted after all of them."""
    urls = [s.url for s in server] if isinstance(server, list) else [server.url]
    _, _, _, asked = asyncio.run(
        load(f"{urls[0]}/v1/ask", [{"query": q} for q in QUESTIONS[:64]], 8)
    )
    before = count_rows()
    rates: list[float] = []
    latencies: list[float] = []
    accepted = 0
    for _ in range(rounds):
        bodies = []
        for i in range(n):
            answer = asked[i % len(asked)]
            bodies.append(
                {
                    "interaction_id": answer["interaction_id"],
                    "token": answer["feedback_token"],
                    "thumb": "up" if i % 3 else "down",
                    "idempotency_key": uuid.uuid4().hex,
                }
            )
        round_latencies, wall, statuses = asyncio.run(spread_load(urls, bodies, 32))
        accepted += statuses.get(201, 0)
        rates.append(statuses.get(201, 0) / wall)
        latencies += round_latencies
    rows = count_rows() - before
    return {
        "writes_per_s": statistics.median(rates),
        "min_per_s": min(rates),
        "max_per_s": max(rates),
        "accepted": accepted,
        "rows": rows,
        "lost": accepted - rows,
        "errors": n * rounds - accepted,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def admin_key(data_dir: Path) -> dict[str, str]:
    """An admin key made with the CLI on the server's database."""
    made = cli(data_dir, {}, "keys", "create", "bench", "--scope", "admin")
    return {"Authorization": f"Bearer {made['key']}"}


async def timed_asks(session: aiohttp.ClientSession, url: str, n: int, start: int) -> list[float]:
    latencies = []
    for i in range(start, start + n):
        t0 = time.perf_counter()
        async with session.post(
            f"{url}/v1/ask", json={"query": QUESTIONS[i % len(QUESTIONS)]}
        ) as r:
            assert r.status == 200, await r.text()
            await r.read()
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


async def rate_user_questions(session: aiohttp.ClientSession, url: str) -> None:
    """The sample corpus's user questions, asked and rated by the generous simulated user."""
    from rag_loop.feedback.simulated import SimulatedUser

    user = SimulatedUser.generous(seed=0)
    for item in USER_QUESTIONS:
        async with session.post(f"{url}/v1/ask", json={"query": item["question"]}) as r:
            answer = await r.json()
        feedback = user.feedback(
            answer["interaction_id"],
            answer["feedback_token"],
            answer["sources"],
            set(item["document_ids"]),
        )
        assert feedback is not None
        body = feedback.model_dump(mode="json", exclude_none=True)
        async with session.post(f"{url}/v1/feedback", json=body) as r:
            assert r.status == 201, await r.text()


async def asks_during_cycle(server: Server, headers: dict[str, str], n: int) -> dict[str, Any]:
    """1 client: `n` asks before, asks for as long as the cycle works (grouped by the
    cycle's state when each was sent), `n` asks after."""
    async with aiohttp.ClientSession() as session:
        await rate_user_questions(session, server.url)
        before = await timed_asks(session, server.url, n, 0)
        async with session.post(f"{server.url}/v1/loop/cycles", headers=headers) as r:
            assert r.status == 202, await r.text()
            cycle_id = (await r.json())["id"]
        during: dict[str, list[float]] = {}
        state, i = "collecting", n
        while state in ACTIVE:
            during.setdefault(state, []).extend(await timed_asks(session, server.url, 5, i))
            i += 5
            async with session.get(f"{server.url}/v1/loop/cycles/{cycle_id}", headers=headers) as r:
                view = await r.json()
            state = view["state"]
        after = await timed_asks(session, server.url, n, i)
    return {
        "state": state,
        "stages": {k: v.get("seconds") for k, v in (view.get("stages") or {}).items()},
        "latencies": {"before": before, **during, "after": after},
    }


def cli(data_dir: Path, env: dict[str, str], *args: str) -> Any:
    """A `rag-loop` command in its own process on the server's data; its JSON output."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "rag-loop"), *args],
        env={
            **os.environ,
            "RAG_LOOP_DATA_DIR": str(data_dir),
            "RAG_LOOP_CORPUS_PATH": str(CORPUS),
            **env,
        },
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def asks_now(url: str, n: int, start: int) -> list[float]:
    async def run() -> list[float]:
        async with aiohttp.ClientSession() as session:
            return await timed_asks(session, url, n, start)

    return asyncio.run(run())


def prepare_warm(base: Path, corpus: Path | None) -> int | None:
    """Part 5's state, in a Chroma server's store: `corpus` ingested (its first index
    version serves; returns None), or the sample corpus with its user questions asked and
    rated and one cycle awaiting approval, whose candidate has a fine-tuned encoder (no
    validation split: training offers its encoder). Returns the cycle's id."""
    chroma = ChromaServer(base / "chroma")
    env = {
        "RAG_LOOP_CHROMA_HOST": "127.0.0.1",
        "RAG_LOOP_CHROMA_PORT": str(chroma.port),
        "RAG_LOOP_LOOP_AUTO": "false",
        "RAG_LOOP_LOOP_REQUIRE_APPROVAL": "true",
        "RAG_LOOP_TRAINING_VALIDATION_SHARE": "0",
    }
    try:
        if corpus is not None:
            ingested = cli(base / "data", env, "ingest", str(corpus), "--no-progress")
            print(f"part 5 on {corpus}: {ingested}", flush=True)
            return None
        Server(base / "data", env).stop()  # ingests
        headers = admin_key(base / "data")
        server = Server(base / "data", env)
        try:

            async def run() -> dict[str, Any]:
                async with aiohttp.ClientSession() as session:
                    await rate_user_questions(session, server.url)
                    url = f"{server.url}/v1/loop/cycles"
                    async with session.post(url, headers=headers) as r:
                        assert r.status == 202, await r.text()
                        cycle_id = (await r.json())["id"]
                    while True:
                        async with session.get(f"{url}/{cycle_id}", headers=headers) as r:
                            view: dict[str, Any] = await r.json()
                        if view["state"] not in ACTIVE:
                            return view
                        await asyncio.sleep(1)

            view = asyncio.run(run())
        finally:
            server.stop()
    finally:
        chroma.stop()
    if view["state"] != "awaiting_approval":
        raise RuntimeError(f"the cycle ended {view['state']}: {view.get('reasons')}")
    print(f"part 5: cycle {view['id']} awaiting approval, encoder {view['embedder']}", flush=True)
    return int(view["id"])


def warm_run(base: Path, run: Path, cycle_id: int | None, warm_seconds: str) -> dict[str, Any]:
    """Part 5, one run on a copy of `base`: what the first asks cost after another process
    approved the candidate (when there is one), and after a restart, with `warm_seconds`."""
    shutil.copytree(base, run)
    chroma = ChromaServer(run / "chroma")
    env = {
        "RAG_LOOP_CHROMA_HOST": "127.0.0.1",
        "RAG_LOOP_CHROMA_PORT": str(chroma.port),
        "RAG_LOOP_LOOP_AUTO": "false",
        "RAG_LOOP_RETRIEVAL_WARM_SECONDS": warm_seconds,
    }
    out: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        server = Server(run / "data", env)
        out["start_s"] = time.perf_counter() - t0
        try:
            time.sleep(3)  # the schedule's first pass (lifespan loaded ahead already)
            out["steady"] = asks_now(server.url, 10, 0)
            if cycle_id is not None:
                promoted = cli(run / "data", env, "loop", "approve", str(cycle_id))
                assert promoted["state"] == "promoted", promoted
                out["after_approval"] = asks_now(server.url, 10, 10)
        finally:
            server.stop()
        t0 = time.perf_counter()
        server = Server(run / "data", env)
        out["restart_s"] = time.perf_counter() - t0
        try:
            out["after_restart"] = asks_now(server.url, 10, 20)
        finally:
            server.stop()
    finally:
        chroma.stop()
        shutil.rmtree(run, ignore_errors=True)
    return out


def print_warm(runs: dict[str, list[dict[str, Any]]]) -> None:
    print(
        "the first ask after another process approved a candidate (a fine-tuned encoder, a "
        "hybrid version; not with --warm-corpus), and after a restart; medians over the "
        "runs, ms unless said:"
    )
    print(
        "  warm_seconds  runs  start s  steady p50  1st after approval  2nd-10th p50  "
        "restart s  1st after restart  2nd-10th p50"
    )

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    for warm_seconds, results in runs.items():
        approved = [r["after_approval"] for r in results if "after_approval" in r]
        print(
            f"  {warm_seconds:>12}  {len(results):4d}  "
            f"{med([r['start_s'] for r in results]):7.2f}  "
            f"{med([percentile(r['steady'], 50) for r in results]):10.2f}  "
            f"{med([a[0] for a in approved]):18.1f}  "
            f"{med([percentile(a[1:], 50) for a in approved]):12.2f}  "
            f"{med([r['restart_s'] for r in results]):9.2f}  "
            f"{med([r['after_restart'][0] for r in results]):17.1f}  "
            f"{med([percentile(r['after_restart'][1:], 50) for r in results]):12.2f}"
        )
        for r in results:
            approval = (
                f"first after approval {r['after_approval'][0]:.1f} ms, "
                if "after_approval" in r
                else ""
            )
            print(
                f"    run: start {r['start_s']:.2f} s, {approval}restart {r['restart_s']:.2f} s, "
                f"first after restart {r['after_restart'][0]:.1f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asks", type=int, default=300, help="requests per concurrency level")
    parser.add_argument("--feedback", type=int, default=3000, help="feedback posts per run")
    parser.add_argument("--rounds", type=int, default=5, help="feedback runs per store")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--parts",
        default="asks,feedback,cycle,warm",
        help="which parts to run, comma-separated: asks (1), feedback (2-3), cycle (4), warm (5)",
    )
    parser.add_argument(
        "--cycle-runs", type=int, default=3, help="cycles per nice value (4), alternating"
    )
    parser.add_argument(
        "--warm-runs", type=int, default=3, help="runs with and without loading ahead (5)"
    )
    parser.add_argument(
        "--warm-corpus",
        type=Path,
        default=None,
        help="(5) measure restarts only, on this corpus (e.g. a BEIR folder) instead of an "
        "approval on the sample corpus",
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"asks", "feedback", "cycle", "warm"}:
        parser.error("--parts takes asks, feedback, cycle and warm, comma-separated")

    work = Path(tempfile.mkdtemp(prefix="rag-loop-bench-"))
    sqlite_dir = work / "sqlite"
    asks: dict[int, dict[str, float]] = {}
    feedback: dict[str, dict[str, float]] = {}
    during: dict[int, list[dict[str, Any]]] = {}
    warm: dict[str, list[dict[str, Any]]] = {}
    try:
        if parts & {"asks", "feedback"}:
            # The first start ingests the sample corpus. Serve from a fresh process, as a
            # long-running server does: right after a bulk ingest, the same process embeds
            # single queries measurably slower (allocator state; seen as +30-50% here).
            Server(sqlite_dir, {}).stop()
            server = Server(sqlite_dir, {})
        if "asks" in parts:
            bare_cost = BareCost(sqlite_dir)
            single, bare, served = asyncio.run(one_client(server, bare_cost, args.asks))
            bare_cost.close()
            asks = {1: single, **bench_asks(server, args.asks)}
        if "feedback" in parts:
            feedback = run_feedback(server, sqlite_dir, work, args)
        if parts & {"asks", "feedback"}:
            server.stop()
        if "cycle" in parts:
            # the same cycle, each time on a new copy of the sample corpus, alternating: its
            # thread at the process's own priority, and at the default `background_nice`
            for run in range(args.cycle_runs):
                for nice in (0, QueueSettings().background_nice):
                    cycle_dir = work / f"cycle-{run}-nice-{nice}"
                    env = {"RAG_LOOP_QUEUE_BACKGROUND_NICE": str(nice)}
                    Server(cycle_dir, env).stop()
                    headers = admin_key(cycle_dir)
                    server = Server(cycle_dir, env)
                    try:
                        during.setdefault(nice, []).append(
                            asyncio.run(asks_during_cycle(server, headers, min(args.asks, 100)))
                        )
                    finally:
                        server.stop()
                    shutil.rmtree(cycle_dir, ignore_errors=True)
        if "warm" in parts:
            cycle_id = prepare_warm(work / "warm", args.warm_corpus)
            default = f"{RetrievalSettings().warm_seconds:g}"
            for run in range(args.warm_runs):
                for warm_seconds in ("0", default):
                    warm.setdefault(warm_seconds, []).append(
                        warm_run(work / "warm", work / f"warm-{run}", cycle_id, warm_seconds)
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {os.cpu_count()} cores; `rag-loop serve` (1 process unless said); aiohttp")
    if asks:
        print(f"bare cost (embed_query + Chroma query, in-process, median): {bare:.2f} ms")
        print(
            "  the same two steps as timed inside the server during the 1-client run: "
            f"{served:.2f} ms"
        )
        print("/v1/ask (extractive)   clients   p50 ms   p95 ms   p99 ms   req/s")
        for concurrency, r in asks.items():
            print(
                f"{'':23}{concurrency:7d} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} "
                f"{r['p99_ms']:8.2f} {r['req_per_s']:7.1f}"
            )
        print(
            f"ratio ask p50 (1 client) / bare cost: {asks[1]['p50_ms'] / bare:.3f}  (target <= 1.3)"
        )
        print(
            "  each ask over the bare cost measured just before it: median "
            f"{asks[1]['pair_ratio_p50']:.2f} (p25 {asks[1]['pair_ratio_p25']:.2f}, "
            f"p75 {asks[1]['pair_ratio_p75']:.2f})"
        )
    for store, r in feedback.items():
        print(
            f"/v1/feedback on {store:20s} 32 clients: {r['writes_per_s']:7.1f} writes/s "
            f"(median of {args.rounds} runs; {r['min_per_s']:.0f}-{r['max_per_s']:.0f}), "
            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms; accepted {r['accepted']}, "
            f"rows {r['rows']}, lost {r['lost']}, errors {r['errors']}"
        )
    for nice, cycles in during.items():
        print(
            f"/v1/ask at 1 client around a loop cycle in the same process, its thread at nice "
            f"{nice}; {len(cycles)} cycles, the asks of all of them:"
        )
        for cycle in cycles:
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in cycle["stages"].items())
            print(f"  cycle {cycle['state']}: {stages}")
        pooled: dict[str, list[float]] = {}
        for cycle in cycles:
            for when, values in cycle["latencies"].items():
                pooled.setdefault(when, []).extend(values)
        order = ["before", *ACTIVE, "after"]
        print("  when                   asks   p50 ms   p95 ms")
        for when in sorted(pooled, key=order.index):
            v = pooled[when]
            print(f"  {when:22s} {len(v):5d} {percentile(v, 50):8.2f} {percentile(v, 95):8.2f}")
    if warm:
        print_warm(warm)


def run_feedback(
    server: Server, sqlite_dir: Path, work: Path, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Part 2-3: feedback writes on SQLite (this server), SQLite behind 2 processes, and
    PostgreSQL."""

    def sqlite_rows() -> int:
        import sqlite3

        with sqlite3.connect(sqlite_dir / "rag_loop.db") as conn:
            return int(conn.execute("SELECT count(*) FROM feedback_submissions").fetchone()[0])

    feedback = {"sqlite": bench_feedback(server, args.feedback, sqlite_rows, args.rounds)}

    # SQLite behind 2 API processes (`rag-loop serve --workers 2`); several processes
    # need Chroma as a server, so this one has its own data dir and a `chroma run`
    chroma = ChromaServer(work / "chroma")
    two_dir = work / "sqlite-2-processes"

    def two_rows() -> int:
        import sqlite3

        with sqlite3.connect(two_dir / "rag_loop.db") as conn:
            return int(conn.execute("SELECT count(*) FROM feedback_submissions").fetchone()[0])

    try:
        env = {"RAG_LOOP_CHROMA_HOST": "127.0.0.1", "RAG_LOOP_CHROMA_PORT": str(chroma.port)}
        Server(two_dir, env).stop()  # ingests into the Chroma server
        two = Server(two_dir, env, ("--workers", "2"))
        feedback["sqlite, 2 processes"] = bench_feedback(two, args.feedback, two_rows, args.rounds)
        two.stop()
    finally:
        chroma.stop()

    if not args.no_postgres:
        name = f"rag_loop_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        try:
            pg = Server(work / "pg", {"RAG_LOOP_DATABASE_URL": url})

            def pg_rows() -> int:
                dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
                with psycopg.connect(dsn) as conn:
                    row = conn.execute("SELECT count(*) FROM feedback_submissions").fetchone()
                    return int(row[0]) if row else 0

            feedback["postgres"] = bench_feedback(pg, args.feedback, pg_rows, args.rounds)
            pg.stop()
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return feedback


if __name__ == "__main__":
    main()
