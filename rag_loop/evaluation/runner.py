"""One evaluation run: a dataset scored against an index version, stored in SQL and MLflow.

    run_evaluation(services, EvalRequest(source="golden", golden_path=...))

golden      each question is retrieved from the index version (champion by default) and
            answered by the configured generator, exactly as `ask` would, without logging
            an interaction; references are the set's ids and answers
production  the latest N answered interactions as they were served, with their feedback

A run row is written first (status `running`); it ends `done` with its metrics and samples,
or `failed` with the reason (a malformed golden set, an unknown index version, a judge that
is down, ...), and the error is raised to the caller. Either way an MLflow run records it.
"""

from __future__ import annotations

import csv
import io
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from sqlalchemy import select, update

from rag_loop.db.engine import transaction
from rag_loop.db.models import EvalRun, EvalSample, IndexVersion, now_of
from rag_loop.errors import InvalidInput, RagLoopError
from rag_loop.evaluation.datasets import EvalDataset, EvalItem, load_golden, production_window
from rag_loop.evaluation.drift import DriftParts
from rag_loop.evaluation.judge import LangChainJudge, make_judge
from rag_loop.evaluation.metrics import (
    JUDGE_METRICS,
    SampleResult,
    aggregate,
    ir_metric_names,
    judge_metric_calls,
    ranking_metrics,
    score_with_judge,
    score_without_judge,
)
from rag_loop.generation.base import Generator
from rag_loop.index.chroma import ChromaStore
from rag_loop.index.embedders import Embedder, EmbedderPool
from rag_loop.index.versions import champion, get_version, retrieval_of
from rag_loop.registry import outbox
from rag_loop.registry.outbox import Outbox
from rag_loop.registry.tracking import EVAL_EXPERIMENT
from rag_loop.retrieval.lexical import LexicalIndexes
from rag_loop.retrieval.search import search

log = logging.getLogger(__name__)

NON_LLM_METRICS = (
    "id_context_precision",
    "id_context_recall",
    "string_similarity",
    "rouge_l",
    "groundedness_proxy",
)


class EvalParts(DriftParts, Protocol):
    """What an evaluation run uses (a drift check's parts, retrieval and generation)."""

    store: ChromaStore
    lexical: LexicalIndexes
    generator: Generator
    embedders: EmbedderPool  # by version: the base and the loop's fine-tuned models
    outbox: Outbox


@dataclass
class EvalRequest:
    source: Literal["golden", "production"] = "golden"
    golden_path: Path | None = None  # golden: which set (default: the first configured)
    window: int | None = None  # production: how many recent interactions
    index_version_id: int | None = None  # golden: which index (default: the champion)
    use_judge: bool = True  # False: skip the judge even when one is configured
    limit: int | None = None  # golden: only the first N questions
    trigger: str = "manual"  # api | cli | schedule | loop | manual
    # golden: rank only (no answers, no answer metrics, no judge): the loop's gate
    retrieval_only: bool = False
    run_id: str | None = None  # chosen by the caller (a job); default: a new uuid


@dataclass
class EvalOutcome:
    run_id: str
    status: str
    metrics: dict[str, float]
    failures: dict[str, dict[str, int]]
    primary_metric: str
    mlflow_run_id: str | None
    n_samples: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def run_evaluation(
    services: EvalParts,
    request: EvalRequest,
    *,
    judge: LangChainJudge | None = None,
    embedder: Embedder | None = None,
) -> EvalOutcome:
    """Score a dataset; see the module docstring. `judge` overrides the configured one;
    `embedder` is the one the index version was built with (default: the service's), so a
    candidate index with a fine-tuned embedder retrieves with it; the proxy and response
    relevancy keep measuring with the service's embedder, so versions stay comparable."""
    settings = services.settings.evaluation
    started = time.perf_counter()
    run_id = request.run_id or uuid.uuid4().hex
    label = _dataset_label(services, request)
    with transaction(services.sessions) as session:
        session.add(
            EvalRun(
                id=run_id,
                trigger=request.trigger,
                source=request.source,
                dataset=label,
                index_version_id=None,
            )
        )
    params: dict[str, Any] = {"source": request.source, "dataset": label, "k": settings.k}
    try:
        if request.retrieval_only:
            if request.source != "golden":
                raise InvalidInput("retrieval_only needs a golden set")
            request.use_judge = False
        if request.use_judge and judge is None:
            judge = make_judge(services.settings.judge)
        if not request.use_judge:
            judge = None
        if judge is not None:
            judge.ping()  # a judge that is down fails the run now, not sample by sample
        dataset, index, embedder = _load(services, request, embedder)
        params.update(
            dataset=dataset.name,
            dataset_hash=dataset.content_hash,
            index_version=index.id if index else None,
            embedder_version=index.embedder_version if index else None,
            prompt_version=services.generator.prompt_version,
            generator=services.generator.name,
            judge=judge.name if judge else "none",
            n_samples=len(dataset.items),
        )
        if request.source == "production":
            served = sorted({str(i.index_version) for i in dataset.items if i.index_version})
            params["index_versions_served"] = ",".join(served)
        results, retrieved_ids, ir = _score(
            services, dataset, index, judge, embedder, retrieval_only=request.retrieval_only
        )
        names = [] if request.retrieval_only else list(NON_LLM_METRICS)
        if judge is not None:
            names += list(services.settings.judge.metrics)
        metrics, failures = aggregate(results, names, threshold=settings.faithfulness_threshold)
        if ir:
            for name in ir_metric_names(settings.k):
                metrics[name] = sum(v[name] for v in ir.values()) / len(ir)
                for item, result in zip(dataset.items, results, strict=True):
                    result.scores[name] = ir.get(item.sample_id, {}).get(name)
        thumbs = [i.thumb for i in dataset.items if i.thumb]
        if thumbs:
            metrics["thumbs_up_rate"] = thumbs.count("up") / len(thumbs)
            metrics["thumbs_count"] = float(len(thumbs))
        if not request.retrieval_only:
            generation_failures = sum(1 for i in dataset.items if i.answer is None)
            metrics["generation_failures"] = float(generation_failures)
        metrics["n_samples"] = float(len(dataset.items))
        primary = ir_metric_names(settings.k)[0] if ir else "id_context_precision"
        seconds = time.perf_counter() - started
        metrics["samples_per_second"] = len(dataset.items) / seconds if seconds > 0 else 0.0
        rows = _sample_rows(dataset, results, retrieved_ids)
        with transaction(services.sessions) as session:
            session.execute(
                update(EvalRun)
                .where(EvalRun.id == run_id)
                .values(
                    status="done",
                    finished_at=now_of(session),
                    dataset=dataset.name,
                    dataset_hash=dataset.content_hash,
                    index_version_id=index.id if index else None,
                    embedder_version=params["embedder_version"],
                    prompt_version=params["prompt_version"],
                    generator=params["generator"],
                    judge=params["judge"],
                    n_samples=len(dataset.items),
                    seconds=seconds,
                    metrics=metrics,
                    failures=failures,
                    primary_metric=primary,
                )
            )
            session.add_all(
                EvalSample(run_id=run_id, position=n, **row) for n, row in enumerate(rows)
            )
            outbox.log_run(
                session,
                EVAL_EXPERIMENT,
                f"eval-{dataset.name}-{run_id[:8]}",
                params=params,
                metrics=metrics,
                tags={"rag_loop.eval_run": run_id, "rag_loop.primary_metric": primary},
                artifacts={"samples.json": rows, "samples.csv": _csv(rows)},
                record=("eval_runs", run_id),
            )
        services.outbox.flush_quietly()
        with services.sessions() as session:
            mlflow_run_id = session.scalar(
                select(EvalRun.mlflow_run_id).where(EvalRun.id == run_id)
            )
        return EvalOutcome(
            run_id, "done", metrics, failures, primary, mlflow_run_id, len(rows), seconds, params
        )
    except RagLoopError as exc:
        _fail(services, run_id, exc.message, params)
        exc.details.append({"eval_run_id": run_id})
        raise
    except Exception as exc:
        _fail(services, run_id, f"{type(exc).__name__}: {exc}", params)
        raise


def _fail(services: EvalParts, run_id: str, reason: str, params: dict[str, Any]) -> None:
    log.warning("evaluation %s failed: %s", run_id, reason)
    with transaction(services.sessions) as session:
        session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id)
            .values(
                status="failed",
                error=reason,
                finished_at=now_of(session),
                judge=params.get("judge"),
            )
        )
        outbox.log_run(
            session,
            EVAL_EXPERIMENT,
            f"eval-failed-{run_id[:8]}",
            params=params,
            metrics={},
            tags={"rag_loop.eval_run": run_id, "rag_loop.error": reason[:5000]},
            status="FAILED",
            record=("eval_runs", run_id),
        )
    services.outbox.flush_quietly()


def _dataset_label(services: EvalParts, request: EvalRequest) -> str:
    if request.source == "production":
        return f"production-last-{request.window or services.settings.evaluation.window_size}"
    path = request.golden_path or _default_golden(services)
    return str(path)


def _default_golden(services: EvalParts) -> Path:
    sets = services.settings.evaluation.golden_sets
    if not sets:
        raise InvalidInput("no golden set given and RAG_LOOP_EVALUATION_GOLDEN_SETS is empty")
    return sets[0]


def version_to_score(services: EvalParts, index_version_id: int | None) -> IndexVersion:
    """The index version a golden run scores: the one asked for (404 if unknown), or the
    champion; it must be ready (400 otherwise)."""
    with services.sessions() as session:
        index = (
            get_version(session, index_version_id)
            if index_version_id is not None
            else champion(session)
        )
        session.expunge(index)
    if index.status != "ready":
        raise InvalidInput(f"index version {index.id} is {index.status}, not ready")
    return index


def _load(
    services: EvalParts, request: EvalRequest, embedder: Embedder | None
) -> tuple[EvalDataset, IndexVersion | None, Embedder]:
    if request.source == "production":
        window = request.window or services.settings.evaluation.window_size
        if window < 1:
            raise InvalidInput(f"the window must hold at least one interaction, not {window}")
        return production_window(services.engine, window), None, embedder or services.embedder
    dataset = load_golden(request.golden_path or _default_golden(services))
    if request.limit is not None:
        if request.limit < 1:
            raise InvalidInput(f"limit must be at least 1, not {request.limit}")
        dataset.items = dataset.items[: request.limit]
    index = version_to_score(services, request.index_version_id)
    if embedder is None:
        embedder = services.embedders.get(index.embedder_version)
    if index.embedder_version != embedder.version:
        raise InvalidInput(
            f"index version {index.id} was built with {index.embedder_version}, but this "
            f"this evaluation embeds with {embedder.version}; evaluate it with that embedder"
        )
    return dataset, index, embedder


def _score(
    services: EvalParts,
    dataset: EvalDataset,
    index: IndexVersion | None,
    judge: LangChainJudge | None,
    embedder: Embedder,
    *,
    retrieval_only: bool = False,
) -> tuple[list[SampleResult], list[list[str]], dict[str, dict[str, float]]]:
    settings = services.settings.evaluation
    ir: dict[str, dict[str, float]] = {}
    if index is not None:
        rankings = _answer_golden(services, dataset, index, embedder, answer=not retrieval_only)
        ir = ranking_metrics(
            rankings, {i.sample_id: i.reference_ids for i in dataset.items}, settings.k
        )
    key = "document_id" if dataset.id_level == "document" else "chunk_id"
    retrieved_ids = [[r[key] for r in item.retrieved] for item in dataset.items]
    if retrieval_only:
        return [SampleResult() for _ in dataset.items], retrieved_ids, ir
    results = [
        score_without_judge(
            item,
            contexts_ids=ids,
            embedder=services.embedder,  # the measuring instrument stays the same
            proxy_similarity=settings.proxy_similarity,
        )
        for item, ids in zip(dataset.items, retrieved_ids, strict=True)
    ]
    if judge is not None:
        import asyncio

        calls = judge_metric_calls(judge, services.embedder, services.settings.judge.metrics)
        asyncio.run(
            score_with_judge(
                dataset.items,
                results,
                calls,
                concurrency=judge.max_concurrency or services.settings.judge.concurrency,
            )
        )
    return results, retrieved_ids, ir


def _answer_golden(
    services: EvalParts,
    dataset: EvalDataset,
    index: IndexVersion,
    embedder: Embedder,
    *,
    answer: bool = True,
) -> dict[str, list[str]]:
    """Retrieve and answer every golden question against `index`; returns the ranking of
    reference-level ids (documents or chunks, best first, each once) per question."""
    k = services.settings.evaluation.k
    top_k = services.settings.retrieval.top_k
    # chunks of one document crowd the ranking; fetch enough to rank k distinct documents
    depth = max(top_k, k * 4 if dataset.id_level == "document" else k)
    queries = [item.query for item in dataset.items]
    vectors = embedder.embed_queries(queries)
    config = retrieval_of(index)
    rankings: dict[str, list[str]] = {}
    for item, vector in zip(dataset.items, vectors, strict=True):
        hits = search(
            services.store, services.lexical, index, config, item.query, vector, depth, embedder
        )
        shown = hits[:top_k]
        item.retrieved = [
            {"chunk_id": h.chunk_id, "document_id": h.document_id, "text": h.text} for h in shown
        ]
        if answer:
            try:
                item.answer = services.generator.generate(item.query, shown).text
            except RagLoopError as exc:
                log.warning("generator failed on %s: %s", item.sample_id, exc.message)
                item.answer = None
        key = "document_id" if dataset.id_level == "document" else "chunk_id"
        rankings[item.sample_id] = list(dict.fromkeys(getattr(h, key) for h in hits))
    return rankings


def _sample_rows(
    dataset: EvalDataset, results: list[SampleResult], retrieved_ids: list[list[str]]
) -> list[dict[str, Any]]:
    return [
        {
            "sample_id": item.sample_id,
            "interaction_id": item.interaction_id,
            "query": item.query,
            "answer": item.answer,
            "reference": item.reference,
            "retrieved_ids": ids,
            "reference_ids": item.reference_ids,
            "scores": result.scores,
            "failures": result.failures,
        }
        for item, result, ids in zip(dataset.items, results, retrieved_ids, strict=True)
    ]


def _csv(rows: list[dict[str, Any]]) -> str:
    names = sorted({n for row in rows for n in row["scores"]})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["sample_id", "query", "answer", *names, "failures"])
    for row in rows:
        writer.writerow(
            [
                row["sample_id"],
                row["query"],
                row["answer"] or "",
                *("" if row["scores"].get(n) is None else row["scores"][n] for n in names),
                "; ".join(f"{k}={v}" for k, v in row["failures"].items()),
            ]
        )
    return out.getvalue()


def list_runs(
    services: EvalParts, *, limit: int = 50, dataset: str | None = None
) -> list[dict[str, Any]]:
    with services.sessions() as session:
        query = select(EvalRun).order_by(EvalRun.created_at.desc()).limit(limit)
        if dataset:
            query = query.where(EvalRun.dataset == dataset)
        return [run_view(r) for r in session.scalars(query)]


def run_view(run: EvalRun, *, samples: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": run.id,
        "status": run.status,
        "error": run.error,
        "trigger": run.trigger,
        "source": run.source,
        "dataset": run.dataset,
        "dataset_hash": run.dataset_hash,
        "index_version": run.index_version_id,
        "embedder_version": run.embedder_version,
        "prompt_version": run.prompt_version,
        "generator": run.generator,
        "judge": run.judge,
        "n_samples": run.n_samples,
        "seconds": run.seconds,
        "primary_metric": run.primary_metric,
        "metrics": run.metrics,
        "failures": run.failures,
        "mlflow_run_id": run.mlflow_run_id,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
    if samples:
        view["samples"] = [
            {
                "sample_id": s.sample_id,
                "interaction_id": s.interaction_id,
                "query": s.query,
                "answer": s.answer,
                "reference": s.reference,
                "retrieved_ids": s.retrieved_ids,
                "reference_ids": s.reference_ids,
                "scores": s.scores,
                "failures": s.failures,
            }
            for s in run.samples
        ]
    return view


def get_run(services: EvalParts, run_id: str) -> dict[str, Any]:
    from rag_loop.errors import NotFound

    with services.sessions() as session:
        run = session.get(EvalRun, run_id)
        if run is None:
            raise NotFound(f"no evaluation run {run_id!r}; `rag-loop eval list` shows them")
        return run_view(run, samples=True)


def compare_by_version(services: EvalParts, dataset: str | None = None) -> list[dict[str, Any]]:
    """The latest finished run per (dataset, index version), to compare versions side by
    side."""
    with services.sessions() as session:
        query = select(EvalRun).where(EvalRun.status == "done").order_by(EvalRun.created_at)
        if dataset:
            query = query.where(EvalRun.dataset == dataset)
        latest: dict[tuple[str, int | None], EvalRun] = {}
        for run in session.scalars(query):
            latest[(run.dataset, run.index_version_id)] = run
        return [
            {
                "dataset": ds,
                "index_version": version,
                "embedder_version": run.embedder_version,
                "run_id": run.id,
                "created_at": run.created_at.isoformat(),
                "primary_metric": run.primary_metric,
                "metrics": run.metrics,
            }
            for (ds, version), run in sorted(
                latest.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)
            )
        ]


__all__ = ["JUDGE_METRICS", "EvalItem", "EvalRequest", "run_evaluation"]
