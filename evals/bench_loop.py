"""The loop benchmark: does feedback make retrieval better, on any domain, and how fast?

Through the real service code, with the service's default settings unchanged (hybrid
retrieval, query-side training that picks its own epochs and fusion weight on validation
feedback, document expansion with the questions users confirmed and, by query association,
with those nobody rated, the default gate), on
data read by path from ../shared/datasets (nothing of it committed):

- scifact: BEIR SciFact, 5,183 abstracts; the train split's 809 claims are replayed as
  user asks, the test split's 300 are scored;
- pubmedqa: PubMedQA-L as a retrieval set: every question against all 3,358 passages, a
  question's own passages being its relevant ones; the 500 questions of the official
  train/dev pool are replayed, the 500 of the official test split are scored;
- any other folder in the BEIR layout (corpus.jsonl, queries.jsonl, qrels/test.tsv, and
  qrels/train.tsv or qrels/dev.tsv to replay; without either, half the test questions,
  chosen by a hash of their id, are replayed and the other half scored). Scored by BEIR's
  rules: nDCG on the qrels' grades where they grade relevance, and a question that is a
  document of the corpus too (ArguAna, Quora) does not rank itself.

For each seed: the corpus is ingested once per data set (the base model builds the first
index; later seeds start from a copy), the replayed questions are asked in `--batches`
seeded batches, a seeded simulated user (`--user`, rag_loop/feedback/simulated.py) sends
feedback after each answer through the real feedback service, and a full loop cycle runs
after each batch. The test questions, never seen by the loop, are scored on the serving
index for the base (dense only and hybrid) and after every cycle: nDCG@10, Recall@10,
Recall@100, MRR@10, and the learned gain (nDCG@10 over the hybrid base, the best
configuration that learns nothing), with every stage's wall time and peak memory.

The gate sees no golden set by default. `--golden N` sets N replayed questions aside, by a
hash of their id, as the operator's golden set (labelled, never asked): the gate then
judges on it when the held-out feedback has too few questions with room, as it does under
sparse feedback, and a cycle that splits it validates its choices on its tuning part and
is judged on the rest (`loop.golden_tuning_share`, README).

    python evals/bench_loop.py [--dataset scifact|pubmedqa|PATH] [--user generous|realistic]
                               [--seeds 0,1,2] [--batches 3] [--golden N]
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
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

DATASETS = ROOT.parent / "shared" / "datasets"


@dataclass
class Domain:
    name: str
    corpus: Path  # what `ingest` reads
    queries: dict[str, str]
    replay: dict[str, set[str]]  # query id -> relevant document ids, asked by the user
    test: dict[str, set[str]]  # scored only
    # query id -> relevant document id -> its grade, where the qrels grade relevance (BEIR's
    # TREC-COVID, NFCorpus...): nDCG is scored on the grades; without, every grade is 1
    grades: dict[str, dict[str, int]] = field(default_factory=dict)

    def references(self) -> dict[str, dict[str, int]]:
        """What the test questions are scored against: each relevant document's grade."""
        return {q: self.grades.get(q) or dict.fromkeys(d, 1) for q, d in self.test.items()}


def read_graded(path: Path) -> dict[str, dict[str, int]]:
    """A BEIR qrels file: query id -> document id -> grade, the relevant ones (grade > 0)."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            grade = int(float(row["score"]))
            if grade > 0:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = grade
    return qrels


def read_qrels(path: Path) -> dict[str, set[str]]:
    return {q: set(graded) for q, graded in read_graded(path).items()}


def beir(folder: Path) -> Domain:
    """A folder in the BEIR layout: the train split's questions are replayed, the test
    split's scored. Many BEIR sets have no train split: then the dev split is replayed, and
    without that, the test questions are split in two by a hash of their id, half
    replayed and half scored. Either way no scored question, by id or by text, is asked."""
    for needed in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        if not (folder / needed).is_file():
            raise SystemExit(f"{folder} is not a BEIR folder: {needed} is missing")
    queries = {}
    with (folder / "queries.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            queries[str(row["_id"])] = row["text"]
    grades = read_graded(folder / "qrels/test.tsv")
    test = {q: set(graded) for q, graded in grades.items()}
    split = next((s for s in ("train", "dev") if (folder / f"qrels/{s}.tsv").is_file()), None)
    if split is not None:
        replay = read_qrels(folder / f"qrels/{split}.tsv")
    else:
        halves: tuple[dict[str, set[str]], dict[str, set[str]]] = ({}, {})
        for query_id, relevant in test.items():
            halves[hashlib.sha256(query_id.encode()).digest()[0] % 2][query_id] = relevant
        replay, test = halves
    scored = {_normalised(queries.get(q, "")) for q in test}
    replay = {
        q: relevant
        for q, relevant in replay.items()
        if q in queries and q not in test and _normalised(queries[q]) not in scored
    }
    test = {q: relevant for q, relevant in test.items() if q in queries}
    return Domain(folder.name, folder, queries, replay, test, {q: grades[q] for q in test})


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def pubmedqa(folder: Path, scratch: Path) -> Domain:
    """PubMedQA-L as a retrieval set; its passages are written as a corpus under `scratch`."""
    data = json.loads((folder / "ori_pqal.json").read_text())
    test_ids = set(json.loads((folder / "test_ground_truth.json").read_text()))
    corpus = scratch / "pubmedqa-corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    queries: dict[str, str] = {}
    replay: dict[str, set[str]] = {}
    test: dict[str, set[str]] = {}
    with (corpus / "corpus.jsonl").open("w") as out:
        for pmid, item in sorted(data.items()):
            ids = set()
            for n, context in enumerate(item["CONTEXTS"]):
                doc_id = f"{pmid}-{n}"
                ids.add(doc_id)
                out.write(json.dumps({"_id": doc_id, "title": "", "text": context}) + "\n")
            queries[pmid] = item["QUESTION"]
            (test if pmid in test_ids else replay)[pmid] = ids
    return Domain("pubmedqa", corpus, queries, replay, test)


def load_domain(name: str, scratch: Path) -> Domain:
    if name == "pubmedqa":
        return pubmedqa(DATASETS / "pubmedqa", scratch)
    if name == "scifact":
        return beir(DATASETS / "scifact")
    return beir(Path(name))


def add_title_queries(domain: Domain, n: int) -> None:
    """Replay `n` seeded document titles as questions, each relevant to its own document:
    feedback volume for timing a cycle, never a test question."""
    titles: dict[str, str] = {}
    with (domain.corpus / "corpus.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("title"):
                titles[str(row["_id"])] = row["title"]
    tested = {q.strip().lower() for q in (domain.queries[i] for i in domain.test)}
    picked = [d for d in sorted(titles) if titles[d].strip().lower() not in tested]
    random.Random(0).shuffle(picked)
    if len(picked) < n:
        raise SystemExit(f"{domain.name} has {len(picked)} titles to replay, not {n}")
    for doc_id in picked[:n]:
        domain.queries[f"title-{doc_id}"] = titles[doc_id]
        domain.replay[f"title-{doc_id}"] = {doc_id}


def ranked_documents(document_ids: Iterable[str], question_id: str) -> list[str]:
    """A chunk ranking as the documents it ranks, each once, best first, without the
    question's own id: BEIR's `ignore_identical_ids`, for sets whose questions are documents
    of the corpus too (ArguAna, Quora), where finding the question itself is no answer."""
    return [d for d in dict.fromkeys(document_ids) if d != question_id]


def test_metrics(
    services: Services,
    domain: Domain,
    config: RetrievalConfig | None = None,
) -> dict[str, float]:
    """nDCG@10, Recall@10, MRR@10 and Recall@100 of the serving index, document level,
    retrieved the way the serving version retrieves (or with `config`), by BEIR's rules:
    nDCG on the qrels' grades where they grade relevance, and a document whose id is the
    question's own id is not ranked (BEIR's `ignore_identical_ids`: in ArguAna or Quora a
    question is itself a document of the corpus).

    The metrics at 10 rank what an ask for 10 chunks is served: a hybrid version pools each
    side's top max(k, `candidates`) before fusing, so a deeper search ranks its top 10
    differently. Recall@100 comes from a search for 100. (Before 2026-12-05 every metric
    came from one search for 200, which put the hybrid base 0.003 below what SciFact's
    test claims are served: README.)"""
    index = serving_index(services.engine)
    config = config or index.retrieval
    embedder = services.embedders.get(index.embedder_version)
    ids = sorted(domain.test)
    texts = [domain.queries[i] for i in ids]
    vectors = embedder.embed_queries(texts)
    rankings: dict[int, dict[str, list[str]]] = {10: {}, 100: {}}
    for qid, text, vector in zip(ids, texts, vectors, strict=True):
        for k, ranking in rankings.items():
            hits = search(
                services.store, services.lexical, index, config, text, vector, k, embedder
            )
            ranking[qid] = ranked_documents((h.document_id for h in hits), qid)
    refs = domain.references()
    at10 = ranking_metrics(rankings[10], refs, 10)
    at100 = ranking_metrics(rankings[100], refs, 100)
    n = len(ids)
    return {
        "ndcg_at_10": sum(v["ndcg_at_10"] for v in at10.values()) / n,
        "recall_at_10": sum(v["recall_at_10"] for v in at10.values()) / n,
        "recall_at_100": sum(v["recall_at_100"] for v in at100.values()) / n,
        "mrr_at_10": sum(v["mrr_at_10"] for v in at10.values()) / n,
    }


class Stages:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, fn: Any) -> Any:
        started = time.perf_counter()
        with PeakMemory() as peak:
            value = fn()
        self.rows.append(
            {"stage": name, "seconds": round(time.perf_counter() - started, 1), "peak_mb": peak.mb}
        )
        print(f"  {name}: {self.rows[-1]['seconds']} s, peak {peak.mb:.0f} MB", flush=True)
        return value


def set_golden_aside(domain: Domain, n: int, path: Path) -> None:
    """The operator's golden set: `n` of the replayed questions, chosen by a hash of their
    id (the same for every seed), written as a golden set with their relevant documents and
    never asked. The test split stays the benchmark's: no scored question is in it."""
    if n > len(domain.replay) // 2:
        raise SystemExit(f"--golden {n}: {domain.name} replays {len(domain.replay)} questions")
    chosen = sorted(domain.replay, key=lambda q: hashlib.sha256(q.encode()).hexdigest())[:n]
    lines = [
        json.dumps(
            {"id": q, "question": domain.queries[q], "document_ids": sorted(domain.replay.pop(q))}
        )
        for q in sorted(chosen)
    ]
    path.write_text("".join(line + "\n" for line in lines))


def settings_for(data_dir: Path, args: argparse.Namespace) -> Settings:
    """The service's defaults; only where the data lives and the golden sets differ: none
    (the sample corpus's is of no use here, and the test split is the benchmark's, never the
    loop's), or with `--golden` the operator's, made of replayed questions."""
    return Settings(
        data_dir=data_dir,
        corpus_path=None,
        chunking={"chunk_size": args.chunk_size, "chunk_overlap": 0},
        retrieval={"top_k": args.shown},
        evaluation={"golden_sets": [str(args.golden_path)] if args.golden else []},
    )


def probe_services(work: Path, name: str) -> Services:
    """The service's defaults over a fresh copy of the corpus this benchmark ingested into
    `work` (its `--work`), in `work/name`, for an offline probe that must leave the
    ingested copy as it is; no golden set."""
    data_dir = work / name
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(work / "ingested", data_dir)
    defaults = argparse.Namespace(chunk_size=4000, shown=10, golden=0)
    return Services.from_settings(settings_for(data_dir, defaults))


def run_seed(
    domain: Domain, template: Path, work: Path, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    data_dir = work / f"seed-{seed}"
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(template, data_dir)
    services = Services.from_settings(settings_for(data_dir, args))
    stages = Stages()
    results: list[dict[str, Any]] = []
    try:
        dense = stages.run("test-eval base, dense", lambda: test_metrics(services, domain, DENSE))
        results.append({"after": "base, dense", **dense})
        base = stages.run("test-eval base, hybrid", lambda: test_metrics(services, domain))
        results.append({"after": "base, hybrid", **base, "learned_gain": 0.0})
        asked = sorted(domain.replay)
        random.Random(seed).shuffle(asked)
        if args.limit:
            asked = asked[: args.limit]
        batches = [asked[i :: args.batches] for i in range(args.batches)]
        user = SimulatedUser.preset(args.user, seed)
        for n, batch in enumerate(batches, start=1):

            def replay(batch: list[str] = batch) -> None:
                for qid in batch:
                    answer = ask(services, domain.queries[qid], client="bench")
                    feedback = user.feedback(
                        answer.interaction_id,
                        answer.feedback_token,
                        answer.sources,
                        domain.replay[qid],
                        answer.cited_ranks,
                    )
                    if feedback is not None:
                        submit_feedback(services, feedback, actor="simulated-user")

            stages.run(f"batch {n}: asks + feedback", replay)
            started = time.perf_counter()
            with PeakMemory() as peak:
                view = run_cycle(services, start_cycle(services, trigger="benchmark"))
            cycle_seconds = time.perf_counter() - started
            cycle_stages = {
                name: figures["seconds"]
                for name, figures in view["stages"].items()
                if isinstance(figures, dict)
            }
            recipe = view.get("recipe") or {}
            metrics = stages.run(
                f"test-eval after cycle {n}", lambda: test_metrics(services, domain)
            )
            results.append(
                {
                    "after": f"cycle {n}",
                    "state": view["state"],
                    "feedback_queries": len({q for b in batches[:n] for q in b}),
                    "examples": (view["training_set"] or {}).get("n_examples"),
                    "heldout_queries": (view["training_set"] or {}).get("n_heldout"),
                    "gate_delta": (view["gate"].get("deltas") or {}).get("primary"),
                    "gate_p_value": view["gate"].get("primary_p_value"),
                    "gate_room": view["gate"].get("primary_room"),
                    "gate_on": view["gate"].get("primary_kind"),
                    "gate_questions": sum((view["gate"].get("primary_questions") or {}).values()),
                    "recipe": {k: v for k, v in recipe.items() if k != "validation"},
                    "cycle_seconds": round(cycle_seconds, 1),
                    "cycle_stages": cycle_stages,
                    "cycle_peak_mb": round(peak.mb),
                    **metrics,
                    "learned_gain": metrics["ndcg_at_10"] - base["ndcg_at_10"],
                }
            )
            print(
                f"  cycle {n}: {view['state']} in {cycle_seconds:.0f} s; recipe "
                f"{ {k: recipe.get(k) for k in ('encoder', 'best_epoch', 'dense_weight')} }; "
                f"gate {_gate(results[-1])}; {view['error'] or ''}",
                flush=True,
            )
            print(json.dumps(results[-1]), flush=True)
    finally:
        services.close()
    return {"seed": seed, "simulated_user": user.counts, "results": results, "stages": stages.rows}


def table(runs: list[dict[str, Any]]) -> str:
    """One row per step, the seeds' figures side by side and their mean."""
    lines = [
        "| after | state (per seed) | nDCG@10 | Recall@10 | Recall@100 | MRR@10 "
        "| learned gain (per seed) | gate delta, p, room (per seed) | cycle s (per seed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for step in range(len(runs[0]["results"])):
        rows = [run["results"][step] for run in runs]

        def mean(key: str, rows: list[dict[str, Any]] = rows) -> str:
            return f"{sum(r[key] for r in rows) / len(rows):.3f}"

        gains = " / ".join(f"{r['learned_gain']:+.3f}" for r in rows if "learned_gain" in r)
        gates = " / ".join(_gate(r) for r in rows if "state" in r)
        lines.append(
            f"| {rows[0]['after']} | {' / '.join(r.get('state', '-') for r in rows)} "
            f"| {mean('ndcg_at_10')} | {mean('recall_at_10')} | {mean('recall_at_100')} "
            f"| {mean('mrr_at_10')} | {gains} | {gates} "
            f"| {' / '.join(str(r.get('cycle_seconds', '-')) for r in rows)} |"
        )
    return "\n".join(lines)


def _gate(row: dict[str, Any]) -> str:
    p_value, room = row.get("gate_p_value"), row.get("gate_room")
    if row.get("gate_delta") is None:  # ended before a candidate: the champion's room only
        return "-" if room is None else f"no candidate, room {room}/{row.get('heldout_queries')}"
    return (
        f"{row['gate_delta']:+.3f}"
        + (" on golden" if row.get("gate_on") == "golden" else "")
        + (f", p {p_value:.3f}" if p_value is not None else "")
        + (f", room {room}/{row.get('gate_questions')}" if room is not None else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        default="scifact",
        help="scifact, pubmedqa or a BEIR folder (scored by BEIR's rules: nDCG on graded "
        "qrels, a question never ranks itself)",
    )
    parser.add_argument("--user", choices=["generous", "realistic"], default="generous")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--batches", type=int, default=3, help="ask batches = loop cycles")
    parser.add_argument("--shown", type=int, default=10, help="chunks shown per answer")
    parser.add_argument("--chunk-size", type=int, default=4000, help="one chunk per abstract")
    parser.add_argument("--limit", type=int, default=None, help="replay the first N questions")
    parser.add_argument(
        "--title-queries",
        type=int,
        default=0,
        help="also replay N document titles as questions (their own document relevant): "
        "more feedback queries for timing a cycle (BEIR folders with titles)",
    )
    parser.add_argument(
        "--golden",
        type=int,
        default=0,
        help="set N replayed questions aside as the operator's golden set (never asked): the "
        "gate judges on it when the held-out feedback has too few questions with room (on "
        "its judged part when a cycle splits it: loop.golden_tuning_share)",
    )
    parser.add_argument("--work", type=Path, default=None, help="keep the data dirs here")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    work = args.work or Path(tempfile.mkdtemp(prefix="rag-loop-bench-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    lock = (work / ".bench-loop.lock").open("w")  # held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(
            f"another bench_loop run is using {work} (its seed folders would be replaced under "
            "it); give this one its own --work"
        ) from None
    domain = load_domain(args.dataset, work)
    if args.title_queries:
        add_title_queries(domain, args.title_queries)
    args.golden_path = (work / "golden.jsonl").resolve()
    if args.golden:
        set_golden_aside(domain, args.golden, args.golden_path)
    print(
        f"{domain.name}: {len(domain.replay)} replayed, {args.golden} golden and "
        f"{len(domain.test)} test questions; "
        f"{args.user} user; seeds {seeds}; data in {work}",
        flush=True,
    )
    template = work / "ingested"
    ingest_stages = Stages()
    if not (template / "ingested.ok").exists():
        shutil.rmtree(template, ignore_errors=True)
        services = Services.from_settings(settings_for(template, args))
        try:
            ingest_stages.run("ingest", lambda: ingest(services, domain.corpus))
        finally:
            services.close()
        (template / "ingested.ok").write_text("")
    runs = []
    with PeakMemory() as peak:
        for seed in seeds:
            print(f"seed {seed}", flush=True)
            runs.append(run_seed(domain, template, work, seed, args))
    report = {
        "dataset": domain.name,
        "user": args.user,
        "seeds": seeds,
        "args": {k: str(v) for k, v in vars(args).items()},
        "settings": settings_for(work, args).model_dump(
            mode="json", include={"retrieval", "training", "loop"}
        ),
        "ingest": ingest_stages.rows,
        "peak_mb": round(peak.mb),
        "runs": runs,
    }
    out = args.out or ROOT / f"evals/results/loop-{domain.name}-{args.user}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\n{domain.name}, {args.user} user, seeds {seeds} (mean; per seed where marked)\n")
    print(table(runs))
    print(f"\npeak RSS {peak.mb:.0f} MB; written to {out}")


if __name__ == "__main__":
    main()
