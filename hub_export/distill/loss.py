"""The distillation loss: sentence-transformers' ``MSELoss`` to the teacher's vectors, with an optional in-batch
ranking term on (query, document) pairs.

The MSE matches each vector; retrieval needs the order of a query's documents, which a small error in every vector
can still change. The ranking term (``ranking_weight`` > 0) takes a batch of pseudo queries and the documents they
come from and makes the student's distribution of each query over the batch's documents (softmax of the cosines /
``temperature``) match the teacher's: KL(teacher || student), as in score distillation for dense retrievers. Batches
of one column (documents or queries alone) have the MSE only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import MSELoss
from torch import Tensor
from torch.nn import functional


class NonFiniteLoss(ValueError):
    """The training loss stopped being a finite number."""


class DistillLoss(MSELoss):
    """``MSELoss`` (mean over the elements) + ``ranking_weight`` x the in-batch KL of two-column batches; stops the
    run, naming the step, once the loss is not finite.

    Args:
        model: The student.
        ranking_weight: Weight of the ranking term (0: the MSE alone, sentence-transformers' ``MSELoss``).
        temperature: Temperature of the softmax over a batch's cosines.
    """

    def __init__(self, model: Any, ranking_weight: float = 0.0, temperature: float = 0.05) -> None:
        super().__init__(model)
        self.ranking_weight = ranking_weight
        self.temperature = temperature
        self.step = 0  # the trainer's step, set by a callback, for the error message

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        """The MSE of each column to its teacher vectors (labels ``[batch, dim]``, or ``[batch, columns, dim]``), plus
        the weighted ranking term for (query, document) batches."""
        if labels is None:
            raise ValueError("DistillLoss needs the teacher's vectors as labels")
        embeddings = embed_columns(self.model, sentence_features)
        labels = labels.detach()
        targets = [labels[:, i] for i in range(labels.size(1))] if labels.dim() == 3 else [labels] * len(embeddings)
        loss = self.compute_loss_from_embeddings(embeddings, targets)
        if self.ranking_weight > 0 and len(embeddings) == 2:
            loss = loss + self.ranking_weight * self.ranking(embeddings, targets)
        if not torch.isfinite(loss).all():
            raise NonFiniteLoss(
                f"the training loss is not finite at step {self.step + 1}: nothing was written; "
                "try a smaller lr, or check the student's weights"
            )
        return loss

    def ranking(self, embeddings: list[Tensor], targets: list[Tensor]) -> Tensor:
        """KL(teacher || student) of each query's softmax over the batch's documents (batchmean)."""
        queries, documents = (functional.normalize(e, dim=-1) for e in embeddings)
        wanted = targets[0].to(queries.dtype) @ targets[1].to(queries.dtype).T / self.temperature
        scores = queries @ documents.T / self.temperature
        return functional.kl_div(
            functional.log_softmax(scores, dim=-1),
            functional.log_softmax(wanted, dim=-1),
            reduction="batchmean",
            log_target=True,
        )


__all__ = ["DistillLoss", "NonFiniteLoss"]
