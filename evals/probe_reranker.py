"""Could a cross-encoder reranker trained from feedback pay on 2 cores? An upper bound.

On BEIR SciFact (../shared/datasets/scifact): a CrossEncoder initialised from the packaged
all-MiniLM-L6-v2 weights (a new one-logit head) is trained with sentence-transformers'
CrossEncoderTrainer and BinaryCrossEntropyLoss on the train split's complete judgements:
every train query's relevant abstracts as positives and the hybrid base's highest-ranked
other abstracts as negatives. That is more and cleaner feedback than any simulated user
gives, so what it reaches bounds what a reranker learnt from feedback can reach. It then
reranks the top `--depths` of the hybrid base for the test split's queries (never trained
on), at each of `--max-lengths` tokens, alone and fused with the hybrid score (the hits
below the reranked depth keep their hybrid order), and times the reranking per query: the
cost an ask would pay on top of the plain retrieval. `--int8` times, in the same run and
on the same pairs, a copy whose linear layers torch quantizes to 8-bit integers after
training (`quantize_dynamic`, eager mode: deprecated in favour of torchao, still in torch
2.13), with its rankings; `--epochs 0` skips the training, for the cost alone (the weights'
values do not change what a reranking costs).

    python evals/probe_reranker.py --work DIR [--int8] [--epochs N] [--out FILE]
    # DIR: bench_loop.py --work
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evals.bench_loop import DATASETS, beir, probe_services  # noqa: E402
from rag_loop.evaluation.metrics import ranking_metrics  # noqa: E402
from rag_loop.hits import Hit  # noqa: E402
from rag_loop.index.embedders import DEFAULT_MODEL, resolve_model_path  # noqa: E402
from rag_loop.index.versions import serving_index  # noqa: E402
from rag_loop.retrieval.search import fuse, search  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--depths", default="5,10,20", help="hybrid hits reranked")
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=1, help="0: no training, cost only")
    parser.add_argument("--int8", action="store_true", help="also an 8-bit quantized copy")
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument(
        "--pos-weight", type=float, default=None, help="BCE weight of a positive (none: 1)"
    )
    parser.add_argument("--max-length", type=int, default=256, help="tokens, training")
    parser.add_argument("--max-lengths", default="256,128", help="tokens, reranking")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args()
    domain = beir(DATASETS / "scifact")
    services = probe_services(args.work, "probe-reranker")
    data_dir = services.settings.data_dir
    texts: dict[str, str] = {}
    with (DATASETS / "scifact/corpus.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            texts[row["_id"]] = f"{row['title']}\n{row['text']}"

    index = serving_index(services.engine)
    embedder = services.embedders.get(index.embedder_version)

    config = index.retrieval

    def hybrid(ids: list[str], k: int) -> dict[str, list[Hit]]:
        vectors = embedder.embed_queries([domain.queries[i] for i in ids])
        return {
            qid: search(
                services.store, services.lexical, index, config, domain.queries[qid], v, k, embedder
            )
            for qid, v in zip(ids, vectors, strict=True)
        }

    train_ids = sorted(domain.replay)
    mined = hybrid(train_ids, 30)
    anchors, passages, labels = [], [], []
    for qid in train_ids:
        relevant = domain.replay[qid]
        for doc in sorted(relevant):
            anchors.append(domain.queries[qid])
            passages.append(texts[doc])
            labels.append(1.0)
        negatives = [h for h in mined[qid] if h.document_id not in relevant][: args.negatives]
        for hit in negatives:
            anchors.append(domain.queries[qid])
            passages.append(texts[hit.document_id])
            labels.append(0.0)
    print(f"{len(labels)} training pairs from {len(train_ids)} train queries", flush=True)

    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    model = CrossEncoder(
        str(resolve_model_path(DEFAULT_MODEL)), num_labels=1, max_length=args.max_length
    )
    started = time.perf_counter()
    trainer = CrossEncoderTrainer(
        model=model,
        args=CrossEncoderTrainingArguments(
            output_dir=str(data_dir / "ce-train"),
            num_train_epochs=args.epochs,
            per_device_train_batch_size=16,
            learning_rate=args.learning_rate,
            warmup_steps=0.1,
            seed=0,
            save_strategy="no",
            logging_steps=50,
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
        ),
        train_dataset=Dataset.from_dict({"query": anchors, "passage": passages, "label": labels}),
        loss=BinaryCrossEntropyLoss(
            model, pos_weight=None if args.pos_weight is None else torch.tensor(args.pos_weight)
        ),
    )
    if args.epochs > 0:
        trainer.train()
    train_seconds = time.perf_counter() - started
    print(f"trained in {train_seconds:.0f} s", flush=True)

    test_ids = sorted(domain.test)
    depths = sorted(int(d) for d in args.depths.split(","))
    lengths = sorted((int(n) for n in args.max_lengths.split(",")), reverse=True)
    served = hybrid(test_ids, max(depths[-1], 10))
    refs = domain.references()

    def ndcg(ranking: dict[str, list[str]]) -> float:
        per_query = ranking_metrics(ranking, refs, 10)
        return round(sum(m["ndcg_at_10"] for m in per_query.values()) / len(per_query), 4)

    out: dict[str, Any] = {
        "train_pairs": len(labels),
        "train_seconds": round(train_seconds),
        "train_loss": [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e],
        "options": {k: str(v) for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "ndcg_at_10 hybrid": ndcg({q: [h.document_id for h in served[q]] for q in test_ids}),
        "runs": [],
    }
    weights = (0.25, 0.5, 0.75)
    models = [("float32", model)]
    if args.int8:
        models.append(("int8", quantized(model)))
    for length in lengths:
        for depth in depths:
            for precision, reranker in models:
                reranker.max_length = length
                rankings: dict[str, dict[str, list[str]]] = {"reranker": {}}
                for w in weights:
                    rankings[f"fused {w}"] = {}
                latency: list[float] = []
                for qid in test_ids:
                    hits, rest = served[qid][:depth], served[qid][depth:]
                    started = time.perf_counter()
                    pairs = [(domain.queries[qid], texts[h.document_id]) for h in hits]
                    scores = np.asarray(reranker.predict(pairs))  # title and text, as trained
                    latency.append((time.perf_counter() - started) * 1000)
                    docs, tail = [h.document_id for h in hits], [h.document_id for h in rest]
                    rankings["reranker"][qid] = [
                        docs[i] for i in np.argsort(-scores, kind="stable")
                    ]
                    base = np.array([h.score for h in hits], dtype=np.float64)
                    for w in weights:
                        fused = fuse(scores.astype(np.float64), base, w)
                        order = np.argsort(-fused, kind="stable")
                        rankings[f"fused {w}"][qid] = [docs[i] for i in order] + tail
                    rankings["reranker"][qid] += tail
                run = {
                    "precision": precision,
                    "max_length": length,
                    "depth": depth,
                    "rerank_ms_p50": round(statistics.median(latency), 1),
                    "rerank_ms_p95": round(float(np.percentile(latency, 95)), 1),
                    **{f"ndcg_at_10 {name}": ndcg(r) for name, r in rankings.items()},
                }
                out["runs"].append(run)
                print(json.dumps(run), flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    services.close()


def quantized(model: Any) -> Any:
    """A copy of `model` whose linear layers compute in 8-bit integers (dynamic
    quantization: weights quantized once, activations per call)."""
    import copy
    import warnings

    with warnings.catch_warnings():  # the eager-mode API warns that torchao replaces it
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )


if __name__ == "__main__":
    main()
