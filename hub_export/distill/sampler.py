"""Batches of texts of similar token length, for sentence-transformers' trainer.

A batch is padded to its longest text. A distillation's training set mixes a few long documents with many short
sentences, and sentences themselves run from five to a hundred tokens: random batches of 32 of SciFact's sentences
run 2.5x the tokens they hold (grouped: 1.07x). Grouping texts of similar length (as transformers' ``group_by_length``:
shuffle, sort within mega-batches of 50 batches, cut) spends the compute on the tokens; the batches' order is
then shuffled again. Which texts share a batch changes, not what each text contributes: the MSE is a mean over
texts and a text's padding is masked, so this is exact, not an approximation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler

MEGA_BATCHES = 50  # batches whose texts are sorted together (transformers' LengthGroupedSampler uses 50 too)


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """Shuffled batches of texts of similar token length, the same each time for one seed and epoch (a resumed
    run skips the batches it had done).

    Args:
        dataset: The training dataset (its text columns are measured; a ``label`` column is not).
        batch_size: Texts per batch.
        drop_last: Whether to drop the last, smaller batch.
        valid_label_columns: The columns that hold labels (not measured).
        generator: Unused: the order depends on ``seed`` and the epoch alone.
        seed: The order's seed (the epoch is added).
        token_counts: Gives the number of tokens of each of a list of texts.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        token_counts: Callable[[list[str]], Sequence[int]] | None = None,
    ) -> None:
        super().__init__(
            range(len(dataset)),
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        if token_counts is None:
            raise ValueError("LengthGroupedBatchSampler needs token_counts, a function of a list of texts")
        labels = set(valid_label_columns or []) | {"label", "dataset_name"}
        columns = [name for name in dataset.column_names if name not in labels]
        lengths = torch.zeros(len(dataset), dtype=torch.long)
        for name in columns:
            lengths += torch.as_tensor(token_counts(list(dataset[name])), dtype=torch.long)
        self.lengths = lengths

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.Generator().manual_seed(self.seed + self.epoch)
        shuffled = torch.randperm(len(self.lengths), generator=order)
        mega = self.batch_size * MEGA_BATCHES
        batches: list[list[int]] = []
        for start in range(0, len(shuffled), mega):
            chunk = shuffled[start : start + mega]
            ranked = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)].tolist()
            batches += [ranked[i : i + self.batch_size] for i in range(0, len(ranked), self.batch_size)]
        if self.drop_last:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        for position in torch.randperm(len(batches), generator=order).tolist():
            yield batches[position]

    def __len__(self) -> int:
        # Mega-batches hold whole batches, so only the last batch of the epoch can be smaller.
        whole, rest = divmod(len(self.lengths), self.batch_size)
        return whole + (1 if rest and not self.drop_last else 0)


__all__ = ["LengthGroupedBatchSampler"]
