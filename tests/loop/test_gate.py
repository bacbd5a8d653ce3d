"""The gate's verdict on evaluation figures: a gain big enough, nothing broken, and measured
on enough questions (the figures are what the cycle's evaluation runs store)."""

from __future__ import annotations

from typing import Any

from rag_loop.loop.gate import decide
from rag_loop.settings import LoopSettings

METRICS = ("ndcg_at_10", "recall_at_10", "mrr_at_10")


def _runs(n_heldout: int, gain: float, golden_drop: float = 0.0) -> dict[str, dict[str, Any]]:
    def run(dataset: str, kind: str, role: str, n: int, value: float) -> dict[str, Any]:
        return {
            "dataset": dataset,
            "kind": kind,
            "role": role,
            "n_samples": n,
            "metrics": dict.fromkeys(METRICS, value),
        }

    return {
        "h|champion": run("/t/heldout.jsonl", "heldout", "champion", n_heldout, 0.70),
        "h|candidate": run("/t/heldout.jsonl", "heldout", "candidate", n_heldout, 0.70 + gain),
        "g|champion": run("/t/questions.jsonl", "golden", "champion", 98, 0.90),
        "g|candidate": run("/t/questions.jsonl", "golden", "candidate", 98, 0.90 - golden_drop),
    }


def test_a_gain_on_enough_held_out_questions_passes() -> None:
    verdict = decide(_runs(40, 0.03), LoopSettings(), 10)
    assert verdict["passed"], verdict
    assert verdict["primary_measured_on"] == ["heldout_feedback"]  # the golden set guards only
    assert verdict["primary_delta"] == 0.03


def test_a_gain_on_a_handful_of_questions_does_not() -> None:
    verdict = decide(_runs(6, 0.05), LoopSettings(), 10)
    assert not verdict["passed"]
    assert verdict["reasons"] == [
        "ndcg_at_10 on heldout_feedback was measured on 6 questions; the gate needs at least "
        "10 (loop.min_gate_queries)"
    ]
    assert decide(_runs(6, 0.05), LoopSettings(min_gate_queries=5), 10)["passed"]


def test_too_small_a_gain_or_a_broken_golden_set_is_rejected() -> None:
    small = decide(_runs(40, 0.002), LoopSettings(), 10)
    assert not small["passed"] and "the gate needs at least +0.005" in small["reasons"][0]
    broken = decide(_runs(40, 0.03, golden_drop=0.05), LoopSettings(), 10)
    assert not broken["passed"]
    assert any(r.startswith("ndcg_at_10 on questions dropped by 0.0500") for r in broken["reasons"])
