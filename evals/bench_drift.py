"""The drift checks alone, on many seeded streams: how often a steady stream raises a false
alarm in 30 days, and how soon an abrupt and a gradual shift are raised.

The streams are the timeline benchmark's (evals/bench_timeline.py: PubMedQA-L questions,
half SciFact claims from day 10, a topic cluster's share rising to 60% over days 18-25;
400 questions a day). Each stream's questions are written as answered interactions, stamped
by a simulated clock, into a fresh SQLite database, and the real `check_drift` runs on them
every 6 simulated hours, as the evaluation schedule would. No answers and no feedback: this
measures the question-embedding check (the thumbs check needs thumbs and is skipped). The
embedder is the service's model behind a cache by text (each distinct question is embedded
once for all streams).

    python evals/bench_drift.py [--steady 40] [--shifted 6] [--reference-windows 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.bench_timeline import START, make_stream, prepare_data, with_clusters  # noqa: E402


class CachedEmbedder:
    """The service's embedder, remembering each text's vector (an Embedder itself)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.version, self.dimension = inner.name, inner.version, inner.dimension
        self.vectors: dict[str, np.ndarray] = {}

    def embed_documents(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        if missing:
            for text, vector in zip(missing, self.inner.embed_documents(missing), strict=True):
                self.vectors[text] = vector
        return np.vstack([self.vectors[t] for t in texts])

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.embed_documents(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def replay(
    questions: list[Any], stream: Any, embedder: Any, days: int, drift: dict[str, Any]
) -> list[float]:
    """The hours at which drift events were raised."""
    from sqlalchemy import select

    from rag_loop.clock import SimulatedClock
    from rag_loop.db.engine import insert_rows
    from rag_loop.db.models import Event, Interaction, time_ordered_id
    from rag_loop.evaluation.drift import check_drift
    from rag_loop.services import Services
    from rag_loop.settings import Settings

    with tempfile.TemporaryDirectory(prefix="rag-loop-bench-drift-") as data:
        clock = SimulatedClock(START)
        settings = Settings(data_dir=Path(data), corpus_path=None, drift=drift)
        services = Services.from_settings(settings, embedder=embedder, clock=clock)
        try:
            asks, next_ask = stream.asks, 0  # in time order
            for hour in range(6, days * 24 + 1, 6):  # the questions of 6 hours, a check
                due = START + timedelta(hours=hour)
                rows = []
                while next_ask < len(asks) and asks[next_ask][0] < hour * 3600:
                    at, n, _ = asks[next_ask]
                    rows.append(
                        {
                            "id": time_ordered_id(),
                            "created_at": START + timedelta(seconds=at),
                            "query": questions[n].text,
                            "top_k": 10,
                        }
                    )
                    next_ask += 1
                if rows:
                    insert_rows(services.engine, (Interaction, rows))
                clock.advance_to(due)
                check_drift(services, actor="bench")
            with services.sessions() as session:
                return [
                    round((e.created_at - START).total_seconds() / 3600, 1)
                    for e in session.scalars(select(Event).where(Event.kind == "drift"))
                ]
        finally:
            services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steady", type=int, default=40, help="steady streams (seeds 0..N-1)")
    parser.add_argument("--shifted", type=int, default=6, help="shifted streams")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--reference-windows", type=int, default=None, help="default: the service's"
    )
    parser.add_argument("--work", type=Path, default=None, help="where the corpora are prepared")
    args = parser.parse_args()
    from rag_loop.index.embedders import LazyEmbedder
    from rag_loop.settings import Settings

    work = (args.work or Path(tempfile.mkdtemp(prefix="rag-loop-bench-drift-"))).resolve()
    questions = with_clusters(prepare_data(work))
    embedder = CachedEmbedder(LazyEmbedder(Settings(corpus_path=None).embedder.model))
    drift = {} if args.reference_windows is None else {"reference_windows": args.reference_windows}
    stream_args = argparse.Namespace(
        days=args.days,
        asks_per_day=400,
        shift_day=10,
        shift_share=0.5,
        gradual_from=18,
        gradual_to=25,
        gradual_share=0.6,
        groundedness_share=0.0,
    )
    began = time.perf_counter()
    alarms, detections = 0, []
    for kind, count in (("steady", args.steady), ("shifted", args.shifted)):
        for seed in range(count):
            stream = make_stream(questions, kind, seed, stream_args)
            hours = replay(questions, stream, embedder, args.days, drift)
            print(f"{kind} seed {seed}: drift events at hours {hours}", flush=True)
            if kind == "steady":
                alarms += bool(hours)
            else:
                abrupt = next((h - 240 for h in hours if 240 <= h < 18 * 24), None)
                gradual = next((h - 18 * 24 for h in hours if h >= 18 * 24), None)
                detections.append((abrupt, gradual))
    print(f"\nsteady streams with a false alarm in {args.days} days: {alarms} of {args.steady}")
    for seed, (abrupt, gradual) in enumerate(detections):
        print(f"shifted seed {seed}: abrupt raised after {abrupt} h, gradual after {gradual} h")
    print(f"{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
