"""Evaluation throughput and the sample corpus's golden-set retrieval, in one run.

1. The Kestrel golden set (corpora/kestrel/questions.jsonl, 98 questions) against a fresh
   index of the sample corpus with the default embedder, without a judge: every question
   retrieved and answered (extractive), Ragas' non-LLM and ID-based metrics, pytrec_eval's
   nDCG@10 / Recall@10 / MRR@10, the groundedness proxy. Prints samples/s and the metrics.
2. The first `--judged` questions of the same set with the local judge (SmolLM2-135M behind
   llama_cpp.server on loopback, grammar-constrained JSON), all four Ragas LLM metrics, and
   again with faithfulness only. Prints samples/s, the slowdown against (1) and the judge's
   failures per metric.

    python evals/bench_evaluation.py [--judged 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.llama_server import LlamaServer  # noqa: E402
from rag_loop.corpus.ingest import ingest  # noqa: E402
from rag_loop.evaluation.judge import make_judge  # noqa: E402
from rag_loop.evaluation.runner import EvalRequest, run_evaluation  # noqa: E402
from rag_loop.services import Services  # noqa: E402
from rag_loop.settings import Settings  # noqa: E402

QUESTIONS = ROOT / "corpora" / "kestrel" / "questions.jsonl"
ALL_JUDGED = ["faithfulness", "answer_relevancy", "llm_context_precision", "llm_context_recall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judged", type=int, default=5, help="questions scored by the judge")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rag-loop-bench-eval-"))
    services = Services.from_settings(Settings(data_dir=work / "data"))
    ingest(services, ROOT / "corpora" / "kestrel" / "docs", actor="bench")

    plain = run_evaluation(services, EvalRequest(golden_path=QUESTIONS, use_judge=False))
    m = plain.metrics
    print(
        "golden set: corpora/kestrel/questions.jsonl (98 questions), embedder",
        services.embedder.version,
    )
    for name in (
        "ndcg_at_10",
        "recall_at_10",
        "mrr_at_10",
        "id_context_precision",
        "id_context_recall",
        "string_similarity",
        "rouge_l",
        "groundedness_proxy",
    ):
        print(f"  {name:22} {m[name]:.4f}")
    print(
        f"no judge:  {plain.n_samples} samples in {plain.seconds:.1f} s = "
        f"{m['samples_per_second']:.2f} samples/s"
    )

    server = LlamaServer(work / "judge.log")
    try:
        rows = []
        for metrics in (ALL_JUDGED, ["faithfulness"]):
            judge = services.settings.judge.model_copy(
                update={
                    "backend": "openai",
                    "base_url": server.url,
                    "response_format": "json_object",
                    "concurrency": 1,
                    "metrics": metrics,
                }
            )
            services.settings.judge = judge
            judged = run_evaluation(
                services,
                EvalRequest(golden_path=QUESTIONS, limit=args.judged),
                judge=make_judge(judge),
            )
            rows.append((metrics, judged))
    finally:
        server.stop()
    for metrics, judged in rows:
        rate = judged.metrics["samples_per_second"]
        print(
            f"judge SmolLM2-135M (llama_cpp.server), {len(metrics)} LLM metric(s) "
            f"{'+'.join(metrics)}: {judged.n_samples} samples in {judged.seconds:.1f} s = "
            f"{rate:.4f} samples/s ({m['samples_per_second'] / rate:.0f}x slower than no judge)"
        )
        for name in metrics:
            scored = judged.metrics[f"{name}_scored"]
            failed = judged.failures.get(name, {})
            mean = judged.metrics.get(name)
            shown = f"{mean:.3f}" if mean is not None else "n/a"
            print(f"  {name:22} mean {shown:>6} scored {scored:.0f} failures {failed}")
    services.close()


if __name__ == "__main__":
    main()
