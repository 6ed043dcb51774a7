"""Flat gradient buffers: every trainable tensor as one segment of a single vector.

Keeping the paired gradients in two flat buffers lets the model-wide transform compute every per-tensor
norm and dot product with one segmented reduction and build every per-tensor update with one fused
multiply-add, instead of a Python loop with a host synchronisation per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FlatLayout:
    """Where each named tensor lives in a flat buffer."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    lengths: torch.Tensor  # int64, one entry per segment, on the buffers' device
    numel: int

    @classmethod
    def for_tensors(
        cls,
        names: Sequence[str],
        tensors: Sequence[torch.Tensor],
        device: torch.device | None = None,
    ) -> FlatLayout:
        if len(names) != len(tensors):
            raise ValueError(f"got {len(names)} names for {len(tensors)} tensors")
        if not tensors:
            raise ValueError("a layout needs at least one tensor")
        sizes = [t.numel() for t in tensors]
        dev = device if device is not None else tensors[0].device
        return cls(
            names=tuple(names),
            shapes=tuple(t.shape for t in tensors),
            lengths=torch.tensor(sizes, dtype=torch.int64, device=dev),
            numel=sum(sizes),
        )

    @property
    def num_segments(self) -> int:
        return len(self.names)

    def segment_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of ``values`` over each segment (one entry per tensor)."""
        return torch.segment_reduce(values, "sum", lengths=self.lengths)

    def expand(self, per_segment: torch.Tensor) -> torch.Tensor:
        """Broadcast one value per segment to every element of that segment."""
        return per_segment.repeat_interleave(self.lengths, output_size=self.numel)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``flat`` shaped like the original tensors."""
        sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        return [chunk.view(shape) for chunk, shape in zip(flat.split(sizes), self.shapes, strict=True)]

    def flatten(
        self, tensors: Sequence[torch.Tensor | None], dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Concatenate tensors into one buffer; ``None`` (no gradient) contributes zeros of ``dtype``
        (default: the first present tensor's dtype)."""
        fill = dtype or next((t.dtype for t in tensors if t is not None), torch.float32)
        parts = []
        for tensor, shape in zip(tensors, self.shapes, strict=True):
            if tensor is None:
                numel = int(torch.Size(shape).numel())
                parts.append(torch.zeros(numel, device=self.lengths.device, dtype=fill))
            else:
                parts.append(tensor.reshape(-1))
        return torch.cat(parts)
