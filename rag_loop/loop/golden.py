"""The operator's golden sets in a cycle: a tuning part and a judged part.

Under sparse feedback the validation feedback queries leave the champion no room (a thumb
confirms what was served), so the cycle's choices (the epoch, the fusion weight, the
expansions and their dense side) would be made blind. A share of each golden set's
questions (`loop.golden_tuning_share`, chosen by a hash of the question, the same in every
cycle) validates those choices beside the validation feedback queries; the gate judges on
the rest only. A question the cycle chose with never judges what it chose. Golden questions
are never training examples or expansions (`training.dataset` guards them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rag_loop.evaluation.datasets import load_golden
from rag_loop.loop.gate import with_room
from rag_loop.training.dataset import is_heldout, normalise

SALT = "golden-tuning:"  # independent of the held-out feedback split's hash


def is_tuning(question: str, share: float) -> bool:
    """Whether a golden question belongs to the tuning part."""
    return share > 0 and is_heldout(SALT + normalise(question), share)


@dataclass(frozen=True)
class TuningQuestion:
    text: str
    reference_ids: list[str]  # document or chunk ids, as its golden set names them
    chunk_level: bool
    # the validation part it belongs to: its golden set's, by the set's configured path (two
    # sets of one file name in different folders are two parts, as the gate judges two sets)
    part: str


def tuning_questions(paths: Iterable[Path], share: float) -> list[TuningQuestion]:
    """The tuning part of every golden set that exists."""
    out: list[TuningQuestion] = []
    for path in paths:
        if share <= 0 or not path.is_file():
            continue
        dataset = load_golden(path)
        out += [
            TuningQuestion(
                item.query, list(item.reference_ids), dataset.id_level == "chunk", f"golden:{path}"
            )
            for item in dataset.items
            if item.reference_ids and is_tuning(item.query, share)
        ]
    return out


def room_by_part(path: Path, scores: Mapping[str, float], share: float) -> tuple[int, int]:
    """How many questions of the golden set at `path` the champion leaves room on (`scores`:
    its primary metric by question id), in the tuning part and in the judged part."""
    question_of = {item.sample_id: item.query for item in load_golden(path).items}
    tuning = [v for q, v in scores.items() if q in question_of and is_tuning(question_of[q], share)]
    judged = [
        v for q, v in scores.items() if q in question_of and not is_tuning(question_of[q], share)
    ]
    return with_room(tuning), with_room(judged)


def judged_sets(paths: Iterable[Path], share: float, folder: Path) -> list[Path]:
    """Each existing golden set's judged part, written under `folder` (the set itself when
    `share` is 0): its lines whose question is not in the tuning part, in their order."""
    out: list[Path] = []
    for number, path in enumerate(p for p in paths if p.is_file()):
        if share <= 0:
            out.append(path)
            continue
        load_golden(path)  # a bad set is reported as the set it is
        kept = [
            line
            for line in path.read_text(encoding="utf-8-sig").splitlines()
            if line.strip() and not is_tuning(json.loads(line)["question"], share)
        ]
        if not kept:
            continue
        target = folder / str(number) / path.name
        text = "".join(line + "\n" for line in kept)
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            scratch = target.with_suffix(".tmp")
            scratch.write_text(text, encoding="utf-8")
            os.replace(scratch, target)
        out.append(target)
    return out
