"""The sample corpus's correction suite: does an approved amendment retire the wrong fact?

For every case of `corpora/kestrel/corrections.jsonl` (a question, a reworded question, the
fact the corpus states and the fact that replaces it, the user's correction), through the
service's own code: ask; a thumbs-down with the correction (every other case also marks
the passage that holds the fact not relevant); a reviewer opens the correction, checks
that the pre-selected passage is the one that holds the fact, and approves it as an
amendment of that passage with the fact replaced. Then the same and the reworded question
are asked again: the retired fact must be in neither the answer nor any source, and the
new fact must be served.

Figures: retired facts that stay retired (of all), per generator; the time from the
approval's start to the end of the first answer that reflects it (approve + ask).

    python evals/bench_corrections.py                      # extractive
    python evals/bench_corrections.py --generator llamacpp # the local SmolLM2 too
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "corpora" / "kestrel" / "corrections.jsonl"
CORPUS = ROOT / "corpora" / "kestrel" / "docs"


@dataclass(frozen=True)
class Case:
    id: str
    question: str
    reworded: str
    retired: str
    fact: str
    correction: str


@dataclass
class Outcome:
    case: str
    stated_before: bool  # the retired fact was served before the correction
    preselected: bool  # the pre-selected passage held the retired fact
    retired: bool  # neither question's answer or sources state it after
    served: bool  # the new fact is among what both questions are served
    approve_seconds: float
    first_answer_seconds: float
    answers: dict[str, str]


def load_cases(path: Path = CASES) -> list[Case]:
    return [Case(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def states(fact: str, text: str) -> bool:
    """Whether `text` states `fact` as a whole (10 euros is not in 110 euros)."""
    return re.search(r"(?<![\w.+])" + re.escape(fact) + r"(?!\w)", text) is not None


def run_case(services: Any, case: Case, position: int) -> Outcome:
    from rag_loop.feedback.corrections import approve, get_correction
    from rag_loop.feedback.schemas import FeedbackIn
    from rag_loop.feedback.service import submit_feedback
    from rag_loop.interactions.ask import ask

    first = ask(services, case.question)
    holding = [s for s in first.sources if states(case.retired, s["text"])]
    stated_before = bool(holding) or states(case.retired, first.answer)
    feedback: dict[str, Any] = {
        "interaction_id": first.interaction_id,
        "thumb": "down",
        "correction": case.correction,
    }
    if holding and position % 2 == 0:  # half the users also say which passage was wrong
        feedback["chunk_labels"] = [{"chunk_id": holding[0]["chunk_id"], "relevant": False}]
    receipt = submit_feedback(services, FeedbackIn.model_validate(feedback), actor="suite")
    assert receipt.correction_id is not None
    view = get_correction(services, receipt.correction_id)
    selected = next((c for c in view["chunks"] if c["selected"]), None)
    preselected = selected is not None and states(case.retired, selected["text"])
    # the reviewer amends the passage that holds the fact (the pre-selected one if right)
    target = (
        selected
        if preselected
        else next(
            (c for c in view["chunks"] if c["live"] and states(case.retired, c["text"])), selected
        )
    )
    assert target is not None, f"{case.id}: the answer was given no passage"
    started = time.perf_counter()
    approve(
        services,
        receipt.correction_id,
        reviewer="suite reviewer",
        mode="amend",
        chunk_id=target["chunk_id"],
        text=target["text"].replace(case.retired, case.fact),
    )
    approved = time.perf_counter()
    again = ask(services, case.question)
    answered = time.perf_counter()
    reworded = ask(services, case.reworded)
    retired = served = True
    for result in (again, reworded):
        texts = [result.answer, *(s["text"] for s in result.sources)]
        retired &= not any(states(case.retired, t) for t in texts)
        served &= any(states(case.fact, t) for t in texts)
    return Outcome(
        case=case.id,
        stated_before=stated_before,
        preselected=preselected,
        retired=retired,
        served=served,
        approve_seconds=approved - started,
        first_answer_seconds=answered - started,
        answers={"question": again.answer, "reworded": reworded.answer},
    )


def run_suite(services: Any, cases: list[Case]) -> list[Outcome]:
    return [run_case(services, case, i) for i, case in enumerate(cases)]


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    waits = [o.first_answer_seconds for o in outcomes]
    return {
        "cases": len(outcomes),
        "stated_before": sum(o.stated_before for o in outcomes),
        "preselected_right": sum(o.preselected for o in outcomes),
        "stay_retired": sum(o.retired for o in outcomes),
        "new_fact_served": sum(o.served for o in outcomes),
        "approval_to_answer_p50_s": round(statistics.median(waits), 3),
        "approval_to_answer_max_s": round(max(waits), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--generator",
        action="append",
        choices=["extractive", "llamacpp"],
        help="repeatable; default: extractive and llamacpp",
    )
    parser.add_argument("--out", type=Path, help="write the outcomes as JSON here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from rag_loop.corpus.ingest import ingest
    from rag_loop.services import Services
    from rag_loop.settings import Settings

    cases = load_cases()
    report: dict[str, Any] = {}
    for generator in args.generator or ["extractive", "llamacpp"]:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                **{
                    "data_dir": Path(tmp),
                    "generator": {"backend": generator, "max_tokens": 64},
                    "corpus_path": CORPUS,
                }
            )
            services = Services.from_settings(settings)
            try:
                ingest(services, CORPUS, actor="bench")
                outcomes = run_suite(services, cases)
            finally:
                services.close()
        report[generator] = {"summary": summary(outcomes), "cases": [asdict(o) for o in outcomes]}
        print(f"{generator}: {json.dumps(report[generator]['summary'])}", flush=True)
        for o in outcomes:
            if not (o.retired and o.served):
                print(f"  {o.case}: retired={o.retired} served={o.served} {o.answers}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
