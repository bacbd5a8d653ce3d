"""The gate: does the candidate measurably beat the champion, and break nothing?

For every gate data set (the held-out feedback queries, then each golden set) candidate and
champion are ranked the same way. The candidate passes when

- the primary metric (`loop.primary_metric`, nDCG@10 by default) improves by at least
  `loop.min_improvement` on the held-out feedback queries: the questions users actually
  ask, which the feedback is about (without a held-out split, on the golden sets, averaged
  weighted by their questions), and
- no tracked metric (nDCG, Recall and MRR at k) drops by more than `loop.max_regression`
  on any data set: the golden sets guard what already works.

and the primary metric was measured on at least `loop.min_gate_queries` questions: on a
handful, one question ranked differently moves the mean more than the margin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rag_loop.evaluation.metrics import ir_metric_names
from rag_loop.settings import LoopSettings


def decide(runs: dict[str, dict[str, Any]], settings: LoopSettings, k: int) -> dict[str, Any]:
    tracked = list(ir_metric_names(k))
    primary = settings.primary_metric
    if primary not in tracked:
        tracked.insert(0, primary)
    by_dataset: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs.values():
        by_dataset.setdefault(run["dataset"], {})[run["role"]] = run
    deltas: dict[str, float] = {}
    reasons: list[str] = []
    weighted, weight = 0.0, 0
    has_heldout = any(r.get("kind") == "heldout" for r in runs.values())
    measured_on: list[str] = []
    for dataset, roles in sorted(by_dataset.items()):
        champion, candidate = roles.get("champion"), roles.get("candidate")
        if champion is None or candidate is None:
            continue
        label = Path(dataset).stem
        if label == "heldout":
            label = "heldout_feedback"
        for metric in tracked:
            before = champion["metrics"].get(metric)
            after = candidate["metrics"].get(metric)
            if before is None or after is None:
                continue
            delta = after - before
            deltas[f"{label}.{metric}"] = round(delta, 6)
            if delta < -settings.max_regression:
                reasons.append(
                    f"{metric} on {label} dropped by {-delta:.4f} "
                    f"({before:.4f} -> {after:.4f}; allowed {settings.max_regression})"
                )
        counts = not has_heldout or candidate.get("kind") == "heldout"
        if counts and primary in champion["metrics"] and primary in candidate["metrics"]:
            measured_on.append(label)
            n = int(candidate.get("n_samples") or 1)
            weighted += n * (candidate["metrics"][primary] - champion["metrics"][primary])
            weight += n
    if weight == 0:
        return {
            "passed": False,
            "reasons": [f"no data set measured {primary}"],
            "deltas": deltas,
            "primary_metric": primary,
            "primary_delta": None,
        }
    primary_delta = weighted / weight
    deltas["primary"] = round(primary_delta, 6)
    primary_label = f"{primary} on {', '.join(measured_on)}"
    if primary_delta < settings.min_improvement:
        reasons.insert(
            0,
            f"{primary_label} changed by {primary_delta:+.4f}; the gate needs at least "
            f"+{settings.min_improvement}",
        )
    if weight < settings.min_gate_queries:
        reasons.insert(
            0,
            f"{primary_label} was measured on {weight} questions; the gate needs at least "
            f"{settings.min_gate_queries} (loop.min_gate_queries)",
        )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "deltas": deltas,
        "primary_metric": primary,
        "primary_measured_on": measured_on,
        "primary_delta": round(primary_delta, 6),
    }
