"""The loop benchmark reads any folder in the BEIR layout (evals/bench_loop.py), and never
asks a question it scores: not by id, not by its text under another id."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evals.bench_loop import beir, ranked_documents, set_golden_aside
from rag_loop.evaluation.datasets import load_golden


def _folder(tmp_path: Path, splits: dict[str, dict[str, str]], texts: dict[str, str]) -> Path:
    folder = tmp_path / "beirish"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d0", "title": "", "text": "x"}))
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in texts.items())
    )
    for split, qrels in splits.items():
        rows = "".join(f"{q}\t{d}\t1\n" for q, d in qrels.items())
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


def test_the_train_split_is_replayed_without_the_scored_questions(tmp_path: Path) -> None:
    texts = {"1": "Obesity decreases life quality.", "2": "obesity  decreases life quality.",
             "3": "Something else.", "4": "A fourth claim."}  # fmt: skip
    folder = _folder(tmp_path, {"train": {"2": "d0", "3": "d0"}, "test": {"1": "d0"}}, texts)
    domain = beir(folder)
    assert domain.test == {"1": {"d0"}}
    assert domain.replay == {"3": {"d0"}}  # "2" is the test claim's text under another id


def test_without_train_the_dev_split_and_without_either_half_the_test_is_replayed(
    tmp_path: Path,
) -> None:
    texts = {str(i): f"question number {i}" for i in range(40)}
    test = {str(i): "d0" for i in range(30)}
    with_dev = beir(_folder(tmp_path / "a", {"dev": {"30": "d0"}, "test": test}, texts))
    assert set(with_dev.replay) == {"30"} and set(with_dev.test) == set(test)
    halves = beir(_folder(tmp_path / "b", {"test": test}, texts))
    assert set(halves.replay) | set(halves.test) == set(test)
    assert not set(halves.replay) & set(halves.test)
    assert 5 <= len(halves.replay) <= 25  # about half, by a hash of the id: the same every run
    assert beir(_folder(tmp_path / "c", {"test": test}, texts)).replay == halves.replay


def test_graded_qrels_are_kept_for_scoring_and_grade_0_is_not_relevant(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"train": {"2": "d0"}}, {"1": "a claim", "2": "another"})
    rows = "query-id\tcorpus-id\tscore\n1\td0\t2\n1\td1\t1\n1\td2\t0\n"
    (folder / "qrels" / "test.tsv").write_text(rows)
    domain = beir(folder)
    assert domain.test == {"1": {"d0", "d1"}}
    assert domain.references() == {"1": {"d0": 2, "d1": 1}}
    assert domain.replay == {"2": {"d0"}}


def test_a_question_that_is_a_document_too_does_not_rank_itself() -> None:
    assert ranked_documents(["q7", "d1", "d1", "d2", "q7"], "q7") == ["d1", "d2"]
    assert ranked_documents(["d2", "d1", "d2"], "q7") == ["d2", "d1"]


def test_a_folder_that_is_not_beir_says_what_is_missing(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"train": {"1": "d0"}}, {"1": "q"})
    with pytest.raises(SystemExit, match=r"qrels/test\.tsv is missing"):
        beir(folder)


def test_the_operators_golden_set_is_replayed_questions_never_asked(tmp_path: Path) -> None:
    """`--golden N`: N replayed questions, the same whatever the seed, become a golden set
    the service can read, with their relevant documents, and leave the replayed stream."""
    texts = {str(i): f"question number {i}" for i in range(40)}
    train = {str(i): "d0" for i in range(10, 40)}
    domain = beir(_folder(tmp_path, {"train": train, "test": {"0": "d0"}}, texts))
    replayed = dict(domain.replay)
    path = tmp_path / "golden.jsonl"
    set_golden_aside(domain, 8, path)
    golden = load_golden(path)
    ids = {item.sample_id for item in golden.items}
    assert len(ids) == 8 and ids <= set(replayed) and not ids & set(domain.replay)
    assert set(domain.replay) | ids == set(replayed)
    assert {item.query for item in golden.items} == {texts[q] for q in ids}
    assert all(item.reference_ids == ["d0"] for item in golden.items)
    again = beir(_folder(tmp_path / "again", {"train": train, "test": {"0": "d0"}}, texts))
    set_golden_aside(again, 8, tmp_path / "again.jsonl")
    assert again.replay == domain.replay  # chosen by id, not by chance
    with pytest.raises(SystemExit, match="replays 22 questions"):
        set_golden_aside(domain, 20, path)  # more than half of what is left


def test_two_runs_never_share_a_work_folder(tmp_path: Path) -> None:
    """A second run on the same --work would replace the first one's seed folders under
    it (its database, its index): it is refused, before anything is read or written."""
    script = Path(__file__).resolve().parents[2] / "evals" / "bench_loop.py"
    with (tmp_path / ".bench-loop.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                "--dataset",
                str(tmp_path / "none"),
                "--work",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 1
    assert "another bench_loop run is using" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bench-loop.lock"]
