from __future__ import annotations

import numpy as np
import pytest

from trainables.data.splits import fixed_split, kfold_splits

TRAIN = np.arange(100, 200)


def test_fixed_split_is_ten_percent_disjoint_and_inside_the_training_classes() -> None:
    s = fixed_split(TRAIN, 0.1, seed=3)
    assert len(s.val) == 10 and len(s.fit) == 90
    assert not set(s.fit) & set(s.val)
    assert set(s.fit) | set(s.val) == set(TRAIN.tolist())


def test_fixed_split_is_reproducible_from_the_seed_and_random_not_contiguous() -> None:
    assert fixed_split(TRAIN, 0.1, seed=3) == fixed_split(TRAIN, 0.1, seed=3)
    assert fixed_split(TRAIN, 0.1, seed=3).val != fixed_split(TRAIN, 0.1, seed=4).val
    val = np.array(fixed_split(TRAIN, 0.1, seed=3).val)
    assert val.max() - val.min() > len(val)  # not one contiguous block of class ids


def test_validation_classes_never_include_test_classes_of_a_dataset(blobs) -> None:
    s = fixed_split(blobs.train_classes, 0.34, seed=0)
    assert not (set(s.val) | set(s.fit)) & set(blobs.test_classes.tolist())


def test_kfold_folds_partition_the_training_classes() -> None:
    folds = kfold_splits(TRAIN, 10, seed=1)
    vals = [set(f.val) for f in folds]
    assert sum(len(v) for v in vals) == 100 and set().union(*vals) == set(TRAIN.tolist())
    assert all(not set(f.fit) & set(f.val) for f in folds)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_val_fraction_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        fixed_split(TRAIN, fraction)
