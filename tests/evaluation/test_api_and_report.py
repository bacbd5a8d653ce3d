"""Evaluation over real HTTP, the report opened in headless Chromium, and the schedule."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_loop.scheduler import start_schedule
from rag_loop.services import Services
from tests.conftest import ARTIFACTS, assert_error_shape, finished_job


def test_evaluation_routes(api: httpx.Client, admin_headers: dict[str, str]) -> None:
    assert_error_shape(api.post("/v1/evals", json={}), 401, "unauthorized")
    queued = api.post("/v1/evals", json={"limit": 10}, headers=admin_headers)
    job = finished_job(api, queued, admin_headers)  # 202 with a job, with or without a queue
    assert job["kind"] == "evaluation" and job["status"] == "done", job
    run = api.get(f"/v1/evals/{job['result']['eval_run_id']}", headers=admin_headers).json()
    assert run["status"] == "done" and run["trigger"] == "api" and run["n_samples"] == 10
    assert run["metrics"]["ndcg_at_10"] > 0.5 and len(run["samples"]) == 10

    listed = api.get("/v1/evals", headers=admin_headers).json()
    assert [r["id"] for r in listed] == [run["id"]] and listed[0]["samples"] is None
    one = api.get(f"/v1/evals/{run['id']}", headers=admin_headers).json()
    assert one["metrics"] == run["metrics"]
    compare = api.get("/v1/evals/compare", headers=admin_headers).json()
    assert compare[0]["index_version"] == 1 and compare[0]["run_id"] == run["id"]

    assert_error_shape(
        api.post("/v1/evals", json={"golden_set": "nope"}, headers=admin_headers),
        404,
        "not_found",
    )
    assert_error_shape(api.post("/v1/evals", json={"index_version": 9}, headers=admin_headers), 404)
    bad = assert_error_shape(
        api.post("/v1/evals", json={"window": 0, "x": 1}, headers=admin_headers),
        422,
        "validation_failed",
    )
    assert {d["field"] for d in bad["details"]} == {"body.window", "body.x"}
    assert_error_shape(api.get("/v1/evals/unknown", headers=admin_headers), 404, "not_found")

    drift = api.post("/v1/drift", headers=admin_headers)
    assert drift.status_code == 200 and drift.json()["drifted"] is False
    assert api.get("/v1/events?kind=drift", headers=admin_headers).json() == []


@pytest.mark.slow
def test_report_renders_in_headless_chromium_with_plots_and_worst_answers(
    api: httpx.Client, admin_headers: dict[str, str], tmp_path: Path, browser: Any
) -> None:
    bad = api.post("/v1/ask", json={"query": "Can I take the bike on a plane?"}).json()
    api.post(
        "/v1/feedback",
        json={
            "interaction_id": bad["interaction_id"],
            "token": bad["feedback_token"],
            "thumb": "down",
            "chunk_labels": [{"chunk_id": bad["sources"][0]["chunk_id"], "relevant": False}],
            "correction": "Bikes cannot travel by plane; use the train.",
        },
    ).raise_for_status()
    good = api.post("/v1/ask", json={"query": "How long does a full charge take?"}).json()
    api.post(
        "/v1/feedback",
        json={
            "interaction_id": good["interaction_id"],
            "token": good["feedback_token"],
            "thumb": "up",
        },
    ).raise_for_status()
    for body in ({"limit": 20}, {"source": "production"}):
        queued = api.post("/v1/evals", json=body, headers=admin_headers)
        assert finished_job(api, queued, admin_headers)["status"] == "done"
    api.post("/v1/drift", headers=admin_headers).raise_for_status()

    summary = api.get("/v1/reports/latest?format=json", headers=admin_headers).json()
    assert summary["worst_interactions"][0]["interaction_id"] == bad["interaction_id"]
    assert "thumbs down" in summary["worst_interactions"][0]["why"]
    assert {r["source"] for r in summary["latest_runs"]} == {"golden", "production"}
    assert summary["drift"] and summary["thumbs_by_day"][0]["thumbs"] == 2

    page = api.get("/v1/reports/latest", headers=admin_headers)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text and "http://" not in page.text.split("<body>")[1]
    report = tmp_path / "report.html"
    report.write_text(page.text)

    browser.get(report.as_uri())
    plots = browser.execute_script(
        "return Array.from(document.querySelectorAll('img.plot'))"
        ".map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
    )
    assert len(plots) == 5, plots
    assert all(complete and width > 300 and height > 100 for _, complete, width, height in plots)
    text = browser.find_element("tag name", "body").text
    assert "Worst interactions" in text and "Can I take the bike on a plane?" in text
    assert "thumbs down" in text and "not relevant" in text
    browser.save_screenshot(str(ARTIFACTS / "evaluation-report.png"))


def test_the_schedule_runs_golden_production_and_drift(
    make_settings, embedder, tmp_path: Path
) -> None:
    """Two processes' schedules share one database: a firing runs once."""
    from rag_loop import jobs
    from rag_loop.corpus.ingest import ingest
    from rag_loop.evaluation import service
    from rag_loop.interactions.ask import ask
    from tests.conftest import CORPUS, QUESTIONS

    settings = make_settings(evaluation={"schedule": "0 3 * * *", "golden_sets": [str(QUESTIONS)]})
    services = Services.from_settings(settings, embedder=embedder)
    other = Services.from_settings(settings, embedder=embedder)
    schedulers = [start_schedule(services), start_schedule(other)]
    try:
        assert schedulers[0] is not None and schedulers[1] is not None
        due = [s.get_job("evaluation-round") for s in schedulers]
        assert due[0].next_run_time.hour == 3
        ingest(services, CORPUS, actor="test")
        ask(services, "How much is the theft excess?")
        soon = datetime.now(UTC) + timedelta(seconds=2)
        if 27 <= soon.second <= 33:  # firings name their minute by rounding: not mid-minute
            soon += timedelta(seconds=8)
        for job in due:
            job.modify(next_run_time=soon)  # due at once, in both
        deadline = time.monotonic() + 180
        while len(service.list_runs(services)) < 2 or not services_drift(services):
            assert time.monotonic() < deadline, "the scheduled round did not run"
            time.sleep(0.5)
        time.sleep(2)  # had the other process also run it, its runs would show by now
        runs = service.list_runs(services)
        assert sorted((r["source"], r["trigger"], r["status"]) for r in runs) == [
            ("golden", "schedule", "done"),
            ("production", "schedule", "done"),
        ]
        firings = [j for j in jobs.list_jobs(services) if j["kind"] == "scheduled"]
        assert [(j["payload"]["name"], j["status"]) for j in firings] == [
            ("evaluation-round", "done")
        ]
    finally:
        for scheduler in schedulers:
            if scheduler is not None:
                scheduler.shutdown(wait=True)
        services.close()
        other.close()


def services_drift(services: Services) -> bool:
    from rag_loop.evaluation.drift import recent_checks

    return bool(recent_checks(services.engine))
