"""Batch iterables over in-memory tensors (seeded shuffling, re-shuffled every pass)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class ShuffledBatches:
    """Iterate ``(inputs, targets)`` batches; each pass uses the next permutation of one seeded generator."""

    def __init__(self, data: tuple[Any, Any], batch_size: int, *, seed: int = 0) -> None:
        self.inputs, self.targets = data
        if len(self.targets) == 0:
            raise ValueError("cannot batch an empty set")
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(self.targets), generator=self.generator)
        for i in range(0, len(perm), self.batch_size):
            idx = perm[i : i + self.batch_size]
            if len(idx) < 2 and len(perm) > 1:
                continue
            yield self.inputs[idx], self.targets[idx]


def batches(data: tuple[Any, Any], batch_size: int, *, seed: int = 0) -> ShuffledBatches:
    return ShuffledBatches(data, batch_size, seed=seed)
