"""The timeline benchmark: a silent model, alerting alone and the closed loop, on one
production stream with drift, through the real service on a simulated clock.

A seeded stream of questions is replayed as simulated days (`--asks-per-day` for `--days`),
each ask through `ask`, each answer judged by the realistic simulated user
(rag_loop/feedback/simulated.py) through the real feedback service. The service runs on a
`SimulatedClock` (rag_loop/clock.py): every record, the drift windows, the loop's triggers,
the rollback watch and the report's trends read it. The schedule the settings ask for
(`rag_loop.scheduler.scheduled_jobs`: the evaluation round with its drift checks, the loop's
tick, the outbox, the job sweep) fires on that clock by the same APScheduler triggers; a job
due several times between two asks runs once, at its latest firing (nothing it reads
changes between asks; APScheduler coalesces missed runs the same way). While a job, an
ingest or a loop cycle runs, the simulated clock moves with wall time, so a cycle's minutes
of training pass in the simulation too (the asks due meanwhile are answered after it).

Data, read by path from ../shared/datasets or `--datasets` (nothing of it committed):
- before day `--shift-day`: PubMedQA-L's 1,000 questions, each relevant to its own passages,
  against a corpus of all 3,358 PubMedQA-L passages and the SciFact abstracts no SciFact
  claim is about (distractors from the next domain);
- the abrupt shift: at the start of day `--shift-day` the SciFact abstracts that the 1,109
  SciFact claims (train and test qrels) are about are ingested, and from then on
  `--shift-share` of the questions are those claims;
- the gradual shift: over days `--gradual-from` to `--gradual-to` the mix moves towards one
  topic cluster (k-means, k=6, of the questions' embeddings, picked by the seed) until
  `--gradual-share` of the asks come from it;
- a steady stream: PubMedQA-L alone, no shift, for the false-alarm check.

No golden set by default: the service sees only the stream and its feedback. `--golden N`
sets N of the new documents' claims aside (by a hash of their id, the same in every seed
and stream) as the operator's golden set, never asked and configured in every arm, as an
operator who ingests a new batch would label questions about it: the closed loop's gate
judges on it (on its judged part when a cycle splits it, `loop.golden_tuning_share`), as
`bench_loop.py --golden` does. Before the shift none of its documents is in the corpus, so
it gives no gate room until they are.

Arms, each on its own copy of the ingested corpus and the same stream:
- silent: no evaluation schedule, no loop;
- alerting: the evaluation round (production window and drift checks) on
  `--evaluation-schedule`, no loop;
- closed: the same schedule and every loop default (auto, triggers, gate, rollback watch).
The steady stream runs the alerting and closed arms.

Measured against the questions' relevance labels, which the service never sees: daily
nDCG@10 and Recall@10 of what was served, the thumbs-down rate, the groundedness proxy (on a
seeded tenth of the answers, `--groundedness-share`) and, when a judge is configured
(`RAG_LOOP_JUDGE_*`, as for the service: its evaluation rounds use it too), the judge's
faithfulness of the same answers to the passages they were given, by the service's own
Ragas call; a judge call that fails is counted, never scored. Per shift and arm: time to detect
(hours from the shift to the first drift event), time to intervene (to the first promotion
after it), degradation before intervention (the largest relative drop of daily nDCG@10 below
the 5 days before the shift, until the intervention, or the next shift or the end without
one), time to recover (from the shift to the end of the first day back within 2% of that
level after a day below it; 0 when no day fell below) and the area between
the curve and that level (nDCG x days). Written: a JSON file with everything, a PNG plot
and the table, printed.

    python evals/bench_timeline.py [--seeds 0,1,2] [--days 30] [--asks-per-day 400]
                                   [--arms silent,alerting,closed] [--streams shifted,steady]
                                   [--golden N] [--jobs 2] [--work DIR] [--out FILE]
                                   [--analyse]
                                   [--datasets DIR]

`--arms` and `--streams` pick some of the runs (the steady stream runs only the alerting
and closed arms); with the same `--work`, a later `--analyse` puts them together.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.bench_loop import read_qrels  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
START = datetime(2027, 1, 4, tzinfo=UTC)  # a Monday, after any wall time the template has
ARMS = ("silent", "alerting", "closed")
STEADY_ARMS = ("alerting", "closed")
CLUSTERS = 6
DAY = 86_400.0


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    relevant: frozenset[str]
    pool: str  # "pubmedqa" (before the shift) or "scifact" (the new documents)
    test: bool = False  # scored offline on the serving index, never asked
    cluster: int = -1


# -- data ------------------------------------------------------------------------------


def prepare_data(work: Path, datasets: Path = DATASETS) -> list[Question]:
    """The questions, and the two corpora as BEIR folders: `corpus/base` (ingested before
    the stream) and `corpus/new` (ingested at the abrupt shift). `datasets` holds the
    `scifact` and `pubmedqa` folders."""
    scifact, pubmed = datasets / "scifact", datasets / "pubmedqa"
    queries = {}
    with (scifact / "queries.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            queries[str(row["_id"])] = row["text"]
    train, test = read_qrels(scifact / "qrels/train.tsv"), read_qrels(scifact / "qrels/test.tsv")
    questions = [
        Question(f"scifact-{q}", queries[q], frozenset(docs), "scifact", q in test)
        for q, docs in sorted({**train, **test}.items())
    ]
    claimed = {d for docs in [*train.values(), *test.values()] for d in docs}
    base, new = work / "corpus" / "base", work / "corpus" / "new"
    if not (work / "corpus" / "ok").exists():
        base.mkdir(parents=True, exist_ok=True)
        new.mkdir(parents=True, exist_ok=True)
        with (
            (base / "corpus.jsonl").open("w") as base_out,
            (new / "corpus.jsonl").open("w") as new_out,
            (scifact / "corpus.jsonl").open() as source,
        ):
            for line in source:
                row = json.loads(line)
                (new_out if str(row["_id"]) in claimed else base_out).write(line)
            for pmid, item in sorted(json.loads((pubmed / "ori_pqal.json").read_text()).items()):
                for n, context in enumerate(item["CONTEXTS"]):
                    doc = {"_id": f"{pmid}-{n}", "title": "", "text": context}
                    base_out.write(json.dumps(doc) + "\n")
        (work / "corpus" / "ok").write_text("")
    tested = set(json.loads((pubmed / "test_ground_truth.json").read_text()))
    for pmid, item in sorted(json.loads((pubmed / "ori_pqal.json").read_text()).items()):
        ids = frozenset(f"{pmid}-{n}" for n in range(len(item["CONTEXTS"])))
        questions.append(
            Question(f"pubmedqa-{pmid}", item["QUESTION"], ids, "pubmedqa", pmid in tested)
        )
    return questions


def golden_aside(questions: list[Question], n: int) -> list[Question]:
    """The operator's golden set: `n` of the new documents' asked claims, chosen by a hash
    of their id (the same for every seed and stream), labelled and never asked."""
    pool = [q for q in questions if q.pool == "scifact" and not q.test]
    if n > len(pool) // 2:
        raise SystemExit(f"--golden {n}: the new documents have {len(pool)} asked claims")
    return sorted(pool, key=lambda q: hashlib.sha256(q.id.encode()).hexdigest())[:n]


def write_golden(work: Path, questions: list[Question], n: int) -> Path:
    """The golden set as the service reads one (id, question, document_ids), in `work`."""
    path = work / f"golden-{n}.jsonl"
    lines = [
        json.dumps({"id": q.id, "question": q.text, "document_ids": sorted(q.relevant)})
        for q in sorted(golden_aside(questions, n), key=lambda q: q.id)
    ]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def with_clusters(questions: list[Question], seed: int = 0) -> list[Question]:
    """k-means (cosine, k=CLUSTERS) of the asked questions' embeddings by the base model;
    test questions keep cluster -1."""
    import numpy as np

    from rag_loop.index.embedders import LazyEmbedder
    from rag_loop.settings import Settings

    model = Settings(corpus_path=None).embedder.model
    asked = [q for q in questions if not q.test]
    vectors = LazyEmbedder(model).embed_queries([q.text for q in asked])
    rng = np.random.default_rng(seed)
    centres = vectors[rng.choice(len(vectors), CLUSTERS, replace=False)]
    for _ in range(30):
        labels = (vectors @ centres.T).argmax(axis=1)
        for c in range(CLUSTERS):
            members = vectors[labels == c]
            if len(members):
                centre = members.mean(axis=0)
                centres[c] = centre / np.linalg.norm(centre)
    cluster = {q.id: int(c) for q, c in zip(asked, labels, strict=True)}
    return [
        Question(q.id, q.text, q.relevant, q.pool, q.test, cluster.get(q.id, -1)) for q in questions
    ]


@dataclass(frozen=True)
class Stream:
    kind: str  # "shifted" or "steady"
    asks: list[tuple[float, int, bool]]  # seconds from START, question index, sample groundedness
    target_cluster: int | None
    shifts: list[dict[str, Any]]


def make_stream(
    questions: list[Question], kind: str, seed: int, args: argparse.Namespace
) -> Stream:
    rng = random.Random(f"stream-{kind}-{seed}")
    aside = {q.id for q in golden_aside(questions, args.golden)}
    by_pool: dict[str, list[int]] = {}
    for n, q in enumerate(questions):
        if not q.test and q.id not in aside:
            by_pool.setdefault(q.pool, []).append(n)
    sizes = {c: sum(1 for q in questions if q.cluster == c) for c in range(CLUSTERS)}
    # a topic of at least 50 questions (the shared data sets' clusters, k-means with seed
    # 0 for every stream, have several), else the largest: a smaller set of data (the
    # suite's) still gets a gradual shift
    big = sorted(c for c, size in sizes.items() if size >= 50) or [
        max(sizes, key=lambda c: sizes[c])
    ]
    target = rng.choice(big)
    shifts: list[dict[str, Any]] = []
    if kind == "shifted":
        shifts = [
            {"name": "abrupt", "day": args.shift_day, "until_day": args.gradual_from},
            {
                "name": "gradual",
                "day": args.gradual_from,
                "ramp_to_day": args.gradual_to,
                "until_day": args.days,
            },
        ]
    asks = []
    for day in range(args.days):
        shifted = kind == "shifted"
        new_share = args.shift_share if shifted and day >= args.shift_day else 0.0
        ramp = 0.0
        if shifted and day >= args.gradual_from:
            span = max(args.gradual_to - args.gradual_from, 1)
            ramp = min((day - args.gradual_from + 1) / span, 1.0)
        for i in range(args.asks_per_day):
            at = day * DAY + (i + rng.random()) * DAY / args.asks_per_day
            pool = by_pool["scifact" if rng.random() < new_share else "pubmedqa"]
            if ramp and rng.random() < ramp * args.gradual_share:
                pool = [n for n in pool if questions[n].cluster == target] or pool
            asks.append((at, rng.choice(pool), rng.random() < args.groundedness_share))
    return Stream(kind, asks, target if kind == "shifted" else None, shifts)


# -- one arm -----------------------------------------------------------------------------


@dataclass
class FaithfulnessJudge:
    """The configured judge's faithfulness of an answer to the passages it was given: the
    service's own Ragas call (`judge_metric_calls`), one answer at a time. A call that fails
    (timeout, unparsable verdict, ...) is counted by its kind and gives no score. Every call
    runs on one event loop, kept until `close`, not on a new loop per answer."""

    name: str
    call: Any  # EvalItem -> the Ragas coroutine, or None when the metric does not apply
    judged: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    first_failure: dict[str, str] = field(default_factory=dict)  # per kind: why
    runner: asyncio.Runner = field(default_factory=asyncio.Runner)

    @classmethod
    def configured(cls, services: Any) -> FaithfulnessJudge | None:
        """None without a judge (`judge.backend` none); a judge that cannot be reached
        fails here, before the stream starts."""
        from rag_loop.evaluation.judge import make_judge
        from rag_loop.evaluation.metrics import judge_metric_calls

        judge = make_judge(services.settings.judge)
        if judge is None:
            return None
        judge.ping()
        return cls(
            judge.name,
            judge_metric_calls(judge, services.embedder, ["faithfulness"])["faithfulness"],
        )

    def score(self, question: str, answer: Any) -> float | None:
        from rag_loop.evaluation.datasets import EvalItem
        from rag_loop.evaluation.metrics import SampleResult, score_with_judge

        item = EvalItem(
            sample_id=answer.interaction_id,
            query=question,
            answer=answer.answer,
            retrieved=answer.sources,
        )
        result = SampleResult()
        self.runner.run(
            score_with_judge([item], [result], {"faithfulness": self.call}, concurrency=1)
        )
        self.judged += 1
        if "faithfulness" in result.failures:
            reason = result.failures["faithfulness"]
            kind = reason.split(":", 1)[0]
            self.failures[kind] = self.failures.get(kind, 0) + 1
            self.first_failure.setdefault(kind, reason[:500])
            return None
        value = result.scores.get("faithfulness")
        return None if value is None else round(value, 4)

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "judged": self.judged,
            "failures": self.failures,
            "first_failure": self.first_failure,
        }

    def close(self) -> None:
        self.runner.close()


def settings_for(data_dir: Path, arm: str, args: argparse.Namespace) -> Any:
    """The service's defaults, but for where the data lives, one chunk per passage, ten
    passages shown (so nDCG@10 is of what was served), the golden set (none: the
    benchmark's labels are never the service's; with `--golden N` the operator's, N claims
    about the new documents set aside from the stream, in every arm), and the arm: the
    evaluation schedule (alerting, closed) and the loop (closed)."""
    from rag_loop.settings import Settings

    golden = [str(args.work / f"golden-{args.golden}.jsonl")] if args.golden else []
    return Settings(
        data_dir=data_dir,
        corpus_path=None,
        chunking={"chunk_size": 4000, "chunk_overlap": 0},
        retrieval={"top_k": 10},
        evaluation={
            "golden_sets": golden,
            "schedule": args.evaluation_schedule if arm != "silent" else None,
        },
        loop={"auto": arm == "closed"},
    )


def test_scores(services: Any, questions: list[Question]) -> dict[str, float]:
    """nDCG@10 and Recall@10 of test questions on the serving index, retrieved as an ask
    retrieves (ten passages)."""
    from rag_loop.evaluation.metrics import ranking_metrics
    from rag_loop.index.versions import serving_index
    from rag_loop.retrieval.search import search

    index = serving_index(services.engine)
    embedder = services.embedders.get(index.embedder_version)
    vectors = embedder.embed_queries([q.text for q in questions])
    rankings = {
        q.id: list(
            dict.fromkeys(
                h.document_id
                for h in search(
                    services.store,
                    services.lexical,
                    index,
                    index.retrieval,
                    q.text,
                    vector,
                    10,
                    embedder,
                )
            )
        )
        for q, vector in zip(questions, vectors, strict=True)
    }
    scores = ranking_metrics(rankings, {q.id: sorted(q.relevant) for q in questions}, 10)
    return {
        metric: round(sum(s[metric] for s in scores.values()) / len(scores), 4)
        for metric in ("ndcg_at_10", "recall_at_10")
    }


def run_arm(arm: str, stream_kind: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:

    from rag_loop.clock import SimulatedClock
    from rag_loop.corpus.ingest import ingest
    from rag_loop.evaluation.metrics import groundedness_proxy, ranking_metrics
    from rag_loop.feedback.service import submit_feedback
    from rag_loop.feedback.simulated import SimulatedUser
    from rag_loop.interactions.ask import ask
    from rag_loop.scheduler import SimulatedSchedule, scheduled_jobs
    from rag_loop.services import Services

    work: Path = args.work
    questions = _clustered(work, args.datasets)
    stream = make_stream(questions, stream_kind, seed, args)
    data_dir = work / f"{stream_kind}-seed{seed}-{arm}"
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(work / "ingested", data_dir)
    clock = SimulatedClock(START)
    services = Services.from_settings(settings_for(data_dir, arm, args), clock=clock)
    schedule = SimulatedSchedule(scheduled_jobs(services), clock)
    user = SimulatedUser.realistic(seed)
    judge: FaithfulnessJudge | None = None
    tests = {
        pool: [q for q in questions if q.test and q.pool == pool]
        for pool in ("pubmedqa", "scifact")
    }
    scored: list[dict[str, Any]] = []  # the test splits on each index version that served

    def score(version: int) -> None:  # the benchmark's look: the simulated clock stands
        scored.append(
            {
                "hour": round((clock.now() - START).total_seconds() / 3600, 3),
                "index_version_id": version,
                **{pool: test_scores(services, split) for pool, split in tests.items()},
            }
        )

    proxy_similarity = services.settings.evaluation.proxy_similarity
    asks: list[list[Any]] = []
    ingests: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        judge = FaithfulnessJudge.configured(services)  # before any ask: it may be down
        for at, n, sample in stream.asks:
            moment = START + timedelta(seconds=at)
            schedule.run_until(moment)
            if stream.kind == "shifted" and not ingests and at >= args.shift_day * DAY:
                clock.advance_to(START + timedelta(days=args.shift_day))
                began = clock.now()
                with clock.running():
                    result = ingest(services, work / "corpus" / "new", actor="timeline")
                ingests.append({"at": began.isoformat(), "added": result.documents_added})
            clock.advance_to(moment)
            q = questions[n]
            answer = ask(services, q.text, client="timeline")
            served = list(dict.fromkeys(s["document_id"] for s in answer.sources))
            scores = ranking_metrics({"q": served}, {"q": sorted(q.relevant)}, 10)["q"]
            feedback = user.feedback(
                answer.interaction_id,
                answer.feedback_token,
                answer.sources,
                set(q.relevant),
                answer.cited_ranks,
            )
            if feedback is not None:
                submit_feedback(services, feedback, actor="simulated-user")
            grounded = (
                groundedness_proxy(
                    services.embedder,
                    answer.answer,
                    [s["text"] for s in answer.sources],
                    proxy_similarity,
                )
                if sample
                else None
            )
            # the benchmark's look, like the proxy: the simulated clock stands meanwhile
            faithful = judge.score(q.text, answer) if sample and judge is not None else None
            if not scored or scored[-1]["index_version_id"] != answer.versions["index_version"]:
                score(answer.versions["index_version"])
            asks.append(
                [
                    round((clock.now() - START).total_seconds() / 3600, 3),
                    round(scores["ndcg_at_10"], 4),
                    round(scores["recall_at_10"], 4),
                    feedback.thumb if feedback is not None else None,
                    grounded,
                    q.pool,
                    q.cluster,
                    answer.versions["index_version"],
                    faithful,
                ]
            )
        record = service_record(services)
    finally:
        if judge is not None:
            judge.close()
        services.close()
    return {
        **_identity(arm, stream_kind, seed, stream, args.golden),
        "ingests": ingests,
        "asks_fields": ASKS_FIELDS,
        "asks": asks,
        "test_scores": scored,
        **record,
        "schedule_runs": schedule.runs,
        "simulated_user": user.counts,
        "judge": judge.record() if judge is not None else None,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "settings": settings_for(data_dir, arm, args).model_dump(
            mode="json", include={"evaluation", "drift", "loop", "training"}
        ),
    }


ASKS_FIELDS = [
    "hour",
    "ndcg_at_10",
    "recall_at_10",
    "thumb",
    "groundedness_proxy",
    "pool",
    "cluster",
    "index_version_id",
    "faithfulness",  # the judge's, on the groundedness sample; None without a judge
]


def _hour_of(at: datetime) -> float:
    return round((at - START).total_seconds() / 3600, 3)


@functools.cache
def _clustered(work: Path, datasets: Path = DATASETS) -> list[Question]:
    """The questions with their clusters, computed once per work dir (`clusters.json`):
    every arm reads the same clusters, and none spends half a minute embedding the questions."""
    questions = prepare_data(work, datasets)
    cache = work / "clusters.json"
    if not cache.exists():
        clusters = {q.id: q.cluster for q in with_clusters(questions)}
        part = cache.with_suffix(".part")
        part.write_text(json.dumps(clusters))
        part.replace(cache)
    clusters = json.loads(cache.read_text())
    return [Question(q.id, q.text, q.relevant, q.pool, q.test, clusters[q.id]) for q in questions]


def _identity(arm: str, stream_kind: str, seed: int, stream: Stream, golden: int) -> dict[str, Any]:
    return {
        "arm": arm,
        "stream": stream_kind,
        "seed": seed,
        "golden": golden,  # the operator's golden set: claims about the new documents
        "target_cluster": stream.target_cluster,
        "shifts": stream.shifts,
    }


def service_record(services: Any) -> dict[str, Any]:
    """What the service did, from its own records: drift events and checks, loop cycles,
    promotions and rollbacks."""
    from sqlalchemy import select

    from rag_loop.db.models import AuditEntry, DriftCheck, Event, LoopCycle

    with services.sessions() as session:
        drift_events = [
            {
                "hour": _hour_of(e.created_at),
                "metrics": [c["metric"] for c in e.payload.get("checks", [])],
            }
            for e in session.scalars(select(Event).where(Event.kind == "drift"))
        ]
        drift_checks = len(session.scalars(select(DriftCheck.id)).all())
        cycles = [
            {
                "id": c.id,
                "trigger": c.trigger,
                "state": c.state,
                "started_hour": _hour_of(c.created_at),
                "finished_hour": _hour_of(c.finished_at) if c.finished_at else None,
                "gate_delta": (c.gate.get("deltas") or {}).get("primary"),
                "stages": c.stages,  # each stage's seconds and memory
            }
            for c in session.scalars(select(LoopCycle).order_by(LoopCycle.id))
        ]
        actions = [
            {"hour": _hour_of(a.at), "action": a.action, "target": a.target}
            for a in session.scalars(
                select(AuditEntry)
                .where(AuditEntry.action.in_(("loop.promote", "loop.rollback")))
                .order_by(AuditEntry.id)
            )
        ]
    return {
        "drift_events": drift_events,
        "drift_checks": drift_checks,
        "cycles": cycles,
        "promotions": [a for a in actions if a["action"] == "loop.promote"],
        "rollbacks": [a for a in actions if a["action"] == "loop.rollback"],
    }


def run_from_database(
    arm: str, stream_kind: str, seed: int, args: argparse.Namespace
) -> dict[str, Any] | None:
    """An arm that did not finish (stopped, or cut off), rebuilt from its data dir: every
    answer's served passages and latest thumb as the service logged them, scored against
    the questions' labels (no groundedness sample and no test-split scores: those the run
    computes as it goes)."""
    from sqlalchemy import select

    from rag_loop.db.models import FeedbackEvent, Interaction, Retrieval
    from rag_loop.evaluation.metrics import ranking_metrics
    from rag_loop.services import Services

    data_dir = args.work / f"{stream_kind}-seed{seed}-{arm}"
    if not (data_dir / "rag_loop.db").exists():
        return None
    questions = _clustered(args.work, args.datasets)
    by_text = {q.text.strip(): q for q in questions}
    stream = make_stream(questions, stream_kind, seed, args)
    services = Services.from_settings(settings_for(data_dir, arm, args))
    try:
        with services.sessions() as session:
            asked = session.execute(
                select(
                    Interaction.id,
                    Interaction.query,
                    Interaction.created_at,
                    Interaction.index_version_id,
                )
                .where(Interaction.status == "ok")
                .order_by(Interaction.created_at, Interaction.id)
            ).all()
            served: dict[str, list[str]] = {}
            for interaction_id, document_id in session.execute(
                select(Retrieval.interaction_id, Retrieval.document_id).order_by(
                    Retrieval.interaction_id, Retrieval.rank
                )
            ):
                served.setdefault(interaction_id, []).append(document_id)
            thumbs = dict(
                session.execute(
                    select(FeedbackEvent.interaction_id, FeedbackEvent.thumb)
                    .where(FeedbackEvent.kind == "thumb")
                    .order_by(FeedbackEvent.id)
                ).all()
            )
        record = service_record(services)
    finally:
        services.close()
    rows = [(r, by_text[r.query]) for r in asked if r.query in by_text]
    scores = ranking_metrics(
        {r.id: list(dict.fromkeys(served.get(r.id, []))) for r, _ in rows},
        {r.id: sorted(q.relevant) for r, q in rows},
        10,
    )
    asks = [
        [
            _hour_of(r.created_at),
            round(scores[r.id]["ndcg_at_10"], 4),
            round(scores[r.id]["recall_at_10"], 4),
            thumbs.get(r.id),
            None,
            q.pool,
            q.cluster,
            r.index_version_id,
            None,
        ]
        for r, q in rows
    ]
    return {
        **_identity(arm, stream_kind, seed, stream, args.golden),
        "unfinished": f"rebuilt from {data_dir}: {len(asks)} of {len(stream.asks)} asks",
        "asks_fields": ASKS_FIELDS,
        "asks": asks,
        "test_scores": [],
        **record,
        "wall_seconds": None,
        "settings": settings_for(data_dir, arm, args).model_dump(
            mode="json", include={"evaluation", "drift", "loop", "training"}
        ),
    }


# -- figures -----------------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def ask_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's asks (stored as lists, `asks_fields` naming their columns) as dicts."""
    return [dict(zip(run["asks_fields"], ask, strict=True)) for ask in run["asks"]]


def daily(run: dict[str, Any], days: int) -> list[dict[str, Any]]:
    """Per simulated day: what was served (nDCG@10, Recall@10), the thumbs-down rate of
    the day's thumbs, and the mean groundedness proxy and judge's faithfulness of the day's
    sampled answers (those the judge scored)."""
    rows = ask_rows(run)
    out = []
    for day in range(days):
        today = [r for r in rows if day * 24 <= r["hour"] < (day + 1) * 24]
        thumbs = [r["thumb"] for r in today if r["thumb"]]
        out.append(
            {
                "day": day,
                "asks": len(today),
                "ndcg_at_10": _mean([r["ndcg_at_10"] for r in today]),
                "recall_at_10": _mean([r["recall_at_10"] for r in today]),
                "thumbs": len(thumbs),
                "thumbs_down_rate": thumbs.count("down") / len(thumbs) if thumbs else None,
                "groundedness_proxy": _mean(
                    [r["groundedness_proxy"] for r in today if r["groundedness_proxy"] is not None]
                ),
                "faithfulness": _mean(
                    [r["faithfulness"] for r in today if r.get("faithfulness") is not None]
                ),
            }
        )
    return out


def shift_figures(run: dict[str, Any], days: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per shift: time to detect and to intervene, degradation before intervention, time
    to recover and the area below the pre-shift level."""
    out = []
    for shift in run["shifts"]:
        start, until = shift["day"], shift["until_day"]
        if not any(d["asks"] for d in days[start:until]):  # an unfinished arm never got here
            out.append({"shift": shift["name"], "day": start, "reached": False})
            continue
        before = [d["ndcg_at_10"] for d in days[max(start - 5, 0) : start] if d["ndcg_at_10"]]
        level = _mean(before) or 0.0
        hour = start * 24.0
        detected = next(
            (e["hour"] for e in run["drift_events"] if hour <= e["hour"] < until * 24), None
        )
        promoted = next(
            (p["hour"] for p in run["promotions"] if hour <= p["hour"] < until * 24), None
        )
        last_day = int(promoted // 24) if promoted is not None else until - 1
        window = [d for d in days[start : last_day + 1] if d["ndcg_at_10"] is not None]
        drop = max([(level - d["ndcg_at_10"]) / level for d in window] + [0.0]) if level else 0.0
        # recovered: back within 2% of the level after the first day below it (0 h: never
        # below it; a gradual shift's first days may not be)
        scored = [d for d in days[start:until] if d["ndcg_at_10"] is not None]
        below = next((d["day"] for d in scored if d["ndcg_at_10"] < 0.98 * level), None)
        recovered = (
            0.0
            if below is None
            else next(
                (
                    (d["day"] + 1) * 24 - hour
                    for d in scored
                    if d["day"] > below and d["ndcg_at_10"] >= 0.98 * level
                ),
                None,
            )
        )
        area = sum(
            max(level - d["ndcg_at_10"], 0.0)
            for d in days[start:until]
            if d["ndcg_at_10"] is not None
        )
        out.append(
            {
                "shift": shift["name"],
                "day": start,
                "pre_shift_ndcg_at_10": round(level, 4),
                "by_pool": by_pool(run, max(start - 5, 0), start, last_day + 1),
                "hours_to_detect": round(detected - hour, 1) if detected is not None else None,
                "hours_to_intervene": round(promoted - hour, 1) if promoted is not None else None,
                "degradation_before_intervention": round(drop, 4),
                # the shift's own day: before any arm can act on it, so no arm's
                # degradation before intervention can be smaller
                "shift_day_drop": round((level - window[0]["ndcg_at_10"]) / level, 4)
                if level and window and window[0]["day"] == start
                else None,
                "hours_to_recover": round(recovered, 1) if recovered is not None else None,
                "area_below_level": round(area, 4),
            }
        )
    return out


def by_pool(run: dict[str, Any], first: int, start: int, end: int) -> dict[str, Any]:
    """Where a drop comes from: per question pool, the share of the asks and their served
    nDCG@10 in the days [first, start) before a shift and [start, end) after it (up to the
    intervention). A pool of harder questions lowers the day's mean though every pool is
    served as well as before."""
    rows = ask_rows(run)
    before = [r for r in rows if first * 24 <= r["hour"] < start * 24]
    after = [r for r in rows if start * 24 <= r["hour"] < end * 24]
    out: dict[str, Any] = {}
    for pool in sorted({r["pool"] for r in before + after}):
        then = [r["ndcg_at_10"] for r in before if r["pool"] == pool]
        now = [r["ndcg_at_10"] for r in after if r["pool"] == pool]
        out[pool] = {
            "share_after": round(len(now) / len(after), 3) if after else None,
            "ndcg_at_10_before": round(m, 4) if (m := _mean(then)) is not None else None,
            "ndcg_at_10_after": round(m, 4) if (m := _mean(now)) is not None else None,
        }
    return out


def _pools(figure: dict[str, Any]) -> str:
    """`pool before -> after (share)` for each pool of a shift's asks."""
    parts = []
    for pool, f in figure.get("by_pool", {}).items():
        before = "-" if f["ndcg_at_10_before"] is None else f"{f['ndcg_at_10_before']:.3f}"
        after = "-" if f["ndcg_at_10_after"] is None else f"{f['ndcg_at_10_after']:.3f}"
        parts.append(f"{pool} {before} -> {after} ({100 * (f['share_after'] or 0):.0f}%)")
    return "; ".join(parts) or "-"


def _hours(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} h"


def seed_table(runs: dict[str, dict[str, Any]]) -> str:
    """One column per arm: the claims' rows with this run's figures."""
    arms = [a for a in ARMS if a in runs]
    rows: list[tuple[str, list[str]]] = []
    figures = {a: runs[a]["figures"] for a in arms}

    def per_shift(key: str, fmt: Any) -> list[str]:
        return [
            " / ".join(fmt(f[key]) if f.get("reached", True) else "not reached" for f in figures[a])
            for a in arms
        ]

    rows.append(("time to detect (abrupt / gradual)", per_shift("hours_to_detect", _hours)))
    rows.append(("time to intervene", per_shift("hours_to_intervene", _hours)))
    rows.append(
        (
            "degradation before intervention",
            per_shift("degradation_before_intervention", lambda v: f"{100 * v:.1f}%"),
        )
    )
    rows.append(
        (
            "drop on the shift's own day",
            per_shift("shift_day_drop", lambda v: "-" if v is None else f"{100 * v:.1f}%"),
        )
    )
    rows.append(
        (
            "served nDCG@10 per question pool, before -> after the shift (share after)",
            [
                " / ".join(
                    _pools(f) if f.get("reached", True) else "not reached" for f in figures[a]
                )
                for a in arms
            ],
        )
    )
    rows.append(("time to recover (within 2%)", per_shift("hours_to_recover", _hours)))
    rows.append(
        (
            "groundedness proxy / judge's faithfulness, sampled answers",
            [answer_quality(runs[a]) for a in arms],
        )
    )
    rows.append(("area below the pre-shift level", per_shift("area_below_level", "{:.3f}".format)))
    for label, used in (
        ("automated trigger", lambda r: r["settings"]["loop"]["auto"]),
        ("human gate", lambda r: r["settings"]["loop"]["require_approval"] and bool(r["cycles"])),
        (  # evaluated by the rounds, judged on by the gate; the silent arm does neither
            "operator's golden set",
            lambda r: bool(r.get("golden")) and r["settings"]["evaluation"]["schedule"] is not None,
        ),
        ("registry (versions in MLflow)", lambda r: bool(r["cycles"])),
        ("versioned feedback", lambda r: True),  # every arm logs answers, versions, feedback
        ("shadow mode", lambda r: r["settings"]["loop"]["shadow_share"] > 0 and bool(r["cycles"])),
    ):
        rows.append((label, ["yes" if used(runs[a]) else "no" for a in arms]))
    rows.append(
        (
            "drift events / loop cycles / promotions (rollbacks)",
            [
                " / ".join(
                    str(len(runs[a][key])) for key in ("drift_events", "cycles", "promotions")
                )
                + f" ({len(runs[a].get('rollbacks', []))})"
                for a in arms
            ],
        )
    )
    lines = ["| | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    return "\n".join(lines)


def answer_quality(run: dict[str, Any]) -> str:
    """The mean groundedness proxy and judge's faithfulness of a run's sampled answers."""
    rows = ask_rows(run)
    proxy = _mean([r["groundedness_proxy"] for r in rows if r["groundedness_proxy"] is not None])
    text = "-" if proxy is None else f"{proxy:.3f}"
    judge = run.get("judge")
    if not judge:
        return f"{text} / no judge"
    faithful = [r["faithfulness"] for r in rows if r.get("faithfulness") is not None]
    mean = _mean(faithful)
    return (
        f"{text} / {'-' if mean is None else f'{mean:.3f}'} ({len(faithful)} of "
        f"{judge['judged']} scored, {judge['name']})"
    )


def steady_table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| seed | arm | drift events | cycles | promotions "
        "| test nDCG@10 PubMedQA-L, start -> end |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        scored = [s["pubmedqa"]["ndcg_at_10"] for s in run["test_scores"]]
        test = f"{scored[0]:.3f} -> {scored[-1]:.3f}" if scored else "not scored"
        if run.get("unfinished"):
            test += f" ({run['unfinished']})"
        lines.append(
            f"| {run['seed']} | {run['arm']} | {len(run['drift_events'])} | {len(run['cycles'])} "
            f"| {len(run['promotions'])} | {test} |"
        )
    return "\n".join(lines)


def plot(seed_runs: dict[str, dict[str, Any]], days: int, path: Path) -> None:
    """Daily nDCG@10 and thumbs-down rate per arm; the shifts, drift events (triangles),
    promotions (dotted lines) and rollbacks (dash-dotted) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {
        "silent": {"color": "tab:gray", "linestyle": ":", "linewidth": 2.5},
        "alerting": {"color": "tab:orange", "linestyle": "--", "linewidth": 1.8},
        "closed": {"color": "tab:blue", "linestyle": "-", "linewidth": 1.4},
    }
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for arm, run in seed_runs.items():
        x = [d["day"] + 0.5 for d in run["daily"]]
        top.plot(x, [d["ndcg_at_10"] for d in run["daily"]], label=arm, **style[arm])
        bottom.plot(x, [d["thumbs_down_rate"] for d in run["daily"]], label=arm, **style[arm])
    low, high = top.get_ylim()
    for n, (arm, run) in enumerate(seed_runs.items()):
        colour = style[arm]["color"]
        for promotion in run["promotions"]:
            top.axvline(promotion["hour"] / 24, color=colour, linestyle=":", linewidth=1)
        for rollback in run.get("rollbacks", []):
            top.axvline(rollback["hour"] / 24, color=colour, linestyle="-.", linewidth=1)
        events = [e["hour"] / 24 for e in run["drift_events"]]
        top.plot(events, [low + (n + 1) * 0.03 * (high - low)] * len(events), "v", color=colour)
    some = next(iter(seed_runs.values()))
    for shift in some["shifts"]:
        for axis in (top, bottom):
            if shift["name"] == "abrupt":
                axis.axvline(shift["day"], color="red", linewidth=1.5)
            else:
                axis.axvspan(
                    shift["day"],
                    shift.get("ramp_to_day", shift["until_day"]),
                    color="red",
                    alpha=0.08,
                )
        top.annotate(f" {shift['name']} shift", (shift["day"], high), fontsize=8, va="top")
    top.set_ylim(low, high)
    top.set_ylabel("served nDCG@10 (daily)")
    bottom.set_ylabel("thumbs-down rate (daily)")
    bottom.set_xlabel(
        "simulated day (triangles: drift events; dotted: promotions; dash-dotted: rollbacks)"
    )
    top.legend(loc="lower left")
    top.set_xlim(0, days)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- the run -----------------------------------------------------------------------------


def ingest_template(work: Path) -> None:
    """The base corpus, ingested once; every arm starts from a copy."""
    from rag_loop.corpus.ingest import ingest
    from rag_loop.services import Services

    template = work / "ingested"
    if (template / "ingested.ok").exists():
        return
    shutil.rmtree(template, ignore_errors=True)
    args = argparse.Namespace(evaluation_schedule=None, golden=0, work=work)
    services = Services.from_settings(settings_for(template, "silent", args))
    try:
        started = time.perf_counter()
        ingest(services, work / "corpus" / "base", actor="timeline")
        print(f"ingested the base corpus in {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        services.close()
    (template / "ingested.ok").write_text("")


def run_child(arm: str, stream: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One arm in its own process (they run `--jobs` at a time)."""
    part = args.work / f"part-{stream}-seed{seed}-{arm}.json"
    command = [sys.executable, __file__, "--arm", arm, "--stream", stream, "--seeds", str(seed)]
    for name in (
        "days",
        "asks_per_day",
        "shift_day",
        "shift_share",
        "gradual_from",
        "gradual_to",
        "gradual_share",
        "groundedness_share",
        "evaluation_schedule",
        "golden",
        "work",
        "datasets",
    ):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // args.jobs))}
    with (args.work / f"log-{stream}-seed{seed}-{arm}.txt").open("w") as log:
        subprocess.run([*command, "--part", str(part)], check=True, stdout=log, stderr=log, env=env)
    return json.loads(part.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--asks-per-day", type=int, default=400)
    parser.add_argument("--shift-day", type=int, default=10, help="the abrupt shift")
    parser.add_argument(
        "--shift-share", type=float, default=0.5, help="asks about the new documents"
    )
    parser.add_argument("--gradual-from", type=int, default=18)
    parser.add_argument("--gradual-to", type=int, default=25)
    parser.add_argument("--gradual-share", type=float, default=0.6, help="of one topic, at the end")
    parser.add_argument(
        "--groundedness-share",
        type=float,
        default=0.1,
        help="answers scored by the groundedness proxy (and the judge, when one is configured)",
    )
    parser.add_argument(
        "--evaluation-schedule",
        default="0 */6 * * *",
        help="cron of the evaluation round with its drift checks (alerting and closed arms)",
    )
    parser.add_argument(
        "--golden",
        type=int,
        default=0,
        metavar="N",
        help="set N of the new documents' claims aside from the stream as the operator's "
        "golden set (labelled, never asked), in every arm's settings: the closed loop's gate "
        "judges on it (or on its judged part when a cycle splits it), the alerting arm's "
        "rounds evaluate it (default 0: no golden set)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="arms run at once")
    parser.add_argument(
        "--arms", default=",".join(ARMS), help="comma-separated: silent, alerting, closed"
    )
    parser.add_argument(
        "--streams", default="shifted,steady", help="comma-separated: shifted, steady"
    )
    parser.add_argument(
        "--no-steady", action="store_true", help="skip the steady stream (--streams shifted)"
    )
    parser.add_argument(
        "--analyse",
        action="store_true",
        help="only rebuild the tables, plots and JSON from the arm results in --work (the "
        "arms that finished)",
    )
    parser.add_argument(
        "--datasets",
        type=Path,
        default=DATASETS,
        help="the folder that holds scifact/ and pubmedqa/ (default: ../shared/datasets)",
    )
    parser.add_argument("--work", type=Path, default=None, help="keep the data dirs here")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (PNG beside it)")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--stream", choices=("shifted", "steady"), help=argparse.SUPPRESS)
    parser.add_argument("--part", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    arms = {a.strip() for a in args.arms.split(",") if a.strip()}
    streams = {s.strip() for s in args.streams.split(",") if s.strip()} - (
        {"steady"} if args.no_steady else set()
    )
    if not arms <= set(ARMS) or not streams <= {"shifted", "steady"}:
        parser.error(f"--arms takes {', '.join(ARMS)}; --streams takes shifted, steady")
    if args.arm:
        result = run_arm(args.arm, args.stream, seeds[0], args)
        args.part.write_text(json.dumps(result))
        return

    tasks = []  # a seed's arms before the next seed's, the longest first
    for seed in seeds:
        if "shifted" in streams:
            tasks += [("shifted", seed, a) for a in ("closed", "alerting", "silent") if a in arms]
        if "steady" in streams:
            tasks += [("steady", seed, a) for a in STEADY_ARMS[::-1] if a in arms]
    if not tasks:
        parser.error(
            f"no arm runs for --arms {args.arms!r} and --streams {args.streams!r} "
            "(the steady stream has no silent arm)"
        )

    began = time.perf_counter()
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="rag-loop-bench-timeline-"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    # writes the corpora and the golden set; once, before the arms run (or are rebuilt)
    questions = _clustered(args.work, args.datasets)
    if args.golden:
        write_golden(args.work, questions, args.golden)
    if not args.analyse:
        ingest_template(args.work)
    print(f"{len(tasks)} arm runs, {args.jobs} at a time; data in {args.work}", flush=True)

    def one(task: tuple[str, int, str]) -> dict[str, Any] | None:
        stream, seed, arm = task
        if args.analyse:
            part = args.work / f"part-{stream}-seed{seed}-{arm}.json"
            if part.exists():
                run = json.loads(part.read_text())
            else:
                rebuilt = run_from_database(arm, stream, seed, args)
                if rebuilt is None:
                    print(f"  {stream} seed {seed} {arm}: no result in {args.work}", flush=True)
                    return None
                run = rebuilt
        else:
            run = run_child(arm, stream, seed, args)
        run["daily"] = daily(run, args.days)
        run["figures"] = shift_figures(run, run["daily"])
        took = run.get("unfinished") or f"{run['wall_seconds']:.0f} s"
        print(f"  {stream} seed {seed} {arm}: {took}; {json.dumps(run['figures'])}", flush=True)
        return run

    # --analyse: one at a time (a rebuild opens the service, whose migrations are not
    # thread-safe: Alembic keeps its running context in module globals)
    with ThreadPoolExecutor(1 if args.analyse else args.jobs) as pool:
        runs = [run for run in pool.map(one, tasks) if run is not None]
    out = args.out or ROOT / "evals/results/timeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items() if k not in ("arm", "stream", "part")},
        "wall_seconds": round(time.perf_counter() - began, 1),
        "runs": [{k: v for k, v in r.items() if k != "asks"} for r in runs],
        "plots": [],
    }
    for seed in seeds:
        shifted = {r["arm"]: r for r in runs if r["stream"] == "shifted" and r["seed"] == seed}
        if not shifted:
            continue
        picture = out.with_name(f"{out.stem}-seed{seed}.png")
        plot(shifted, args.days, picture)
        report["plots"].append(str(picture))
        print(
            f"\nseed {seed}, {args.asks_per_day} asks a day for {args.days} days "
            f"(abrupt shift day {args.shift_day}, gradual days {args.gradual_from}-"
            f"{args.gradual_to}"
            + (
                f"; a golden set of {args.golden} claims about the new documents"
                if args.golden
                else ""
            )
            + f"); plot {picture}\n"
        )
        print(seed_table(shifted))
    steady = [r for r in runs if r["stream"] == "steady"]
    if steady:
        print("\nsteady stream (no shift)\n")
        print(steady_table(steady))
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\n{report['wall_seconds']:.0f} s in all; written to {out}")


if __name__ == "__main__":
    main()
