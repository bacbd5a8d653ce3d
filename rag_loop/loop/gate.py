"""The gate: does the candidate measurably beat the champion, and break nothing?

For every gate data set (the held-out feedback queries, then each golden set, or its judged
part when the cycle split it: rag_loop.loop.golden) candidate and champion are ranked the
same way. The candidate passes when

- the primary metric (`loop.primary_metric`, nDCG@10 by default) improves by at least
  `loop.min_improvement` on the held-out feedback queries: the questions users actually
  ask, which the feedback is about (without a held-out split, or when too few of its
  questions have room, below, on the golden sets, averaged over their questions: the
  operator's labelled questions judge what sparse feedback taught). The change is the mean
  over the questions that name a document the corpus holds (below); and
- no tracked metric (nDCG, Recall and MRR at k) drops by more than `loop.max_regression`
  on any data set, over the same questions: the golden sets guard what already works.

and the primary metric was measured on at least `loop.min_gate_queries` questions that the
champion did not already score perfectly (the questions with room): on a handful, one
question ranked differently moves the mean more than the margin.

Every verdict also gives a paired permutation test over those questions (each question's
candidate and champion scores swapped at random, i.e. the sign of its difference
flipped): the p-value of a mean gain this large if the candidate were no better, and how
many questions ranked better, worse and alike. `loop.max_p_value` below 1 requires it; by
default it is recorded only, since on held-out sets where most questions rank alike the
test turned down candidates that were better on the benchmark's test split (README).

Only on questions with room can a candidate show a gain; a question none of whose
documents the corpus holds has none, and the cycle leaves it out of the per-question scores
and so out of the mean change: a golden set half of whose questions are about documents
not (or no longer) ingested needs the same gain as one the corpus answers whole, where the
runs' own means, which score such a question 0 for both, would halve it. The guard
against regressions takes every metric over the same questions, so a drop on half a
golden set is not halved either.
Feedback confirms what was served
(a thumb rates the answer's first citation), so most held-out questions of sparse feedback
have none: 14 held-out questions with room on one of them let a candidate through on that
one question (README), which the floor on questions with room now stops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag_loop.evaluation.metrics import ir_metric_names
from rag_loop.settings import LoopSettings

PERFECT = 1.0 - 1e-9  # nDCG, Recall and MRR at k are at most 1
PERMUTATIONS = 9999  # exact below 2**13 differing questions, seeded sign flips above


def paired_p_value(differences: Sequence[float]) -> float:
    """One-sided p-value of the mean of `differences` (candidate minus champion, one per
    question) under the null hypothesis that the candidate is no better: each difference's
    sign flipped at random (scipy's paired permutation test; questions ranked alike carry
    no sign and are left out, which leaves the p-value unchanged)."""
    from scipy.stats import permutation_test

    changed = np.asarray([d for d in differences if d != 0], dtype=np.float64)
    if changed.size == 0:
        return 1.0
    if changed.size == 1:  # two sign patterns (scipy wants two observations)
        return 0.5 if changed[0] > 0 else 1.0
    result = permutation_test(
        (changed,),
        lambda d, axis: np.mean(d, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=PERMUTATIONS,
        alternative="greater",
        rng=0,
    )
    return float(result.pvalue)


def with_room(champion_scores: Iterable[float]) -> int:
    """How many questions the champion did not already score perfectly: the only ones on
    which a candidate can show a gain."""
    return sum(1 for value in champion_scores if value < PERFECT)


def below_floor(measured: int, room: int, settings: LoopSettings, questions: str) -> str | None:
    """The gate's floor, in one place: why a primary metric measured on `measured`
    `questions`, `room` of which the champion did not already score perfectly, cannot
    decide a promotion (`loop.min_gate_queries`), or None."""
    floor, metric = settings.min_gate_queries, settings.primary_metric
    if measured < floor:
        return (
            f"{metric} was measured on {measured} {questions}; the gate needs at least "
            f"{floor} (loop.min_gate_queries)"
        )
    if room < floor:
        return (
            f"the champion already scores all but {room} of the {measured} {questions} "
            f"perfectly ({metric}), and a gain can show on those only; the gate needs at "
            f"least {floor} (loop.min_gate_queries)"
        )
    return None


def too_few_to_judge(
    champion_scores: Mapping[str, float],
    settings: LoopSettings,
    questions: str = "held-out feedback queries",
) -> str | None:
    """The floor of `decide`, known before any candidate exists: why no candidate could pass
    on these `questions` (the champion's primary metric per question), or None."""
    return below_floor(
        len(champion_scores), with_room(champion_scores.values()), settings, questions
    )


def tracked_metrics(settings: LoopSettings, k: int) -> list[str]:
    """The metrics the gate compares on every data set: the primary one, nDCG, Recall and
    MRR at `k`."""
    tracked = list(ir_metric_names(k))
    if settings.primary_metric not in tracked:
        tracked.insert(0, settings.primary_metric)
    return tracked


PerQuestion = Mapping[str, Mapping[str, Mapping[str, float]]]  # run key -> metric -> question


def _paired(
    questions: PerQuestion, before_key: str, after_key: str, metric: str
) -> list[tuple[float, float]] | None:
    """Champion's and candidate's `metric` on each question both runs scored (in a stable
    order), or None when either run has no per-question scores of it."""
    before_by = questions.get(before_key, {}).get(metric)
    after_by = questions.get(after_key, {}).get(metric)
    if before_by is None or after_by is None:
        return None
    return [(before_by[q], after_by[q]) for q in sorted(after_by) if q in before_by]


def decide(
    runs: dict[str, dict[str, Any]],
    settings: LoopSettings,
    k: int,
    questions: PerQuestion,
    primary_kind: str | None = None,
) -> dict[str, Any]:
    """The verdict on the gate's evaluation `runs` (key: `<dataset>|<role>`), with
    `questions[key][metric]`: the run's scores of `metric` per question id, for the
    questions the corpus can answer. The primary metric is measured on the runs of
    `primary_kind` ("heldout" or "golden"); by default on the held-out feedback queries, or
    on the golden sets when there are none. Every data set guards against regressions
    either way, each metric's change taken over the same questions as the primary's (the
    runs' own means where a metric has no per-question scores)."""
    tracked = tracked_metrics(settings, k)
    primary = settings.primary_metric
    by_dataset: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs.values():
        by_dataset.setdefault(run["dataset"], {})[run["role"]] = run
    deltas: dict[str, float] = {}
    reasons: list[str] = []
    weight = 0  # the questions of the data sets the primary metric is measured on
    gained, compared = 0.0, 0  # the sum of its changes, over the questions compared
    scored_per_question = False  # whether any of those data sets had per-question scores
    differences: list[float] = []
    room = 0  # questions the champion did not score perfectly
    if primary_kind is None and any(r.get("kind") == "heldout" for r in runs.values()):
        primary_kind = "heldout"
    measured_on: list[str] = []
    keys = {(run["dataset"], run["role"]): key for key, run in runs.items()}
    for dataset, roles in sorted(by_dataset.items()):
        champion, candidate = roles.get("champion"), roles.get("candidate")
        if champion is None or candidate is None:
            continue
        label = Path(dataset).stem
        if label == "heldout":
            label = "heldout_feedback"
        before_key, after_key = keys[(dataset, "champion")], keys[(dataset, "candidate")]
        paired = {m: _paired(questions, before_key, after_key, m) for m in tracked}
        for metric in tracked:
            pairs = paired[metric]
            if pairs is None:  # no per-question scores: the runs' own means
                before = champion["metrics"].get(metric)
                after = candidate["metrics"].get(metric)
                if before is None or after is None:
                    continue
            elif not pairs:
                continue  # the corpus answers none of its questions: nothing can drop
            else:  # the means over the questions the corpus can answer
                before = sum(b for b, _ in pairs) / len(pairs)
                after = sum(a for _, a in pairs) / len(pairs)
            delta = after - before
            deltas[f"{label}.{metric}"] = round(delta, 6)
            if delta < -settings.max_regression:
                reasons.append(
                    f"{metric} on {label} dropped by {-delta:.4f} "
                    f"({before:.4f} -> {after:.4f}; allowed {settings.max_regression})"
                )
        counts = primary_kind is None or candidate.get("kind") == primary_kind
        if counts and primary in champion["metrics"] and primary in candidate["metrics"]:
            measured_on.append(label)
            n = int(candidate.get("n_samples") or 1)
            weight += n
            pairs = paired[primary]
            if pairs is not None:
                # per question: a question the corpus cannot answer has no score there and
                # leaves the mean alone (in the run's own mean it only dilutes the change)
                changes = [after - before for before, after in pairs]
                gained += sum(changes)
                compared += len(changes)
                differences += changes
                room += with_room(before for before, _ in pairs)
                scored_per_question = True
            else:  # no per-question scores: the runs' means, weighted by their questions
                gained += n * (candidate["metrics"][primary] - champion["metrics"][primary])
                compared += n
    if weight == 0:
        return {
            "passed": False,
            "reasons": [f"no data set measured {primary}"],
            "deltas": deltas,
            "primary_metric": primary,
            "primary_delta": None,
        }
    primary_delta = gained / compared if compared else 0.0
    deltas["primary"] = round(primary_delta, 6)
    primary_label = f"{primary} on {', '.join(measured_on)}"
    if primary_delta < settings.min_improvement:
        perfect = len(differences) - room
        reasons.insert(
            0,
            f"{primary_label} changed by {primary_delta:+.4f}; the gate needs at least "
            f"+{settings.min_improvement}"
            + (
                f" (the champion already scored {perfect} of the {len(differences)} questions "
                f"perfectly: a gain could show on {room} only)"
                if perfect
                else ""
            ),
        )
    better = sum(1 for d in differences if d > 0)
    worse = sum(1 for d in differences if d < 0)
    p_value = paired_p_value(differences)
    if primary_delta >= settings.min_improvement and p_value > settings.max_p_value:
        reasons.insert(
            0,
            f"{primary_label} changed by {primary_delta:+.4f}, which chance explains: "
            f"{better} questions ranked better, {worse} worse, "
            f"{len(differences) - better - worse} alike; p = {p_value:.3f} by a paired "
            f"permutation test, the gate needs at most {settings.max_p_value} "
            "(loop.max_p_value)",
        )
    # without per-question scores nothing is known of the room: the floor counts questions
    # (with them, a set none of whose questions the corpus can answer has no room at all)
    where = ", ".join(measured_on)
    known = room if scored_per_question else weight
    floor = below_floor(weight, known, settings, f"questions ({where})")
    if floor is not None:
        reasons.insert(0, floor)
    return {
        "passed": not reasons,
        "reasons": reasons,
        "deltas": deltas,
        "primary_metric": primary,
        "primary_measured_on": measured_on,
        "primary_delta": round(primary_delta, 6),
        "primary_questions": {
            "better": better,
            "worse": worse,
            "alike": len(differences) - better - worse,
        },
        "primary_p_value": round(p_value, 6),
        "primary_room": room,
    }
