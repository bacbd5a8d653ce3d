"""Hallucination rate of SmolLM2-135M as the generator on PubMedQA-L, through the real service.

The passages of all 1,000 PubMedQA-L questions (../shared/datasets/pubmedqa/ori_pqal.json,
read by path, nothing copied into the repo) are ingested as the corpus, one document per
passage. A seeded sample of the official test split's questions becomes a golden set (the
reference answer is the abstract's conclusion, the references are the question's own
passages). One evaluation run then retrieves, answers with SmolLM2 in-process through
llama.cpp, and scores:

- Ragas Faithfulness judged by SmolLM2-135M behind llama_cpp.server (its output constrained
  to Ragas' JSON schemas by a grammar); the hallucination rate is the share of judged
  answers with faithfulness below the threshold, and judge failures are counted apart;
- the offline groundedness proxy (embedding similarity, a proxy, not a judge);
- retrieval (nDCG@10, Recall@10, MRR@10) of the default embedder on these questions.

    python evals/pubmedqa_hallucination.py [--dataset ../shared/datasets/pubmedqa] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.llama_server import LlamaServer  # noqa: E402
from rag_loop.corpus.ingest import ingest  # noqa: E402
from rag_loop.evaluation.runner import EvalRequest, run_evaluation  # noqa: E402
from rag_loop.services import Services  # noqa: E402
from rag_loop.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/datasets/pubmedqa")
    parser.add_argument("--n", type=int, default=200, help="test questions to answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=3, help="passages given to the generator")
    parser.add_argument("--max-tokens", type=int, default=128, help="answer length limit")
    parser.add_argument(
        "--judge-ctx", type=int, default=8192, help="the judge server's context (tokens)"
    )
    parser.add_argument(
        "--judge-max-tokens",
        type=int,
        default=1024,
        help="judge output limit (Ragas' statement lists of long answers need more than 512)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "evals/results/pubmedqa.json")
    args = parser.parse_args()

    data = json.loads((args.dataset / "ori_pqal.json").read_text())
    test_ids = sorted(json.loads((args.dataset / "test_ground_truth.json").read_text()))
    chosen = random.Random(args.seed).sample(test_ids, args.n)
    work = Path(tempfile.mkdtemp(prefix="rag-loop-pubmedqa-"))
    corpus = work / "pubmedqa.jsonl"
    with corpus.open("w") as out:
        for pmid, entry in sorted(data.items()):
            for i, passage in enumerate(entry["CONTEXTS"]):
                out.write(json.dumps({"_id": f"{pmid}-{i}", "title": "", "text": passage}) + "\n")
    golden = work / "pubmedqa-test.jsonl"
    with golden.open("w") as out:
        for pmid in chosen:
            entry = data[pmid]
            ids = [f"{pmid}-{i}" for i in range(len(entry["CONTEXTS"]))]
            row = {"id": pmid, "question": entry["QUESTION"], "answer": entry["LONG_ANSWER"]}
            out.write(json.dumps({**row, "document_ids": ids}) + "\n")

    judge = LlamaServer(work / "judge.log", n_ctx=args.judge_ctx)
    try:
        settings = Settings(
            data_dir=work / "data",
            retrieval={"top_k": args.top_k},
            generator={"backend": "llamacpp", "max_tokens": args.max_tokens},
            judge={
                "backend": "openai",
                "base_url": judge.url,
                "response_format": "json_object",
                "concurrency": 1,
                "metrics": ["faithfulness"],
                "timeout_seconds": 180,
                "max_tokens": args.judge_max_tokens,
            },
        )
        services = Services.from_settings(settings)
        t0 = time.perf_counter()
        ingest(services, corpus, actor="bench", progress=True)
        ingest_s = time.perf_counter() - t0
        outcome = run_evaluation(services, EvalRequest(golden_path=golden, trigger="bench"))
        reasons = failure_reasons(services, outcome.run_id)
        services.close()
    finally:
        judge.stop()
    m = outcome.metrics
    result = {
        "questions": args.n,
        "corpus_passages": sum(len(e["CONTEXTS"]) for e in data.values()),
        "generator": outcome.params["generator"],
        "judge": outcome.params["judge"],
        "top_k": args.top_k,
        "ingest_seconds": round(ingest_s, 1),
        "eval_seconds": round(outcome.seconds, 1),
        "samples_per_second": round(m["samples_per_second"], 4),
        "faithfulness_mean": m.get("faithfulness"),
        "hallucination_rate": m.get("hallucination_rate"),
        "faithfulness_scored": m["faithfulness_scored"],
        "faithfulness_failures": m["faithfulness_failures"],
        "failures_by_kind": outcome.failures.get("faithfulness", {}),
        "failure_reasons": reasons,
        "judge_ctx": args.judge_ctx,
        "judge_max_tokens": args.judge_max_tokens,
        "groundedness_proxy_mean": m.get("groundedness_proxy"),
        "hallucination_rate_proxy": m.get("hallucination_rate_proxy"),
        "generation_failures": m["generation_failures"],
        "ndcg_at_10": m["ndcg_at_10"],
        "recall_at_10": m["recall_at_10"],
        "mrr_at_10": m["mrr_at_10"],
        "rouge_l": m.get("rouge_l"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "eval_run_id": outcome.run_id,
        "data_dir": str(work / "data"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for key, value in result.items():
        print(f"{key:28} {value}")


def failure_reasons(services: Services, run_id: str) -> dict[str, int]:
    """What the judge's failures were, by message (numbers and quotes trimmed off)."""
    import re
    from collections import Counter

    from sqlalchemy import select

    from rag_loop.db.models import EvalSample

    with services.sessions() as session:
        rows = session.scalars(select(EvalSample.failures).where(EvalSample.run_id == run_id))
        reasons = Counter(
            re.sub(r"\d+", "N", str(why))[:160]
            for failures in rows
            for why in (failures or {}).values()
        )
    return dict(reasons.most_common(8))


if __name__ == "__main__":
    main()
