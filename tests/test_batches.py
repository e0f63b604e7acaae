from __future__ import annotations

import numpy as np
import pytest

from trainables.batches import epoch_batches

LABELS = np.repeat(np.arange(20), 7)


def test_m_per_class_batches_hold_m_samples_of_each_class() -> None:
    for batch in epoch_batches(LABELS, 32, 4, seed=0, epoch=0):
        assert len(batch) == 32
        _, counts = np.unique(LABELS[batch], return_counts=True)
        assert set(counts.tolist()) == {4}


def test_uniform_batches_cover_distinct_items_and_drop_the_remainder() -> None:
    batches = epoch_batches(LABELS, 32, 0, seed=0, epoch=0)
    flat = np.concatenate(batches)
    assert len(batches) == len(LABELS) // 32 and len(set(flat.tolist())) == len(flat)


def test_batch_order_depends_only_on_seed_and_epoch() -> None:
    a = epoch_batches(LABELS, 32, 4, seed=1, epoch=2)
    assert all((x == y).all() for x, y in zip(a, epoch_batches(LABELS, 32, 4, seed=1, epoch=2)))
    assert any((x != y).any() for x, y in zip(a, epoch_batches(LABELS, 32, 4, seed=1, epoch=3)))


def test_too_few_items_for_a_batch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="batch"):
        epoch_batches(LABELS[:10], 32, 0, seed=0, epoch=0)
