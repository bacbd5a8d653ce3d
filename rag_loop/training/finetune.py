"""Fine-tune an embedder on a training set with sentence-transformers' own trainer.

`SentenceTransformerTrainer` with `MultipleNegativesRankingLoss`: every other positive in
a batch is a negative too, and each example brings its own hard negatives (columns
negative_1..n). The no-duplicates batch sampler keeps two examples of one query (or one
passage) out of the same batch, where they would be false negatives of each other.
CPU-friendly defaults, seeded; the model is written to a new folder, never over its base.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rag_loop.errors import InvalidInput
from rag_loop.index.embedders import weights_hash
from rag_loop.registry.embedders import TrainedModel
from rag_loop.settings import TrainingSettings

log = logging.getLogger(__name__)

NEGATIVE = re.compile(r"negative_\d+")  # the hard-negative columns


def read_examples(path: Path) -> list[dict[str, str]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows.append(
                {
                    k: v
                    for k, v in row.items()
                    if k in ("anchor", "positive") or NEGATIVE.fullmatch(k)
                }
            )
    return rows


def finetune(
    base_folder: Path, examples_path: Path, out_folder: Path, settings: TrainingSettings
) -> TrainedModel:
    rows = read_examples(examples_path)
    if not rows:
        raise InvalidInput(f"the training set {examples_path} has no examples")
    negatives = sorted(
        (k for k in rows[0] if NEGATIVE.fullmatch(k)), key=lambda k: int(k.split("_")[1])
    )
    columns = ["anchor", "positive", *negatives]
    started = time.perf_counter()

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    dataset = Dataset.from_dict({c: [r[c] for r in rows] for c in columns})
    model = SentenceTransformer(str(base_folder), device="cpu")
    model.max_seq_length = min(settings.max_seq_length, model.max_seq_length or 512)
    loss = MultipleNegativesRankingLoss(model)
    batch_size = min(settings.batch_size, len(rows))
    result = _train(model, dataset, loss, settings, batch_size, no_duplicates=True)
    _save(model, out_folder)
    return _trained(
        out_folder,
        started,
        result,
        settings,
        model,
        base_folder,
        batch_size,
        {
            "mode": "full",
            "loss": "MultipleNegativesRankingLoss",
            "batch_sampler": "no_duplicates",
            "hard_negatives_per_example": len(columns) - 2,
            "examples": len(rows),
        },
    )


def finetune_queries(
    base_folder: Path,
    examples_path: Path,
    out_folder: Path,
    settings: TrainingSettings,
    bank_ids: list[str],
    bank: np.ndarray,
) -> TrainedModel:
    """Query-side training: only the query encoder learns, scored against `bank` (the
    vectors of `bank_ids`, from the serving index) with `BankSoftmaxLoss`."""
    import torch

    index = {chunk_id: i for i, chunk_id in enumerate(bank_ids)}
    anchors: list[str] = []
    positives: list[int] = []
    by_anchor: dict[str, set[int]] = {}
    skipped = 0
    with examples_path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            position = index.get(row["positive_chunk_id"])
            if position is None:  # a chunk no longer in the index
                skipped += 1
                continue
            anchors.append(row["anchor"])
            positives.append(position)
            by_anchor.setdefault(row["anchor"], set()).add(position)
    if not anchors:
        raise InvalidInput(f"no example of {examples_path} has its positive in the index")
    masked = [sorted(by_anchor[a] - {p}) for a, p in zip(anchors, positives, strict=True)]
    started = time.perf_counter()

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from rag_loop.training.losses import BankSoftmaxLoss

    model = SentenceTransformer(str(base_folder), device="cpu")
    model.max_seq_length = min(settings.max_seq_length, model.max_seq_length or 512)
    loss = BankSoftmaxLoss(model, torch.from_numpy(np.asarray(bank)), positives, masked)
    dataset = Dataset.from_dict({"anchor": anchors, "label": list(range(len(anchors)))})
    batch_size = min(settings.batch_size, len(anchors))
    result = _train(model, dataset, loss, settings, batch_size, no_duplicates=False)
    _save(model, out_folder)
    return _trained(
        out_folder,
        started,
        result,
        settings,
        model,
        base_folder,
        batch_size,
        {
            "mode": "query",
            "loss": "BankSoftmaxLoss (query encoder vs the frozen index's vectors)",
            "bank_size": len(bank_ids),
            "examples": len(anchors),
            "examples_skipped": skipped,
        },
    )


def _trained(
    out_folder: Path,
    started: float,
    result: Any,
    settings: TrainingSettings,
    model: Any,
    base_folder: Path,
    batch_size: int,
    params: dict[str, Any],
) -> TrainedModel:
    """The saved model with the parameters and figures every run records."""
    seconds = time.perf_counter() - started
    params = {
        **params,
        "epochs": settings.epochs,
        "batch_size": batch_size,
        "learning_rate": settings.learning_rate,
        "warmup_ratio": settings.warmup_ratio,
        "max_seq_length": model.max_seq_length,
        "seed": settings.seed,
        "base_folder": str(base_folder),
    }
    metrics = {
        "train_loss": float(result.training_loss),
        "train_seconds": seconds,
        "train_steps": float(result.global_step),
    }
    return TrainedModel(
        out_folder, f"{out_folder.name}@{weights_hash(out_folder)}", seconds, params, metrics
    )


def _train(
    model: Any,
    dataset: Any,
    loss: Any,
    settings: TrainingSettings,
    batch_size: int,
    *,
    no_duplicates: bool,
) -> Any:
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers import PrinterCallback, ProgressCallback
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="rag-loop-train-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=settings.learning_rate,
            warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of the steps
            seed=settings.seed,
            data_seed=settings.seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES
            if no_duplicates
            else BatchSamplers.BATCH_SAMPLER,
            save_strategy="no",
            report_to="none",
            logging_strategy="epoch",
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=loss
        )
        # the trainer prints its logs to stdout, which is the CLI's JSON output
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        return trainer.train()


def _save(model: Any, out_folder: Path) -> None:
    partial = out_folder.with_name(out_folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save(str(partial))
    shutil.rmtree(out_folder, ignore_errors=True)
    partial.rename(out_folder)  # a crash never leaves a half-written model under its name
