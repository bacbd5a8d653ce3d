"""A loss for query-side training with sentence-transformers' trainer.

`BankSoftmaxLoss` is MultipleNegativesRankingLoss with a fixed bank of document vectors in
place of in-batch documents: each query is scored against every vector of the bank (the
serving index's chunks, as its frozen document encoder embedded them), and cross-entropy
pulls it towards its positive. Every other chunk is a negative, the hardest included, and
only the short queries pass through the encoder, so a step costs a fraction of a
symmetric one and the documents never need embedding again. The other known positives of
the same query are masked out, so they are never pushed away.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


class BankSoftmaxLoss(nn.Module):
    def __init__(
        self,
        model: Any,
        bank: Tensor,
        positives: list[int],
        masked: list[list[int]],
        scale: float = 20.0,
    ) -> None:
        """`positives[row]`: the bank index of example `row`'s positive; `masked[row]`: bank
        indices of other positives of the same query. The dataset's `label` is the row."""
        super().__init__()
        self.model = model
        self.bank: Tensor
        self.register_buffer("bank", nn.functional.normalize(bank.float(), dim=-1))
        self.positives = positives
        self.masked = masked
        self.scale = scale

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = next(iter(sentence_features))
        queries = nn.functional.normalize(self.model(features)["sentence_embedding"], dim=-1)
        scores = queries @ self.bank.T * self.scale
        rows = labels.tolist()
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for i, row in enumerate(rows):
            if self.masked[row]:
                mask[i, self.masked[row]] = True
        scores = scores.masked_fill(mask, float("-inf"))
        target = torch.tensor([self.positives[r] for r in rows], device=scores.device)
        return nn.functional.cross_entropy(scores, target)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "bank_size": int(self.bank.shape[0])}
