"""What is the fusion weight alone worth? An offline probe.

The loop may move a hybrid version's dense weight (rag_loop.training.validation: the
champion's weight or one step of 0.1 either side). This probe scores the hybrid base of an
ingested corpus, nothing learned, at every weight of that grid and 0.9: nDCG@10 on the test
questions of `--dataset` (never asked) and, when the work dir has one (`bench_loop.py
--golden`), on its golden set, whole and in the two parts a cycle splits it into
(rag_loop.loop.golden: the tuning part and the part the gate judges). No training, no gate.

    python evals/probe_fusion_weight.py --dataset scifact|pubmedqa --work DIR [--out F]
    # DIR: bench_loop.py --work (its ingested/ corpus is copied, never changed)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.bench_loop import load_domain, probe_services, test_metrics  # noqa: E402
from rag_loop.index.versions import serving_index  # noqa: E402
from rag_loop.loop.golden import is_tuning  # noqa: E402
from rag_loop.settings import LoopSettings  # noqa: E402
from rag_loop.training.validation import WEIGHTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="scifact", help="scifact, pubmedqa or a BEIR folder")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args()
    domain = load_domain(args.dataset, args.work)
    services = probe_services(args.work, "probe-fusion-weight")
    index = serving_index(services.engine)
    share = LoopSettings().golden_tuning_share
    parts: dict[str, dict[str, set[str]]] = {"test": dict(domain.test)}
    golden_path = args.work / "golden.jsonl"
    if golden_path.is_file():
        rows = [json.loads(line) for line in golden_path.read_text().splitlines() if line]
        for row in rows:
            domain.queries[row["id"]] = row["question"]
        parts["golden"] = {r["id"]: set(r["document_ids"]) for r in rows}
        parts["golden tuning"] = {
            r["id"]: set(r["document_ids"]) for r in rows if is_tuning(r["question"], share)
        }
        parts["golden judged"] = {
            r["id"]: set(r["document_ids"]) for r in rows if not is_tuning(r["question"], share)
        }
    report: dict[str, Any] = {"dataset": domain.name, "questions": {}, "ndcg_at_10": {}}
    report["questions"] = {name: len(part) for name, part in parts.items()}
    for weight in (*WEIGHTS, 0.9):
        config = replace(index.retrieval, dense_weight=weight)
        figures = {}
        for name, part in parts.items():
            domain.test = part
            figures[name] = round(test_metrics(services, domain, config)["ndcg_at_10"], 4)
        report["ndcg_at_10"][str(weight)] = figures
        print(f"dense weight {weight}: {json.dumps(figures)}", flush=True)
    services.close()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
