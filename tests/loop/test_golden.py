"""The golden sets' tuning and judged parts (rag_loop.loop.golden): a partition of each set
by a hash of its questions, the same in every cycle, that never lets a question the cycle
chose with judge what it chose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_loop.errors import InvalidInput
from rag_loop.loop import golden
from rag_loop.training.dataset import is_heldout, normalise


def _write(path: Path, rows: list[dict[str, object]], *, bom: bool = False) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def _rows(n: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"q{i}",
            "question": f"What does study {i} find about protein {i * 7}?",
            "document_ids": [f"doc-{i}"],
        }
        for i in range(n)
    ]


def test_the_tuning_part_is_a_stable_share_independent_of_the_held_out_split() -> None:
    questions = [f"question number {i}" for i in range(2000)]
    tuning = [q for q in questions if golden.is_tuning(q, 0.5)]
    assert 0.45 < len(tuning) / len(questions) < 0.55
    assert tuning == [q for q in questions if golden.is_tuning(q, 0.5)]  # the same every time
    assert golden.is_tuning("  Question NUMBER 1 ", 0.5) == golden.is_tuning(
        "question number 1", 0.5
    )
    assert not any(golden.is_tuning(q, 0.0) for q in questions)
    # its own hash: the held-out feedback split (the same share) cuts across it
    heldout = {q for q in questions if is_heldout(normalise(q), 0.5)}
    assert 0.2 < len(heldout & set(tuning)) / len(questions) < 0.3


@pytest.mark.parametrize("bom", [False, True])
def test_the_judged_part_and_the_tuning_part_partition_a_golden_set(
    tmp_path: Path, bom: bool
) -> None:
    rows = _rows(40)
    path = _write(tmp_path / "ops.jsonl", rows, bom=bom)
    (judged,) = golden.judged_sets([path, tmp_path / "missing.jsonl"], 0.5, tmp_path / "cycle")
    assert judged.name == path.name and judged.parent.parent == tmp_path / "cycle"
    kept = [json.loads(line) for line in judged.read_text().splitlines()]
    tuning = golden.tuning_questions([path], 0.5)
    assert kept and tuning
    assert {r["question"] for r in kept} | {t.text for t in tuning} == {r["question"] for r in rows}
    assert not {r["question"] for r in kept} & {t.text for t in tuning}
    assert kept == [r for r in rows if not golden.is_tuning(str(r["question"]), 0.5)]  # in order
    by_question = {r["question"]: r["document_ids"] for r in rows}
    assert all(t.reference_ids == by_question[t.text] and not t.chunk_level for t in tuning)
    assert {t.part for t in tuning} == {f"golden:{path}"}
    # a set of the same file name in another folder is a part of its own
    (tmp_path / "other").mkdir()
    other = _write(tmp_path / "other" / "ops.jsonl", rows)
    both = golden.tuning_questions([path, other], 0.5)
    assert [t.part for t in both] == [f"golden:{path}"] * len(tuning) + [f"golden:{other}"] * len(
        tuning
    )
    before = judged.stat().st_mtime_ns
    assert golden.judged_sets([path], 0.5, tmp_path / "cycle") == [judged]
    assert judged.stat().st_mtime_ns == before  # the same part is not written again
    # without a share the sets judge whole and tune nothing
    assert golden.judged_sets([path], 0.0, tmp_path / "none") == [path]
    assert golden.tuning_questions([path], 0.0) == []
    assert not (tmp_path / "none").exists()


def test_room_is_counted_per_part_and_a_bad_set_is_reported_as_itself(tmp_path: Path) -> None:
    rows = _rows(30)
    path = _write(tmp_path / "ops.jsonl", rows)
    scores = {str(r["id"]): (1.0 if i % 3 == 0 else 0.5) for i, r in enumerate(rows)}
    tuning_room, judged_room = golden.room_by_part(path, scores, 0.5)
    expected = [
        sum(
            1
            for i, r in enumerate(rows)
            if i % 3 and golden.is_tuning(str(r["question"]), 0.5) == part
        )
        for part in (True, False)
    ]
    assert [tuning_room, judged_room] == expected and tuning_room + judged_room == 20
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": ""}\n')
    with pytest.raises(InvalidInput, match=r"bad\.jsonl"):
        golden.judged_sets([bad], 0.5, tmp_path / "cycle")
