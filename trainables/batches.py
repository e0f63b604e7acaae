"""Which items form each batch of an epoch: uniform, or M samples per class for pair losses.

Batch order is a pure function of (labels, seed, epoch), so a resumed trial sees exactly the
batches it would have seen without the interruption, with no RNG state in the checkpoint.
"""
from __future__ import annotations

import numpy as np


def epoch_batches(labels: np.ndarray, batch_size: int, m_per_class: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index arrays of one epoch (len(labels) // batch_size full batches, the remainder dropped).

    m_per_class = 0: a uniform shuffle. m > 0: each batch holds batch_size // m classes with m
    samples each (with replacement inside classes smaller than m), so pair losses always find
    positives — with uniform batches of 64 out of 90 classes most samples have none.
    """
    n_batches = len(labels) // batch_size
    if n_batches == 0:
        raise ValueError(f"{len(labels)} training items cannot fill one batch of {batch_size}; lower --batch-size.")
    rng = np.random.default_rng([seed, epoch])
    if m_per_class == 0:
        return list(rng.permutation(len(labels))[: n_batches * batch_size].reshape(n_batches, batch_size))

    classes, inverse = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
    per_batch = batch_size // m_per_class
    if per_batch > len(classes):
        raise ValueError(f"batch_size {batch_size} / m_per_class {m_per_class} needs {per_batch} classes, "
                         f"but only {len(classes)} are in the training set.")
    batches = []
    order = rng.permutation(len(classes))
    cursor = 0
    for _ in range(n_batches):
        if cursor + per_batch > len(order):
            order, cursor = rng.permutation(len(classes)), 0
        chosen = order[cursor: cursor + per_batch]
        cursor += per_batch
        batches.append(np.concatenate([
            rng.choice(members[c], m_per_class, replace=len(members[c]) < m_per_class) for c in chosen
        ]))
    return batches
