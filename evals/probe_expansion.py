"""What could document expansion learn from the questions users ask? An offline probe.

The loop expands a chunk on the BM25 side with the questions users confirmed it answers
(rag_loop.index.expansions). Under sparse feedback few are confirmed. This probe measures,
on the test split (never asked), the hybrid base with its BM25 side expanded in several
ways from the replayed questions (the train split of `--dataset`):

- `confirmed`: what the realistic simulated user confirms (rag_loop/feedback/simulated.py,
  through the real `ask`, so its thumb rates the answer's first citation): the chunk a
  thumb up rated, chunks labelled relevant, a pointer's document;
- `confirmed + served`: besides, every question *without* feedback expands the chunk it
  was served first (query association: an unrated answer is taken as a weak yes); a
  question rated down expands nothing;
- `served`: every question expands its first served chunk, whatever the user said;
- `oracle`: every question expands its relevant documents (the qrels): what expansion
  could reach with complete and correct feedback.

Each is scored with the BM25 side expanded (`test_ndcg_at_10`) and with the dense side too
(`test_ndcg_at_10_dense`: a chunk's cosine the best of the query's with the chunk and with
its questions, as a version with the loop's `dense_expansion` retrieves). As in the loop,
the questions the gate holds out (`training.holdout_share`, by the same hash) expand
nothing. The fusion weight stays the base's. Every scoring also times its searches
(`search_timings`): the first, which builds the BM25 side and, with the dense side, embeds
the questions, as the first ask after a promotion does in each process for a version
stored without their vectors; the median of the rest; and with the dense side, the
questions' embedding (`embed_questions_ms`, what the cycle now pays when it builds the
version) and the first search of an index given them stored (`first_search_stored_ms`).
No training, no gate: this bounds what expansion can add, it does not say the gate could
see it.

    python evals/probe_expansion.py --dataset scifact|pubmedqa --work DIR [--seeds 0,1,2]
    # DIR: bench_loop.py --work (its ingested/ corpus is copied, never changed)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.bench_loop import load_domain, probe_services  # noqa: E402
from rag_loop.evaluation.metrics import ranking_metrics  # noqa: E402
from rag_loop.feedback.simulated import SimulatedUser  # noqa: E402
from rag_loop.index.expansions import Expanded  # noqa: E402
from rag_loop.index.versions import serving_index  # noqa: E402
from rag_loop.interactions.ask import ask  # noqa: E402
from rag_loop.retrieval.lexical import LexicalIndexes  # noqa: E402
from rag_loop.retrieval.search import search  # noqa: E402
from rag_loop.training.dataset import is_heldout, normalise  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="scifact", help="scifact, pubmedqa or a BEIR folder")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args()
    domain = load_domain(args.dataset, args.work)
    services = probe_services(args.work, "probe-expansion")
    settings = services.settings
    share = settings.training.holdout_share
    index = serving_index(services.engine)
    config, embedder = index.retrieval, services.embedders.get(index.embedder_version)
    hits = services.store.hits(index.collection_name)
    chunks_of: dict[str, list[str]] = {}
    for hit in hits:
        chunks_of.setdefault(hit.document_id, []).append(hit.chunk_id)
    test_ids = sorted(domain.test)
    embedded = embedder.embed_queries([domain.queries[q] for q in test_ids])
    vectors = dict(zip(test_ids, embedded, strict=True))
    timings: list[dict[str, Any]] = []

    def test_ndcg(pairs: list[tuple[str, str]], *, dense: bool = False) -> float:
        expanded: dict[str, list[str]] = {}
        for qid, chunk in pairs:
            expanded.setdefault(chunk, []).append(domain.queries[qid])
        lexical = LexicalIndexes(services.store, lambda _collection: Expanded(expanded))
        retrieval = replace(config, dense_expansion=dense)
        ranked: dict[str, list[str]] = {}
        took: list[float] = []
        for q in test_ids:
            started = time.perf_counter()
            hits = search(
                services.store,
                lexical,
                index,
                retrieval,
                domain.queries[q],
                vectors[q],
                10,
                embedder,
            )
            took.append((time.perf_counter() - started) * 1000)
            ranked[q] = [h.document_id for h in hits]
        # the first search builds the BM25 side (and embeds the questions, with the dense
        # side, as for a version stored without their vectors): what the first ask after a
        # promotion pays in every process
        timing: dict[str, Any] = {
            "expansions": len(pairs),
            "dense": dense,
            "first_search_ms": round(took[0], 1),
            "search_p50_ms": round(statistics.median(took[1:]), 2),
        }
        if dense:  # as a version the loop builds now: the vectors stored at indexing time
            started = time.perf_counter()
            keys = [(c, question) for c, questions in expanded.items() for question in questions]
            embedded = embedder.embed_queries([question for _, question in keys]) if keys else []
            stored = dict(zip(keys, embedded, strict=True))
            timing["embed_questions_ms"] = round((time.perf_counter() - started) * 1000, 1)
            built = LexicalIndexes(
                services.store, lambda _c: Expanded(expanded, stored, embedder.version)
            )
            q = test_ids[0]
            started = time.perf_counter()
            search(
                services.store, built, index, retrieval, domain.queries[q], vectors[q], 10, embedder
            )
            timing["first_search_stored_ms"] = round((time.perf_counter() - started) * 1000, 1)
        timings.append(timing)
        per_query = ranking_metrics(ranked, domain.references(), 10)
        return round(sum(m["ndcg_at_10"] for m in per_query.values()) / len(per_query), 4)

    def precision(pairs: list[tuple[str, str]]) -> float | None:
        relevant = {
            q: {c for d in domain.replay[q] for c in chunks_of.get(d, [])} for q, _ in pairs
        }
        return round(sum(c in relevant[q] for q, c in pairs) / len(pairs), 3) if pairs else None

    asked = [
        q for q in sorted(domain.replay) if not is_heldout(normalise(domain.queries[q]), share)
    ]
    answers = {q: ask(services, domain.queries[q], client="probe") for q in asked}
    first = {q: answers[q].sources[0]["chunk_id"] for q in asked if answers[q].sources}
    report: dict[str, Any] = {
        "dataset": domain.name,
        "questions": len(domain.replay),
        "expandable (not held out)": len(asked),
        "test_questions": len(test_ids),
        "base": test_ndcg([]),
        "oracle": None,
        "served": None,
        "seeds": [],
    }
    print(f"{domain.name}: {len(asked)} of {len(domain.replay)} questions expandable", flush=True)
    oracle = [(q, c) for q in asked for d in sorted(domain.replay[q]) for c in chunks_of.get(d, [])]
    report["oracle"] = {
        "pairs": len(oracle),
        "test_ndcg_at_10": test_ndcg(oracle),
        "test_ndcg_at_10_dense": test_ndcg(oracle, dense=True),
    }
    served = sorted(first.items())
    report["served"] = {
        "pairs": len(served),
        "precision": precision(served),
        "test_ndcg_at_10": test_ndcg(served),
        "test_ndcg_at_10_dense": test_ndcg(served, dense=True),
    }
    print(json.dumps({k: report[k] for k in ("base", "oracle", "served")}), flush=True)
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        user = SimulatedUser.realistic(seed)
        order = list(asked)
        random.Random(seed).shuffle(order)
        confirmed: list[tuple[str, str]] = []
        rated_down: set[str] = set()
        rated: set[str] = set()
        for qid in order:
            answer = answers[qid]
            feedback = user.feedback(
                answer.interaction_id,
                answer.feedback_token,
                answer.sources,
                domain.replay[qid],
                answer.cited_ranks,
            )
            if feedback is None:
                continue
            rated.add(qid)
            labelled = [label.chunk_id for label in feedback.chunk_labels if label.relevant]
            if feedback.thumb == "up":
                rank = answer.cited_ranks[0] if answer.cited_ranks else 1
                cited = next((s for s in answer.sources if s.get("rank") == rank), None)
                if cited is not None:
                    labelled.append(cited["chunk_id"])
            else:
                rated_down.add(qid)
            if feedback.source is not None:
                labelled += chunks_of.get(feedback.source.document_id, [])
            confirmed += [(qid, c) for c in dict.fromkeys(labelled)]
        implied = [(q, c) for q, c in served if q not in rated]
        both = confirmed + implied
        row = {
            "seed": seed,
            "rated": len(rated),
            "rated_down": len(rated_down),
            "confirmed": {
                "pairs": len(confirmed),
                "precision": precision(confirmed),
                "test_ndcg_at_10": test_ndcg(confirmed),
                "test_ndcg_at_10_dense": test_ndcg(confirmed, dense=True),
            },
            "confirmed + served": {
                "pairs": len(both),
                "precision": precision(both),
                "test_ndcg_at_10": test_ndcg(both),
                "test_ndcg_at_10_dense": test_ndcg(both, dense=True),
            },
        }
        report["seeds"].append(row)
        print(json.dumps(row), flush=True)
    report["search_timings"] = timings
    services.close()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
