"""The length-grouped batch sampler: every text once an epoch, batches of similar length, a fixed order per seed
and epoch (a resumed run skips the batches it had done)."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from torch.utils.data import BatchSampler, RandomSampler

from hub_export.distill.sampler import LengthGroupedBatchSampler


def words(texts: list[str]) -> list[int]:
    return [len(text.split()) for text in texts]


def dataset(count: int, seed: int = 0, columns: tuple[str, ...] = ("text",)) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = {name: [" ".join(["w"] * int(n)) for n in rng.integers(1, 101, count)] for name in columns}
    return Dataset.from_dict(rows | {"label": rng.normal(size=(count, 4)).tolist()})


def sampler(data: Dataset, batch_size: int = 32, drop_last: bool = False, seed: int = 0) -> LengthGroupedBatchSampler:
    return LengthGroupedBatchSampler(data, batch_size, drop_last, ["label"], None, seed, token_counts=words)


def padding(batches: list[list[int]], lengths: np.ndarray) -> int:
    """Padded positions: each batch runs to its longest text."""
    return int(sum(lengths[batch].max() * len(batch) - lengths[batch].sum() for batch in batches))


@pytest.mark.parametrize(("count", "drop_last"), [(3300, False), (3300, True), (32 * 60, False), (5, False)])
def test_every_text_is_in_one_batch_an_epoch(count, drop_last) -> None:
    grouped = sampler(dataset(count), drop_last=drop_last)
    batches = list(grouped)
    assert len(batches) == len(grouped) == len(list(BatchSampler(range(count), 32, drop_last)))
    seen = sorted(i for batch in batches for i in batch)
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(count))  # no text twice
    if drop_last:  # only the last, smaller batch is dropped
        assert len(seen) == count // 32 * 32 and {len(batch) for batch in batches} == {32}
    else:
        assert seen == list(range(count))


def test_length_grouped_batches_pad_a_tenth_of_what_random_batches_pad() -> None:
    data = dataset(3300)
    lengths = np.array(words(data["text"]))
    grouped = padding(list(sampler(data)), lengths)
    shuffled = padding(list(BatchSampler(RandomSampler(range(3300)), 32, False)), lengths)
    assert grouped < 0.1 * shuffled


def test_pairs_are_grouped_by_the_sum_of_their_columns() -> None:
    data = dataset(1600, columns=("query", "document"))
    grouped = sampler(data)
    np.testing.assert_array_equal(grouped.lengths.numpy(), np.add(words(data["query"]), words(data["document"])))


def test_the_order_is_fixed_by_seed_and_epoch() -> None:
    data = dataset(3300)
    first, again, other_seed = sampler(data), sampler(data), sampler(data, seed=1)
    assert list(first) == list(again) and list(first) != list(other_seed)
    before = list(first)
    first.set_epoch(1)
    assert list(first) != before and sorted(map(sorted, first)) != sorted(map(sorted, before))
    first.set_epoch(0)
    assert list(first) == before


def test_the_batches_are_shuffled_not_longest_first() -> None:
    data = dataset(3300)
    lengths = np.array(words(data["text"]))
    longest = [int(lengths[batch].max()) for batch in sampler(data)]
    assert longest != sorted(longest, reverse=True) and longest != sorted(longest)


def test_a_sampler_without_token_counts_is_refused() -> None:
    with pytest.raises(
        ValueError, match="^LengthGroupedBatchSampler needs token_counts, a function of a list of texts$"
    ):
        LengthGroupedBatchSampler(dataset(5), 4, False)
