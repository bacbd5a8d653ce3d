"""The two benchmarks of the loop, run end to end as their READMEs run them, on small data
sets of the same layout written here: every step from the ingest to the table and the JSON,
through the real service (MiniLM, Chroma, SQLite, MLflow, the scheduler on a simulated
clock). What they report is checked against what the service logged, and no scored
question ever reaches the service.

The shared data sets (../shared/datasets) are not read: the suite runs without them, and
their ingest alone takes minutes."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOPICS = 6


class Words:
    """Seeded made-up words: six topics of 40 words each, and fresh words for the details
    that tell one passage from the others of its topic."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seen: set[str] = set()
        self.topics = [[self.word() for _ in range(40)] for _ in range(TOPICS)]

    def word(self) -> str:
        while True:
            syllables = self.rng.randint(2, 3)
            word = "".join(
                self.rng.choice("bdfgklmnprstvz") + self.rng.choice("aeiou")
                for _ in range(syllables)
            )
            if word not in self.seen:
                self.seen.add(word)
                return word

    def passage(self, topic: int) -> tuple[str, list[str]]:
        """A passage and the details a question about it asks for."""
        details = [self.word() for _ in range(6)]
        text = self.rng.sample(self.topics[topic], 14) + details
        self.rng.shuffle(text)
        return " ".join(text).capitalize() + ".", details

    def question(self, topic: int, details: list[str], confusers: Sequence[str] = ()) -> str:
        """Three of a passage's details and two topic words; `confusers` (details of other
        passages) take the place of two of the details."""
        own = self.rng.sample(details, 3 - min(len(confusers), 2))
        picked = own + list(confusers[:2]) + self.rng.sample(self.topics[topic], 2)
        self.rng.shuffle(picked)
        return "Does " + " ".join(picked) + " hold?"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_qrels(path: Path, qrels: dict[str, list[str]]) -> None:
    rows = "".join(f"{q}\t{d}\t1\n" for q, docs in qrels.items() for d in docs)
    path.write_text("query-id\tcorpus-id\tscore\n" + rows)


def beir_folder(
    folder: Path, words: Words, claims: int, distractors: int, hard: bool = False
) -> dict[str, str]:
    """A BEIR folder (SciFact's layout): one document per claim, the first two thirds of the
    claims in train, the rest in test. `hard` claims name one detail of their document and
    one of each of two others of its topic, so no retriever ranks them first every time.
    Returns the test claims' texts by id."""
    (folder / "qrels").mkdir(parents=True)
    corpus, queries, qrels = [], [], {}
    passages = [words.passage(n % TOPICS) for n in range(claims + distractors)]
    for n, (text, details) in enumerate(passages):
        topic = n % TOPICS
        corpus.append({"_id": str(1000 + n), "title": "", "text": text})
        if n < claims:
            others = [m for m in range(topic, len(passages), TOPICS) if m != n]
            confusers = (
                [words.rng.choice(passages[m][1]) for m in words.rng.sample(others, 2)]
                if hard
                else []
            )
            queries.append({"_id": str(n), "text": words.question(topic, details, confusers)})
            qrels[str(n)] = [str(1000 + n)]
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    cut = claims * 2 // 3
    write_qrels(folder / "qrels/train.tsv", {q: d for q, d in qrels.items() if int(q) < cut})
    write_qrels(folder / "qrels/test.tsv", {q: d for q, d in qrels.items() if int(q) >= cut})
    return {q["_id"]: q["text"] for q in queries if int(q["_id"]) >= cut}


def pubmedqa_folder(folder: Path, words: Words, items: int) -> dict[str, str]:
    """PubMedQA-L's layout: questions with two passages each; every third in the test
    split. Returns the test questions' texts by id."""
    folder.mkdir(parents=True)
    data, tested = {}, {}
    for n in range(items):
        topic = (n * 5) % TOPICS
        first, details = words.passage(topic)
        second, _ = words.passage(topic)
        pmid = str(20_000 + n)
        data[pmid] = {"QUESTION": words.question(topic, details), "CONTEXTS": [first, second]}
        if n % 3 == 0:
            tested[pmid] = "yes"
    (folder / "ori_pqal.json").write_text(json.dumps(data))
    (folder / "test_ground_truth.json").write_text(json.dumps(tested))
    return {pmid: data[pmid]["QUESTION"] for pmid in tested}


def asked(data_dir: Path) -> list[str]:
    """The questions the service was asked, from its own log."""
    with sqlite3.connect(data_dir / "rag_loop.db") as db:
        return [row[0] for row in db.execute("SELECT query FROM interactions")]


def run(script: str, *args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "evals" / script), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1200,
        env=None if env is None else {**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_the_loop_benchmark_runs_on_a_beir_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tinyfact"
    tested = beir_folder(folder, Words(1), claims=240, distractors=60, hard=True)
    work, out = tmp_path / "work", tmp_path / "loop.json"
    printed = run(
        "bench_loop.py",
        "--dataset", folder, "--user", "generous", "--seeds", "0", "--batches", "2",
        "--work", work, "--out", out,
        cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["dataset"] == "tinyfact" and report["seeds"] == [0]
    results = report["runs"][0]["results"]
    assert [r["after"] for r in results] == ["base, dense", "base, hybrid", "cycle 1", "cycle 2"]
    base = results[1]["ndcg_at_10"]
    for row in results:
        assert 0.0 <= row["ndcg_at_10"] <= 1.0 and 0.0 <= row["recall_at_100"] <= 1.0
    for row in results[2:]:
        assert row["state"] in ("promoted", "rejected")
        assert row["learned_gain"] == pytest.approx(row["ndcg_at_10"] - base)
        assert row["feedback_queries"] == (160 if row["after"] == "cycle 2" else 80)
        assert set(row["cycle_stages"]) >= {"collecting"}
    # the hard claims leave the gate room: the first cycle trains a candidate it judges
    first = results[2]
    assert first["gate_delta"] is not None and first["gate_room"] >= 10
    assert set(first["cycle_stages"]) >= {"collecting", "training", "indexing", "evaluating"}
    user = report["runs"][0]["simulated_user"]
    assert user["answers"] == user["answers_with_feedback"] == 160  # generous: every answer
    # the service was asked the 160 train claims, once each, and never a test claim
    questions = asked(work / "seed-0")
    assert len(questions) == 160 and not set(questions) & set(tested.values())
    assert "| cycle 2 |" in printed and str(out) in printed


@pytest.mark.slow
def test_the_timeline_benchmark_runs_every_arm_on_both_streams(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    words = Words(2)
    tested = {
        **beir_folder(datasets / "scifact", words, claims=60, distractors=30, hard=True),
        **pubmedqa_folder(datasets / "pubmedqa", words, items=120),
    }
    work, out = tmp_path / "work", tmp_path / "timeline.json"
    days, per_day = 6, 30
    options = (
        "--datasets", datasets, "--seeds", "0", "--days", days, "--asks-per-day", per_day,
        "--shift-day", 2, "--gradual-from", 3, "--gradual-to", 5, "--work", work,
    )  # fmt: skip
    printed = run("bench_timeline.py", *options, "--jobs", 2, "--out", out, cwd=tmp_path)
    report = json.loads(out.read_text())
    runs = {(r["stream"], r["arm"]): r for r in report["runs"]}
    assert set(runs) == {
        ("shifted", "silent"),
        ("shifted", "alerting"),
        ("shifted", "closed"),
        ("steady", "alerting"),
        ("steady", "closed"),
    }
    for (stream, arm), result in runs.items():
        data_dir = work / f"{stream}-seed0-{arm}"
        questions = asked(data_dir)
        assert len(questions) == days * per_day, (stream, arm)
        assert not set(questions) & set(tested.values()), (stream, arm)  # never a test question
        assert len(result["daily"]) == days
        # what the report counts is what the service logged
        with sqlite3.connect(data_dir / "rag_loop.db") as db:
            cycles = db.execute("SELECT count(*) FROM loop_cycles").fetchone()[0]
            events = db.execute("SELECT count(*) FROM events WHERE kind = 'drift'").fetchone()[0]
        assert len(result["cycles"]) == cycles and len(result["drift_events"]) == events
        if arm != "closed":
            assert cycles == 0 and not result["promotions"]
        if arm == "silent":
            assert result["drift_checks"] == 0 and events == 0
        else:
            assert result["drift_checks"] > 0  # every six simulated hours
        if stream == "shifted":
            (ingested,) = result["ingests"]
            assert ingested["at"].startswith("2027-01-06") and ingested["added"] == 60
            assert [f["shift"] for f in result["figures"]] == ["abrupt", "gradual"]
        else:
            assert result["ingests"] == [] and result["figures"] == []

    # one stream: an arm that serves what the silent arm serves scores what it scores (a
    # job's wall time may move an ask past midnight, so the sum over the days); the harder
    # claims after the abrupt shift pull the silent arm's days below the level
    def served(result: dict[str, Any]) -> float:
        return sum(d["ndcg_at_10"] * d["asks"] for d in result["daily"])

    silent = runs[("shifted", "silent")]
    for arm in ("alerting", "closed"):
        if not runs[("shifted", arm)]["promotions"]:
            assert served(runs[("shifted", arm)]) == pytest.approx(served(silent)), arm
    assert silent["figures"][0]["degradation_before_intervention"] > 0
    assert report["plots"] == [str(out.with_name("timeline-seed0.png"))]
    assert Path(report["plots"][0]).stat().st_size > 10_000
    assert "steady stream (no shift)" in printed and "time to detect (abrupt / gradual)" in printed

    # an arm cut off before it wrote its result is rebuilt from what its service logged:
    # the same served days and the same shift figures
    (work / "part-shifted-seed0-silent.json").unlink()
    again = tmp_path / "again.json"
    run("bench_timeline.py", *options, "--analyse", "--out", again, cwd=tmp_path)
    rebuilt = {(r["stream"], r["arm"]): r for r in json.loads(again.read_text())["runs"]}
    assert rebuilt.keys() == runs.keys()
    assert rebuilt[("shifted", "silent")]["unfinished"].endswith(f"{days * per_day} asks")
    served_keys = ("asks", "ndcg_at_10", "recall_at_10", "thumbs", "thumbs_down_rate")
    figure_keys = (
        "pre_shift_ndcg_at_10",
        "hours_to_detect",
        "degradation_before_intervention",
        "shift_day_drop",
        "hours_to_recover",
        "area_below_level",
    )
    again_silent = rebuilt[("shifted", "silent")]
    for day, before in zip(again_silent["daily"], silent["daily"], strict=True):
        assert {k: day[k] for k in served_keys} == pytest.approx(
            {k: before[k] for k in served_keys}
        )
    for figure, before in zip(again_silent["figures"], silent["figures"], strict=True):
        assert {k: figure[k] for k in figure_keys} == {k: before[k] for k in figure_keys}


@pytest.mark.slow
def test_the_timeline_benchmark_gives_every_arm_an_operators_golden_set(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    words = Words(2)
    beir_folder(datasets / "scifact", words, claims=60, distractors=30, hard=True)
    pubmedqa_folder(datasets / "pubmedqa", words, items=120)
    queries = {
        json.loads(line)["_id"]: json.loads(line)["text"]
        for line in (datasets / "scifact/queries.jsonl").read_text().splitlines()
    }
    work, out = tmp_path / "work", tmp_path / "timeline.json"
    options = (
        "--datasets", datasets, "--seeds", "0", "--days", 6, "--asks-per-day", 60,
        "--shift-day", 2, "--gradual-from", 3, "--gradual-to", 5, "--work", work,
        "--arms", "closed", "--streams", "shifted", "--golden", 20, "--jobs", 1,
    )  # fmt: skip
    # a cycle every 20 feedback events (about 12 a day), so some start before the shift
    frequent = {"RAG_LOOP_LOOP_TRIGGER_FEEDBACK_COUNT": "20"}
    printed = run("bench_timeline.py", *options, "--out", out, cwd=tmp_path, env=frequent)

    # 20 of the new documents' asked (train) claims, by a hash of their id, with their
    # documents; the closed loop's settings name the file, and no golden claim was asked
    rows = [json.loads(line) for line in (work / "golden-20.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    for row in rows:
        claim = row["id"].removeprefix("scifact-")
        assert row["question"] == queries[claim] and int(claim) < 40  # train: 0-39
        assert row["document_ids"] == [str(1000 + int(claim))]
    (closed,) = json.loads(out.read_text())["runs"]
    assert closed["golden"] == 20
    assert closed["settings"]["evaluation"]["golden_sets"] == [str(work / "golden-20.jsonl")]
    asked_questions = set(asked(work / "shifted-seed0-closed"))
    assert asked_questions and not asked_questions & {r["question"] for r in rows}
    assert "| operator's golden set | yes |" in printed

    # the cycles measured the golden set: no room before its documents were ingested (day
    # 2, hour 48), room after
    with sqlite3.connect(work / "shifted-seed0-closed" / "rag_loop.db") as db:
        splits = [
            (created, json.loads(gate).get("golden_split"))
            for created, gate in db.execute("SELECT created_at, gate FROM loop_cycles")
        ]
    measured = [(created, split) for created, split in splits if split and "tuning_room" in split]
    assert measured, splits
    for created, split in measured:
        room = split["tuning_room"] + split["judged_room"]
        assert (room > 0) == (created >= "2027-01-06"), (created, split)
    assert any(created >= "2027-01-06" for created, _ in measured)
