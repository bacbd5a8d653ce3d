"""The timeline benchmark's figures per shift (evals/bench_timeline.py), worked out by hand
on a small run: what the README's tables report must mean what they say."""

from __future__ import annotations

from typing import Any

import pytest

from evals.bench_timeline import ASKS_FIELDS, daily, shift_figures

LEVEL = 0.8  # the five days before the shift
SERVED = {5: 0.72, 6: 0.76, 7: 0.79}  # the shift's day, the intervention's, the next


def _run(promotion_hour: float | None, served: dict[int, float]) -> dict[str, Any]:
    """Twelve days of 4 asks each (two pools, one thumb down a day); a shift on day 5."""
    asks = []
    for day in range(12):
        for i in range(4):
            value = served.get(day, LEVEL)
            pool = "new" if day >= 5 and i % 2 else "old"
            thumb = "down" if i == 0 else ("up" if i == 1 else None)
            row = {
                "hour": day * 24 + i * 6 + 1,
                "ndcg_at_10": value,
                "recall_at_10": 1.0,
                "thumb": thumb,
                "groundedness_proxy": None,
                "pool": pool,
                "cluster": 0,
                "index_version_id": 1,
                "faithfulness": None,
            }
            asks.append([row[f] for f in ASKS_FIELDS])
    return {
        "asks_fields": ASKS_FIELDS,
        "asks": asks,
        "shifts": [{"name": "abrupt", "day": 5, "until_day": 12}],
        "drift_events": [{"hour": 3.0}, {"hour": 5 * 24 + 12.0}],  # one before the shift
        "promotions": [] if promotion_hour is None else [{"hour": promotion_hour}],
    }


def test_an_intervention_ends_the_degradation_and_the_curve_recovers() -> None:
    run = _run(6 * 24 + 3.0, SERVED)
    days = daily(run, 12)
    assert [d["asks"] for d in days] == [4] * 12
    assert days[5]["ndcg_at_10"] == pytest.approx(0.72)
    assert days[5]["thumbs"] == 2 and days[5]["thumbs_down_rate"] == 0.5
    (figure,) = shift_figures(run, days)
    assert figure["pre_shift_ndcg_at_10"] == LEVEL
    assert figure["hours_to_detect"] == 12.0  # the event before the shift is not counted
    assert figure["hours_to_intervene"] == 27.0
    # the largest drop up to the intervention's day: the shift's own day, 10%
    assert figure["degradation_before_intervention"] == pytest.approx(0.10)
    assert figure["shift_day_drop"] == pytest.approx(0.10)
    # day 7 (0.79) is within 2% of 0.8: recovered at its end, 72 h after the shift began
    assert figure["hours_to_recover"] == 72.0
    assert figure["area_below_level"] == pytest.approx(0.08 + 0.04 + 0.01)
    pools = figure["by_pool"]  # days 0-4 before, days 5-6 after
    assert pools["old"] == {
        "share_after": 0.5,
        "ndcg_at_10_before": LEVEL,
        "ndcg_at_10_after": 0.74,
    }
    assert pools["new"] == {"share_after": 0.5, "ndcg_at_10_before": None, "ndcg_at_10_after": 0.74}


def test_without_an_intervention_the_degradation_counts_to_the_end() -> None:
    worse = {**SERVED, 9: 0.68}  # after the recovery, a day lower still
    run = _run(None, worse)
    (figure,) = shift_figures(run, daily(run, 12))
    assert figure["hours_to_intervene"] is None
    assert figure["degradation_before_intervention"] == pytest.approx(0.15)
    assert figure["hours_to_recover"] == 72.0  # the first day back within 2%
    assert figure["area_below_level"] == pytest.approx(0.08 + 0.04 + 0.01 + 0.12)


def test_a_shift_the_run_never_reached_is_marked_so() -> None:
    run = _run(None, SERVED)
    run["asks"] = [a for a in run["asks"] if a[0] < 5 * 24]  # stopped before the shift
    assert shift_figures(run, daily(run, 12)) == [{"shift": "abrupt", "day": 5, "reached": False}]
