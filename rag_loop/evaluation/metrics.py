"""What an evaluation measures, per sample and per run.

Retrieval
    ndcg_at_K, recall_at_K, mrr_at_K   pytrec_eval (trec_eval's own code) over the ranking of
                                       reference ids; golden sets only (production labels
                                       only cover what was shown, so recall would be biased)
    id_context_precision/recall        Ragas' ID-based metrics on the contexts given to the
                                       generator; references are golden ids or feedback labels
Answers without a judge
    string_similarity, rouge_l         Ragas' non-LLM metrics against the reference answer (a
                                       golden answer or an approved correction)
    groundedness_proxy                 OFFLINE PROXY for hallucination, not Ragas: the share of
                                       answer sentences that some context sentence supports,
                                       i.e. has cosine similarity >= `proxy_similarity` with
                                       it under our embedder. It cannot see a wrong number
                                       in an otherwise similar sentence; use a judge for that.
    hallucination_rate_proxy           share of answers whose proxy is below the threshold
Answers with a judge (Ragas, LLM)
    faithfulness                       our hallucination measure
    hallucination_rate                 share of answers with faithfulness below the threshold
    answer_relevancy, llm_context_precision, llm_context_recall

A per-sample value is a float, or None when the metric does not apply (no reference, no
answer). A judge call that fails (timeout, unparsable output, unreachable, NaN verdict) is
recorded as a failure of that metric for that sample: it never becomes a score, the run's
mean is taken over the scored samples only, and `<metric>_failures` counts the rest.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag_loop.evaluation.datasets import EvalItem
from rag_loop.evaluation.judge import JudgeFailure, LangChainJudge, RagasEmbeddings
from rag_loop.index.embedders import Embedder

JUDGE_METRICS = ("faithfulness", "answer_relevancy", "llm_context_precision", "llm_context_recall")
CITATION = re.compile(r"\s*\[\d{1,3}\]")
SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
WORDLIKE = re.compile(r"\w")


@dataclass
class SampleResult:
    scores: dict[str, float | None] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # metric -> failure kind: message


def ir_metric_names(k: int) -> tuple[str, str, str]:
    return f"ndcg_at_{k}", f"recall_at_{k}", f"mrr_at_{k}"


def ranking_metrics(
    rankings: Mapping[str, Sequence[str]],
    references: Mapping[str, Sequence[str] | Mapping[str, int]],
    k: int,
) -> dict[str, dict[str, float]]:
    """nDCG@k, Recall@k and MRR@k per query with pytrec_eval.

    `rankings` maps a query id to ids best first (duplicates already removed);
    `references` a query id to its relevant ids (binary relevance) or to each id's grade
    (graded, as BEIR's qrels: nDCG gains by grade, Recall and MRR count every grade of 1 or
    more as relevant, grade 0 as not relevant)."""
    import pytrec_eval

    qrels = {
        q: dict(refs) if isinstance(refs, Mapping) else dict.fromkeys(refs, 1)
        for q, refs in references.items()
        if refs
    }
    # trec_eval sorts by score, so the score encodes the rank; MRR@k is the reciprocal rank
    # of the ranking cut at k (trec_eval's recip_rank has no cut-off of its own).
    run = {q: {d: float(len(ids) - i) for i, d in enumerate(ids)} for q, ids in rankings.items()}
    cut = {q: {d: s for d, s in docs.items() if s > len(docs) - k} for q, docs in run.items()}
    measures = {f"ndcg_cut.{k}", f"recall.{k}"}
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(
        {q: r for q, r in run.items() if q in qrels}
    )
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(
        {q: r for q, r in cut.items() if q in qrels}
    )
    ndcg, recall, mrr = ir_metric_names(k)
    out: dict[str, dict[str, float]] = {}
    for q in qrels:
        if q not in full:  # nothing retrieved at all: every measure is 0
            out[q] = {ndcg: 0.0, recall: 0.0, mrr: 0.0}
            continue
        out[q] = {
            ndcg: full[q][f"ndcg_cut_{k}"],
            recall: full[q][f"recall_{k}"],
            mrr: rr.get(q, {}).get("recip_rank", 0.0),
        }
    return out


def strip_citations(text: str) -> str:
    return CITATION.sub("", text).strip()


def sentences(text: str) -> list[str]:
    parts = (s.strip().lstrip("#-* ").strip() for s in SENTENCE.split(text))
    return [p for p in parts if len(p) >= 3]


def _plain(text: str) -> str:
    return " ".join(strip_citations(text).split())


def _run_together(answer: str, claim: str, whole: set[str]) -> bool:
    """Whether `claim`, a sentence of the answer without its citation marks, is quoted
    sentences run together: the marks cut it into pieces that are each whole sentences of
    the contexts. A quoted sentence without end punctuation (a heading, a cut-off line) runs
    into the next one once the marks are gone, and is no less quoted for it."""
    segments = CITATION.split(answer)
    text = "".join(segments)
    stripped = text.strip()
    start = stripped.find(claim)
    if start < 0 or len(segments) < 2:
        return False
    end, at, bounds = start + len(claim), len(text.lstrip()) - len(text), [start]
    for segment in segments[:-1]:
        at += len(segment)
        if start < at < end:
            bounds.append(at)
    if len(bounds) < 2:
        return False
    pieces = [stripped[a:b] for a, b in zip(bounds, [*bounds[1:], end], strict=True)]
    if any(WORDLIKE.search(piece) and not sentences(piece) for piece in pieces):
        return False  # a fragment too short to be a sentence (only punctuation may trail)
    found = [_plain(s) for piece in pieces for s in sentences(piece)]
    return bool(found) and all(s in whole for s in found)


def groundedness_proxy(
    embedder: Embedder, answer: str, contexts: Sequence[str], threshold: float
) -> float | None:
    """Share of answer sentences with a context sentence at cosine >= threshold. A sentence
    quoted word for word from a context (citation marks and runs of white space aside), or
    whole context sentences run together (`_run_together`), is supported without embedding
    anything: an extractive answer costs no model call."""
    claims = sentences(strip_citations(answer))
    support = [s for c in contexts for s in sentences(c)]
    if not claims:
        return None
    if not support:
        return 0.0
    quoted = [_plain(c) for c in contexts]
    open_claims = [c for c in claims if not any(_plain(c) in text for text in quoted)]
    if open_claims:
        whole = {_plain(s) for s in support}
        open_claims = [c for c in open_claims if not _run_together(answer, c, whole)]
    supported = len(claims) - len(open_claims)
    if open_claims:
        vectors = embedder.embed_documents(open_claims + support)
        similarity = vectors[: len(open_claims)] @ vectors[len(open_claims) :].T
        supported += int(np.sum(similarity.max(axis=1) >= threshold))
    return supported / len(claims)


async def _ragas_non_llm(item: EvalItem, answer: str | None) -> dict[str, float | None]:
    from ragas.metrics.collections import NonLLMStringSimilarity, RougeScore

    if not answer or not item.reference:
        return {"string_similarity": None, "rouge_l": None}
    response = strip_citations(answer)
    similarity = await NonLLMStringSimilarity().ascore(reference=item.reference, response=response)
    rouge = await RougeScore(rouge_type="rougeL", mode="fmeasure").ascore(
        reference=item.reference, response=response
    )
    return {"string_similarity": float(similarity.value), "rouge_l": float(rouge.value)}


async def _ragas_ids(retrieved: list[str], references: list[str]) -> dict[str, float | None]:
    import warnings

    from ragas.dataset_schema import SingleTurnSample

    with warnings.catch_warnings():
        # Ragas 0.4.3 has the ID-based metrics only in its classic API; their public names
        # warn and point to ragas.metrics.collections, which does not hold them yet
        warnings.filterwarnings("ignore", "Importing IDBased", DeprecationWarning)
        from ragas.metrics import IDBasedContextPrecision, IDBasedContextRecall

    if not references or not retrieved:
        return {"id_context_precision": None, "id_context_recall": None}
    sample = SingleTurnSample(
        retrieved_context_ids=list[str | int](retrieved),
        reference_context_ids=list[str | int](references),
    )
    precision = await IDBasedContextPrecision().single_turn_ascore(sample)
    recall = await IDBasedContextRecall().single_turn_ascore(sample)
    return {"id_context_precision": float(precision), "id_context_recall": float(recall)}


def score_without_judge(
    item: EvalItem, *, contexts_ids: list[str], embedder: Embedder, proxy_similarity: float
) -> SampleResult:
    """Ragas' non-LLM metrics and the groundedness proxy for one sample."""

    async def both() -> dict[str, float | None]:
        ids = await _ragas_ids(contexts_ids, item.reference_ids)
        return {**ids, **(await _ragas_non_llm(item, item.answer))}

    result = SampleResult(scores=asyncio.run(both()))
    contexts = [r["text"] for r in item.retrieved]
    result.scores["groundedness_proxy"] = (
        groundedness_proxy(embedder, item.answer, contexts, proxy_similarity)
        if item.answer
        else None
    )
    return result


def judge_metric_calls(
    judge: LangChainJudge, embedder: Embedder, names: Sequence[str]
) -> dict[str, Callable[[EvalItem], Awaitable[Any] | None]]:
    """For each judge metric: a function giving the Ragas call for an item, or None when the
    metric does not apply to it."""
    from ragas.metrics.collections import (
        AnswerRelevancy,
        ContextPrecisionWithReference,
        ContextRecall,
        Faithfulness,
    )

    faithfulness = Faithfulness(llm=judge)
    # temperature 0 makes Ragas' default of 3 generated questions 3 copies of one
    relevancy = AnswerRelevancy(llm=judge, embeddings=RagasEmbeddings(embedder), strictness=1)
    precision = ContextPrecisionWithReference(llm=judge)
    recall = ContextRecall(llm=judge)

    def contexts(item: EvalItem) -> list[str]:
        return [r["text"] for r in item.retrieved]

    calls: dict[str, Callable[[EvalItem], Awaitable[Any] | None]] = {
        "faithfulness": lambda i: (
            faithfulness.ascore(
                user_input=i.query,
                response=strip_citations(i.answer),
                retrieved_contexts=contexts(i),
            )
            if i.answer and i.retrieved
            else None
        ),
        "answer_relevancy": lambda i: (
            relevancy.ascore(user_input=i.query, response=strip_citations(i.answer))
            if i.answer
            else None
        ),
        "llm_context_precision": lambda i: (
            precision.ascore(
                user_input=i.query, reference=i.reference, retrieved_contexts=contexts(i)
            )
            if i.reference and i.retrieved
            else None
        ),
        "llm_context_recall": lambda i: (
            recall.ascore(user_input=i.query, retrieved_contexts=contexts(i), reference=i.reference)
            if i.reference and i.retrieved
            else None
        ),
    }
    return {name: calls[name] for name in names}


async def score_with_judge(
    items: Sequence[EvalItem],
    results: Sequence[SampleResult],
    calls: dict[str, Callable[[EvalItem], Awaitable[Any] | None]],
    *,
    concurrency: int,
    on_done: Callable[[], None] | None = None,
) -> None:
    """Run every applicable (sample, metric) judge call, `concurrency` at a time, writing
    scores or failures into `results`."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, name: str, call: Awaitable[Any]) -> None:
        async with gate:
            try:
                value = float((await call).value)
            except JudgeFailure as exc:
                results[index].failures[name] = f"{exc.kind}: {exc}"
                return
            except Exception as exc:  # a Ragas step that choked on what the judge said
                results[index].failures[name] = f"error: {type(exc).__name__}: {exc}"
                return
            finally:
                if on_done:
                    on_done()
            if math.isnan(value):
                results[index].failures[name] = "no_verdict: the judge gave nothing to score"
            else:
                results[index].scores[name] = value

    tasks = []
    for index, item in enumerate(items):
        for name, make in calls.items():
            call = make(item)
            if call is None:
                results[index].scores[name] = None
            else:
                tasks.append(one(index, name, call))
    await asyncio.gather(*tasks)


def aggregate(
    results: Sequence[SampleResult], names: Sequence[str], *, threshold: float
) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """Run-level metrics (means over scored samples, counts, rates) and failures by kind.

    The returned dict is exactly what MLflow records."""
    metrics: dict[str, float] = {}
    failures: dict[str, dict[str, int]] = {}
    for name in names:
        values = [r.scores[name] for r in results if r.scores.get(name) is not None]
        kinds = Counter(r.failures[name].split(":", 1)[0] for r in results if name in r.failures)
        if values:
            metrics[name] = float(np.mean([v for v in values if v is not None]))
        metrics[f"{name}_scored"] = float(len(values))
        if kinds or name in JUDGE_METRICS:
            metrics[f"{name}_failures"] = float(sum(kinds.values()))
            failures[name] = dict(kinds)
    for source, rate in (
        ("faithfulness", "hallucination_rate"),
        ("groundedness_proxy", "hallucination_rate_proxy"),
    ):
        values = [r.scores[source] for r in results if r.scores.get(source) is not None]
        if values:
            metrics[rate] = float(np.mean([v < threshold for v in values if v is not None]))
    return metrics, failures
