"""The loop benchmark: does feedback make the retriever better, and how fast?

Through the real service code, on a BEIR-layout data set (default ../shared/datasets/scifact,
read by path, nothing of it committed):

1. ingest the corpus (the base model, all-MiniLM-L6-v2, builds the first index);
2. replay the train split's queries as user asks, in `--batches` seeded batches; after each
   ask a seeded simulated user (rag_loop/feedback/simulated.py) sends feedback from the train
   qrels: labels on the first `--label-depth` shown chunks (a share flipped: noise), a
   thumb, and for a share of the misses a pointer to a right document;
3. after each batch, one full loop cycle (training set -> fine-tune -> candidate index ->
   gate on the held-out feedback queries -> promotion or rejection);
4. on the test split's queries only (never seen by the loop): nDCG@10, Recall@10,
   Recall@100 and MRR@10 of the serving index, for the base and after every cycle, with
   wall time and peak memory of every stage.

    python evals/bench_loop.py [--dataset ../shared/datasets/scifact] [--batches 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag_loop.corpus.ingest import ingest  # noqa: E402
from rag_loop.evaluation.metrics import ranking_metrics  # noqa: E402
from rag_loop.feedback.service import submit_feedback  # noqa: E402
from rag_loop.feedback.simulated import SimulatedUser  # noqa: E402
from rag_loop.index.retrieval_config import DENSE, RetrievalConfig  # noqa: E402
from rag_loop.index.versions import serving_index  # noqa: E402
from rag_loop.interactions.ask import ask  # noqa: E402
from rag_loop.loop.cycle import run_cycle, start_cycle  # noqa: E402
from rag_loop.loop.resources import PeakMemory  # noqa: E402
from rag_loop.retrieval.search import search  # noqa: E402
from rag_loop.services import Services  # noqa: E402
from rag_loop.settings import Settings  # noqa: E402


def read_qrels(path: Path) -> dict[str, set[str]]:
    qrels: dict[str, set[str]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if int(row["score"]) > 0:
                qrels.setdefault(row["query-id"], set()).add(row["corpus-id"])
    return qrels


def test_metrics(
    services: Services,
    queries: dict[str, str],
    qrels: dict[str, set[str]],
    config: RetrievalConfig | None = None,
) -> dict[str, float]:
    """nDCG@10, Recall@10, MRR@10 and Recall@100 of the serving index, document level,
    retrieved the way the serving version retrieves (or with `config`)."""
    index = serving_index(services.engine)
    config = config or index.retrieval
    embedder = services.embedders.get(index.embedder_version)
    ids = sorted(qrels)
    vectors = embedder.embed_queries([queries[i] for i in ids])
    rankings = {}
    for qid, vector in zip(ids, vectors, strict=True):
        hits = search(services.store, services.lexical, index, config, queries[qid], vector, 200)
        rankings[qid] = list(dict.fromkeys(h.document_id for h in hits))
    refs = {q: sorted(d) for q, d in qrels.items()}
    at10 = ranking_metrics(rankings, refs, 10)
    at100 = ranking_metrics(rankings, refs, 100)
    n = len(ids)
    return {
        "ndcg_at_10": sum(v["ndcg_at_10"] for v in at10.values()) / n,
        "recall_at_10": sum(v["recall_at_10"] for v in at10.values()) / n,
        "recall_at_100": sum(v["recall_at_100"] for v in at100.values()) / n,
        "mrr_at_10": sum(v["mrr_at_10"] for v in at10.values()) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/datasets/scifact")
    parser.add_argument("--batches", type=int, default=3, help="ask batches = loop cycles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.1, help="share of labels flipped")
    parser.add_argument("--pointer-share", type=float, default=0.5)
    parser.add_argument("--shown", type=int, default=10, help="chunks shown per answer")
    parser.add_argument("--label-depth", type=int, default=3, help="shown chunks labelled")
    parser.add_argument("--chunk-size", type=int, default=4000)
    parser.add_argument(
        "--retrieval",
        choices=["dense", "hybrid"],
        default="hybrid",
        help="how index versions retrieve (RAG_LOOP_RETRIEVAL_MODE)",
    )
    parser.add_argument("--dense-weight", type=float, default=0.5, help="hybrid fusion weight")
    parser.add_argument("--mode", choices=["query", "full"], default="query")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hard-negatives", type=int, default=3)
    parser.add_argument("--init-from", choices=["champion", "base"], default="champion")
    parser.add_argument("--train-limit", type=int, default=None, help="first N train queries")
    parser.add_argument("--work", type=Path, default=None, help="keep the data dir here")
    parser.add_argument("--out", type=Path, default=ROOT / "evals/results/loop.json")
    args = parser.parse_args()

    queries = {}
    with (args.dataset / "queries.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            queries[str(row["_id"])] = row["text"]
    train = read_qrels(args.dataset / "qrels/train.tsv")
    test = read_qrels(args.dataset / "qrels/test.tsv")
    train_ids = sorted(train)
    random.Random(args.seed).shuffle(train_ids)
    if args.train_limit:
        train_ids = train_ids[: args.train_limit]
    batches = [train_ids[i :: args.batches] for i in range(args.batches)]

    work = args.work or Path(tempfile.mkdtemp(prefix="rag-loop-bench-loop-"))
    settings = Settings(
        data_dir=work / "data",
        corpus_path=None,
        chunking={"chunk_size": args.chunk_size, "chunk_overlap": 0},
        retrieval={"top_k": args.shown, "mode": args.retrieval, "dense_weight": args.dense_weight},
        evaluation={"golden_sets": []},  # the gate sees held-out feedback only, never test
        training={
            "mode": args.mode,
            "epochs": args.epochs,
            "hard_negatives": args.hard_negatives,
            "init_from": args.init_from,
            "batch_size": 32,
        },
    )
    services = Services.from_settings(settings)
    stages: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def stage(name: str, fn: Any) -> Any:
        started = time.perf_counter()
        with PeakMemory() as peak:
            value = fn()
        stages.append(
            {"stage": name, "seconds": round(time.perf_counter() - started, 1), "peak_mb": peak.mb}
        )
        print(f"  {name}: {stages[-1]['seconds']} s, peak {peak.mb:.0f} MB", flush=True)
        return value

    print(f"data dir {work}; {len(train_ids)} train queries in {args.batches} batches", flush=True)
    stage("ingest", lambda: ingest(services, args.dataset))
    if args.retrieval == "hybrid":  # what BM25 fusion alone adds, before any feedback
        dense = stage(
            "test-eval base, dense only", lambda: test_metrics(services, queries, test, DENSE)
        )
        results.append({"after": "base, dense only", **dense})
        print(json.dumps(results[-1]), flush=True)
    base = stage("test-eval base", lambda: test_metrics(services, queries, test))
    results.append({"after": f"base ({args.retrieval})", **base})
    print(json.dumps(results[-1]), flush=True)
    user = SimulatedUser(
        seed=args.seed,
        label_noise=args.noise,
        pointer_share=args.pointer_share,
        label_depth=args.label_depth,
    )

    for n, batch in enumerate(batches, start=1):

        def replay(batch: list[str] = batch) -> None:
            for qid in batch:
                answer = ask(services, queries[qid], client="bench")
                submit_feedback(
                    services,
                    user.feedback(
                        answer.interaction_id, answer.feedback_token, answer.sources, train[qid]
                    ),
                    actor="simulated-user",
                )

        stage(f"batch {n}: asks + feedback", replay)
        cycle_id = start_cycle(services, trigger="benchmark")
        started = time.perf_counter()
        view = run_cycle(services, cycle_id)
        cycle_seconds = time.perf_counter() - started
        for name, figures in view["stages"].items():
            if isinstance(figures, dict):
                stages.append(
                    {
                        "stage": f"cycle {n}: {name}",
                        "seconds": figures["seconds"],
                        "peak_mb": figures["peak_rss_mb"],
                    }
                )
        print(
            f"  cycle {n}: {view['state']} in {cycle_seconds:.0f} s; gate "
            f"{view['gate'].get('deltas')}; {view['error'] or ''}",
            flush=True,
        )
        metrics = stage(f"test-eval after cycle {n}", lambda: test_metrics(services, queries, test))
        if args.retrieval == "hybrid":  # the serving embedder's own share, without BM25
            dense = test_metrics(services, queries, test, DENSE)
            metrics["dense_only_ndcg_at_10"] = dense["ndcg_at_10"]
        results.append(
            {
                "after": f"cycle {n}",
                "state": view["state"],
                "cycle_seconds": round(cycle_seconds, 1),
                "examples": (view["training_set"] or {}).get("n_examples"),
                **metrics,
            }
        )
        print(json.dumps(results[-1]), flush=True)

    report = {
        "dataset": str(args.dataset),
        "args": {k: str(v) for k, v in vars(args).items()},
        "simulated_user": user.counts,
        "results": results,
        "stages": stages,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(
        "\n| after | state | nDCG@10 | Recall@10 | Recall@100 | MRR@10 | cycle s "
        "| nDCG@10 of its embedder, dense only |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        dense_only = r.get("dense_only_ndcg_at_10")
        print(
            f"| {r['after']} | {r.get('state', '')} | {r['ndcg_at_10']:.3f} | "
            f"{r['recall_at_10']:.3f} | {r['recall_at_100']:.3f} | {r['mrr_at_10']:.3f} | "
            f"{r.get('cycle_seconds', '')} | {'' if dense_only is None else f'{dense_only:.3f}'} |"
        )
    print(f"\nwritten to {args.out}")
    services.close()


if __name__ == "__main__":
    main()
