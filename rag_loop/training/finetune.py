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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag_loop.errors import InvalidInput
from rag_loop.index.embedders import weights_hash
from rag_loop.index.expansions import ASSOCIATED
from rag_loop.registry.embedders import TrainedModel
from rag_loop.settings import TrainingSettings
from rag_loop.training.validation import FusionCheck, evaluator, part_names

log = logging.getLogger(__name__)

NEGATIVE = re.compile(r"negative_\d+")  # the hard-negative columns


def read_examples(path: Path) -> list[dict[str, str]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("part") == ASSOCIATED:  # expands documents, teaches no encoder
                continue
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
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    dataset = Dataset.from_dict({c: [r[c] for r in rows] for c in columns})
    model = _load(base_folder, settings)
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


@dataclass(frozen=True)
class QueryTuning:
    """What query-side training chose: a trained encoder (None: no epoch ranked the
    validation queries better than the encoder it started from by the margin asked), the
    dense weight that ranks them best with the chosen encoder, the validation nDCG@10 of
    every epoch (0: before; with each part's figure and whether it kept every part within
    the guard: FusionCheck.guarded) and of the weights saved (`kept`: the best epoch's,
    scored again after training)."""

    trained: TrainedModel | None
    dense_weight: float | None
    epochs_run: int
    best_epoch: int
    validation: list[dict[str, Any]]
    validation_queries: int
    kept: float | None


def finetune_queries(
    base_folder: Path,
    examples_path: Path,
    out_folder: Path,
    settings: TrainingSettings,
    bank_ids: list[str],
    bank: np.ndarray,
    check: FusionCheck | None = None,
    margin: float = 0.0,
) -> QueryTuning:
    """Query-side training: only the query encoder learns, scored against `bank` (the
    vectors of `bank_ids`, from the serving index) with `BankSoftmaxLoss`.

    With `check` (the training set's validation part) it fits on the other part, scoring
    every epoch on the validation queries and stopping after `settings.patience` epochs
    without a better one; the best epoch's weights are the ones saved. When no epoch beats
    the encoder it started from by `margin` (nDCG@10; the cycle passes the gate's
    `min_improvement`), the encoder is kept (nothing is saved) with the weight that ranks
    them best with it: a gain too small for the gate to tell from chance would buy a new
    encoder that moves every other ranking too. The validation queries choose, they do not
    teach: a refit on every example for the best epoch's count would double the cycle's
    training time for a fifth more examples, and its weights would be ones no validation
    query has scored."""
    fit = _bank_examples(examples_path, bank_ids, skip_validation=check is not None)
    started = time.perf_counter()
    model = _load(base_folder, settings)
    history: list[dict[str, Any]] = []
    validator = None
    if check is not None:
        validator = evaluator(check)
        history.append(_epoch_figures(0, check, validator(model)))
    result = _fit_queries(model, fit, bank, settings, validator)
    epochs_run = round(result.epochs)
    dense_weight, best_epoch, kept = None, epochs_run, None
    if check is not None and validator is not None:
        for entry in result.log_history:
            if "eval_validation_ndcg_at_10" in entry:
                history.append(_epoch_figures(round(entry["epoch"]), check, entry, "eval_"))
        best = max(history, key=lambda h: (h["ndcg_at_10"], -h["epoch"]))
        start = history[0]
        gain = round(best["ndcg_at_10"] - start["ndcg_at_10"], 6)
        if best["epoch"] == 0 or gain < margin:  # the encoder it started from goes on
            weight = start["dense_weight"]
            return QueryTuning(None, weight, epochs_run, 0, history, len(check.queries), None)
        dense_weight, best_epoch = best["dense_weight"], best["epoch"]
        validator(model)  # the weights the trainer loaded at the end: the best epoch's
        assert validator.last is not None
        kept = round(validator.last.selection, 6)
    _save(model, out_folder)
    trained = _trained(
        out_folder,
        started,
        result,
        settings,
        model,
        base_folder,
        min(settings.batch_size, len(fit.anchors)),
        {
            "mode": "query",
            "loss": "BankSoftmaxLoss (query encoder vs the frozen index's vectors)",
            "bank_size": len(bank_ids),
            "examples": len(fit.anchors),
            "examples_skipped": fit.skipped,
            "epochs_run": epochs_run,
            "best_epoch": best_epoch,
            "validation_queries": len(check.queries) if check else 0,
        },
    )
    return QueryTuning(
        trained,
        dense_weight,
        epochs_run,
        best_epoch,
        history,
        len(check.queries) if check else 0,
        kept,
    )


@dataclass(frozen=True)
class _BankExamples:
    anchors: list[str]
    positives: list[int]  # bank rows
    masked: list[list[int]]  # bank rows of the anchor's other positives
    skipped: int  # positives no longer in the index


def _bank_examples(path: Path, bank_ids: list[str], *, skip_validation: bool) -> _BankExamples:
    index = {chunk_id: i for i, chunk_id in enumerate(bank_ids)}
    anchors: list[str] = []
    positives: list[int] = []
    by_anchor: dict[str, set[int]] = {}
    skipped = 0
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("part") == ASSOCIATED or (
                skip_validation and row.get("part") == "validation"
            ):
                continue
            position = index.get(row["positive_chunk_id"])
            if position is None:
                skipped += 1
                continue
            anchors.append(row["anchor"])
            positives.append(position)
            by_anchor.setdefault(row["anchor"], set()).add(position)
    if not anchors:
        raise InvalidInput(f"no example of {path} has its positive in the index")
    masked = [sorted(by_anchor[a] - {p}) for a, p in zip(anchors, positives, strict=True)]
    return _BankExamples(anchors, positives, masked, skipped)


def _load(folder: Path, settings: TrainingSettings) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    model.max_seq_length = min(settings.max_seq_length, model.max_seq_length or 512)
    return model


def _fit_queries(
    model: Any,
    examples: _BankExamples,
    bank: np.ndarray,
    settings: TrainingSettings,
    validator: Any,
) -> _Run:
    import torch
    from datasets import Dataset

    from rag_loop.training.losses import BankSoftmaxLoss

    loss = BankSoftmaxLoss(
        model, torch.from_numpy(np.asarray(bank)), examples.positives, examples.masked
    )
    rows = list(range(len(examples.anchors)))
    dataset = Dataset.from_dict({"anchor": examples.anchors, "label": rows})
    batch_size = min(settings.batch_size, len(rows))
    return _train(
        model, dataset, loss, settings, batch_size, no_duplicates=False, evaluator=validator
    )


def _epoch_figures(
    epoch: int, check: FusionCheck, metrics: dict[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """An epoch's validation figures from the evaluator's metrics (as the trainer logs them:
    `prefix` "eval_"): nDCG@10 (0 when no weight kept every part within the guard), the
    weight, each part's figure at that weight and whether it kept them within the guard."""
    at = {k.removeprefix(f"{prefix}validation_"): v for k, v in metrics.items()}
    return {
        "epoch": epoch,
        "ndcg_at_10": round(at["ndcg_at_10"], 6),
        "dense_weight": at.get("dense_weight"),
        "parts": {
            name: round(at[f"part_{n}"], 6)
            for n, name in enumerate(part_names(check))
            if f"part_{n}" in at
        },
        "within_guard": bool(at.get("within_guard", 1.0)),
    }


def _trained(
    out_folder: Path,
    started: float,
    result: _Run,
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
        "train_loss": result.training_loss,
        "train_seconds": seconds,
        "train_steps": float(result.global_step),
    }
    return TrainedModel(
        out_folder, f"{out_folder.name}@{weights_hash(out_folder)}", seconds, params, metrics
    )


@dataclass(frozen=True)
class _Run:
    training_loss: float
    global_step: int
    epochs: float
    log_history: list[dict[str, Any]]


def _train(
    model: Any,
    dataset: Any,
    loss: Any,
    settings: TrainingSettings,
    batch_size: int,
    *,
    no_duplicates: bool,
    evaluator: Any = None,
) -> _Run:
    """sentence-transformers' trainer; with an `evaluator`, every epoch is scored, training
    stops after `settings.patience` epochs without a better score (transformers'
    EarlyStoppingCallback) and the best epoch's weights are loaded at the end."""
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers import EarlyStoppingCallback, PrinterCallback, ProgressCallback
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    validated = evaluator is not None
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
            eval_strategy="epoch" if validated else "no",
            save_strategy="epoch" if validated else "no",
            save_total_limit=2 if validated else None,  # the best and the latest
            save_only_model=True,
            load_best_model_at_end=validated,
            metric_for_best_model="eval_validation_ndcg_at_10" if validated else None,
            greater_is_better=True if validated else None,
            report_to="none",
            logging_strategy="epoch",
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            loss=loss,
            evaluator=evaluator,
            callbacks=[EarlyStoppingCallback(early_stopping_patience=settings.patience)]
            if validated
            else None,
        )
        # the trainer prints its logs to stdout, which is the CLI's JSON output
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        result = trainer.train()
        return _Run(
            float(result.training_loss),
            int(result.global_step),
            float(trainer.state.epoch or 0),
            list(trainer.state.log_history),
        )


def _save(model: Any, out_folder: Path) -> None:
    partial = out_folder.with_name(out_folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save(str(partial))
    shutil.rmtree(out_folder, ignore_errors=True)
    partial.rename(out_folder)  # a crash never leaves a half-written model under its name
