"""How training chooses its own settings: ranking the validation feedback queries.

A `FusionCheck` holds the training set's validation queries (never the gate's held-out
ones) and the golden sets' tuning questions when the cycle split them (never the part the
gate judges: rag_loop.loop.golden), the bank positions of their positives, the serving
index's document vectors (the bank) and each query's BM25 scores over the same chunks.
Given a query encoder it ranks every query the way an index version retrieves
(`rag_loop.retrieval.search.fuse`: the dense and BM25 top `candidates` pooled, each side
min-max normalised, fused with the dense weight) and reports chunk-level nDCG@10 for each
dense weight it may choose. With `questions` (the fit part's questions and the bank rows
they expand) it ranks as a version with dense expansion does: each row's cosine is the best
of the query's with the row and with the questions that expand it, embedded by the same
encoder. Query-side training scores the champion's encoder this way before the first epoch
and every epoch after it; it keeps the epoch, and the weight, that rank the validation
queries best.

The queries come in parts, as the gate's data sets do: the feedback's validation queries
(which stand for its held-out feedback) and each golden set's tuning questions (which stand
for its judged part). Once `guarded` by the champion's own scores, a weight is chosen only
when it ranks no part worse than the champion by more than the gate lets a metric drop on
any data set (`loop.max_regression`): the mean over all parts would otherwise trade one
part for another (after a new batch of documents, the golden set's new questions for the
feedback's old ones), and the gate would turn the candidate down for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rag_loop.evaluation.metrics import ranking_metrics
from rag_loop.retrieval.lexical import best_per_row
from rag_loop.retrieval.search import fuse

K = 10
# the dense weights a hybrid candidate may choose from: the champion's, or one step of the
# grid from it (a few validation queries should not swing the fusion far in one cycle: on
# SciFact a move of two steps would have passed the gate and served the test claims 0.013
# worse, README's weight probe)
WEIGHTS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
STEP = 0.1


PERFECT = 1.0 - 1e-9  # nDCG@10 is at most 1
FEEDBACK = "feedback"  # the part of the training set's validation queries


@dataclass(frozen=True)
class Scored:
    ndcg_at_10: float
    dense_weight: float | None  # None: dense retrieval, no fusion
    by_weight: dict[str, float]
    # per weight, the queries not ranked perfectly: the only ones that can show a gain
    room_by_weight: dict[str, int] = field(default_factory=dict)
    # per weight, each part's nDCG@10 (FusionCheck.parts)
    parts_by_weight: dict[str, dict[str, float]] = field(default_factory=dict)
    # whether the chosen weight keeps every part within the guard (FusionCheck.guarded); when
    # no weight does, the best is reported and `selection` is 0
    within_guard: bool = True

    @property
    def selection(self) -> float:
        """What chooses between epochs: nDCG@10 at the chosen weight, 0 when no weight keeps
        every part within the guard (so an epoch the gate would refuse is never kept)."""
        return self.ndcg_at_10 if self.within_guard else 0.0


@dataclass
class FusionCheck:
    queries: list[str]
    relevant: list[set[int]]  # bank positions of each query's positives
    bank: np.ndarray  # the index version's document vectors, rows normalised
    bm25: list[np.ndarray] | None  # each query's BM25 score of every bank row; None: dense
    incumbent: float | None  # the champion's dense weight (None: dense)
    candidates: int = 100
    # dense expansion: questions and the bank row each one expands (none: without it)
    questions: list[str] = field(default_factory=list)
    question_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    # each query's part: FEEDBACK or a golden set's tuning part (empty: all FEEDBACK)
    parts: list[str] = field(default_factory=list)
    # the least nDCG@10 a chosen weight may give each part (empty: no guard)
    floors: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.parts:
            self.parts = [FEEDBACK] * len(self.queries)

    @classmethod
    def build(
        cls,
        queries: list[str],
        relevant: list[set[int]],
        bank: np.ndarray,
        bm25: list[np.ndarray] | None,
        incumbent: float | None,
        candidates: int,
        parts: list[str] | None = None,
    ) -> FusionCheck:
        norms = np.linalg.norm(bank, axis=1, keepdims=True)
        unit = bank / np.where(norms == 0, 1.0, norms)
        return cls(
            queries,
            relevant,
            unit.astype(np.float32),
            bm25,
            incumbent,
            candidates,
            parts=parts or [],
        )

    @classmethod
    def from_examples(
        cls,
        examples_path: Path,
        bank_ids: list[str],
        bank: np.ndarray,
        bm25_of: Callable[[str], dict[str, float]] | None,
        incumbent: float | None,
        candidates: int,
        also: Iterable[tuple[str, Iterable[str], str]] = (),
    ) -> FusionCheck | None:
        """The validation part of a training set (part FEEDBACK) and the questions of `also`
        (each with its relevant chunk ids and its part: a golden set's tuning part), None
        when none is in the bank; `bm25_of(query)` gives the BM25 score by chunk id (None:
        the index is dense). A question in two parts counts in the first."""
        position = {chunk_id: i for i, chunk_id in enumerate(bank_ids)}
        relevant: dict[str, set[int]] = {}
        part_of: dict[str, str] = {}
        with examples_path.open(encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                at = position.get(row["positive_chunk_id"])
                if row.get("part") == "validation" and at is not None:
                    relevant.setdefault(row["anchor"], set()).add(at)
                    part_of.setdefault(row["anchor"], FEEDBACK)
        for query, chunk_ids, part in also:
            found = {position[c] for c in chunk_ids if c in position}
            if found:
                relevant.setdefault(query, set()).update(found)
                part_of.setdefault(query, part)
        if not relevant:
            return None
        queries = sorted(relevant)
        bm25 = None
        if bm25_of is not None:
            bm25 = []
            for query in queries:
                row_scores = np.zeros(len(bank_ids), dtype=np.float32)
                for chunk_id, value in bm25_of(query).items():
                    if chunk_id in position:
                        row_scores[position[chunk_id]] = value
                bm25.append(row_scores)
        return cls.build(
            queries,
            [relevant[q] for q in queries],
            bank,
            bm25,
            incumbent,
            candidates,
            [part_of[q] for q in queries],
        )

    def guarded(self, champion: Scored, tolerance: float) -> FusionCheck:
        """This check choosing only weights that rank every part at most `tolerance` worse
        than `champion` (the champion's scores on the same queries) does at its own weight."""
        at = champion.parts_by_weight[str(self.incumbent)]
        return replace(self, floors={part: value - tolerance for part, value in at.items()})

    def with_questions(self, expanded: dict[int, list[str]]) -> FusionCheck:
        """This check ranking as dense expansion with `expanded` (questions by bank row)."""
        rows = sorted(expanded)
        return replace(
            self,
            questions=[q for r in rows for q in expanded[r]],
            question_rows=np.array([r for r in rows for _ in expanded[r]], dtype=np.int64),
        )

    def asked(self, vectors: np.ndarray, question_vectors: np.ndarray | None) -> np.ndarray | None:
        """Per query embedded as a row of `vectors` and bank row, the best cosine with a
        question expanding the row (-1: none), as `LexicalIndex.question_scores` gives it;
        None without dense expansion."""
        if not self.questions or question_vectors is None:
            return None
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        questions = question_vectors / np.maximum(
            np.linalg.norm(question_vectors, axis=1, keepdims=True), 1e-12
        )
        to_questions = unit.astype(np.float32) @ questions.astype(np.float32).T
        rows = [best_per_row(self.question_rows, len(self.bank), c) for c in to_questions]
        return np.stack(rows) if rows else np.empty((0, len(self.bank)), dtype=np.float32)

    @property
    def weights(self) -> list[float | None]:
        if self.bm25 is None or self.incumbent is None:
            return [None]
        near = [w for w in WEIGHTS if abs(w - self.incumbent) <= STEP + 1e-9]
        return [*sorted({*near, self.incumbent})]

    def score(self, vectors: np.ndarray, question_vectors: np.ndarray | None = None) -> Scored:
        """nDCG@10 of the queries embedded as `vectors` (and, with dense expansion, the
        questions as `question_vectors`, by the same encoder), for each dense weight and
        each part; the best weight within the guard (`floors`) wins, ties going to the
        champion's."""
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        cosine = unit.astype(np.float32) @ self.bank.T
        asked = self.asked(unit, question_vectors)
        references = {str(i): [str(p) for p in r] for i, r in enumerate(self.relevant)}
        by_weight: dict[str, float] = {}
        room: dict[str, int] = {}
        by_part: dict[str, dict[str, float]] = {}
        for weight in self.weights:
            rankings = {
                str(i): [
                    str(p)
                    for p in self.rank(cosine[i], i, weight, None if asked is None else asked[i])
                ]
                for i in range(len(self.queries))
            }
            per_query = ranking_metrics(rankings, references, K)
            ndcg = [per_query[str(i)][f"ndcg_at_{K}"] for i in range(len(self.queries))]
            by_weight[str(weight)] = float(np.mean(ndcg))
            room[str(weight)] = sum(1 for value in ndcg if value < PERFECT)
            by_part[str(weight)] = {
                part: float(
                    np.mean([v for v, p in zip(ndcg, self.parts, strict=True) if p == part])
                )
                for part in part_names(self)
            }
        return self.choose(Scored(0.0, None, by_weight, room, by_part))

    def choose(self, scored: Scored) -> Scored:
        """`scored` (this check's figures per weight and part) with the weight chosen: the
        best of those that rank every part at or above its floor (`guarded`), ties going to
        the champion's; the best of all when none does (`within_guard` then False). A check
        guarded after it scored chooses again from its figures without ranking again."""

        def within(weight: float | None) -> bool:
            at = scored.parts_by_weight[str(weight)]
            return all(at.get(part, floor) >= floor - 1e-9 for part, floor in self.floors.items())

        allowed = [w for w in self.weights if within(w)]
        best = max(
            allowed or self.weights,
            key=lambda w: (scored.by_weight[str(w)], w == self.incumbent),
        )
        return replace(
            scored,
            ndcg_at_10=scored.by_weight[str(best)],
            dense_weight=best,
            within_guard=bool(allowed),
        )

    def rank(
        self, cosine: np.ndarray, row: int, weight: float | None, asked: np.ndarray | None = None
    ) -> list[int]:
        """The top 10 bank rows for query `row` whose cosines with the bank are `cosine`
        (and with the rows' questions `asked`, under dense expansion), as
        `rag_loop.retrieval.search.search` ranks them with `weight`."""
        depth = min(self.candidates, cosine.size)
        dense_top = np.argpartition(-cosine, depth - 1)[:depth]
        if weight is None or self.bm25 is None:
            return [int(i) for i in dense_top[np.argsort(-cosine[dense_top])][:K]]
        bm25 = self.bm25[row]
        lexical_top = np.argpartition(-bm25, depth - 1)[:depth]
        lexical_top = lexical_top[bm25[lexical_top] > 0]
        tops = [dense_top, lexical_top]
        if asked is not None:
            asked_top = np.argpartition(-asked, depth - 1)[:depth]
            tops.append(asked_top[asked[asked_top] > -1.0])
            cosine = np.maximum(cosine, asked)
        pool = np.unique(np.concatenate(tops))
        fused = fuse(cosine[pool].astype(np.float64), bm25[pool].astype(np.float64), weight)
        return [int(pool[i]) for i in np.argsort(-fused, kind="stable")[:K]]


def part_figures(check: FusionCheck, scored: Scored) -> dict[str, float]:
    """Each part's nDCG@10 at the weight `scored` chose, as flat metrics (`part_<n>`: the
    n-th of the check's parts in sorted order, `part_names`), and whether that weight keeps
    every part within the guard."""
    at = scored.parts_by_weight.get(str(scored.dense_weight), {})
    figures = {f"part_{n}": at[name] for n, name in enumerate(part_names(check)) if name in at}
    return {**figures, "within_guard": float(scored.within_guard)}


def part_names(check: FusionCheck) -> list[str]:
    return sorted(set(check.parts))


def evaluator(check: FusionCheck, batch_size: int = 64) -> Any:
    """`check` as a sentence-transformers evaluator, so the trainer scores every epoch and
    keeps the best (metric `eval_validation_ndcg_at_10`)."""
    from sentence_transformers.base.evaluation import SentenceEvaluator

    class FusedValidation(SentenceEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.name = "validation"
            self.primary_metric = "ndcg_at_10"
            self.greater_is_better = True
            self.last: Scored | None = None

        def __call__(
            self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
        ) -> dict[str, float]:
            vectors = model.encode(
                check.queries, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
            )
            questions = None
            if check.questions:
                questions = model.encode(
                    check.questions,
                    batch_size=batch_size,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            self.last = check.score(np.asarray(vectors), questions)
            # the trainer keeps the epoch with the best selection; an epoch no weight of
            # which stays within the guard scores 0 there
            metrics = {"ndcg_at_10": self.last.selection, **part_figures(check, self.last)}
            if self.last.dense_weight is not None:
                metrics["dense_weight"] = self.last.dense_weight
            metrics = self.prefix_name_to_metrics(metrics, self.name)
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    return FusedValidation()
