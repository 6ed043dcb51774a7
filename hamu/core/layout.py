"""Flat gradient buffers: every trainable tensor as one segment of a single vector.

Keeping the paired gradients in two flat buffers lets the model-wide transform compute every per-tensor
norm and dot product with one segmented reduction and build every per-tensor update with one fused
multiply-add, instead of a Python loop with a host synchronisation per tensor.

The per-segment operations pick their implementation by device. On accelerators, one segmented kernel
(``segment_reduce``, ``repeat_interleave``) beats a launch per tensor. On the CPU there are no launches to
save and those two kernels are slow (≈ 180 µs and ≈ 120 µs for 100k elements on one core, measured), while
a BLAS dot or a multiply on each contiguous view costs a few microseconds: there the loop over views wins,
with no host synchronisation either way. The three primitives the transform calls every step (Gram scalars,
orthogonal residual, combination) run that loop through numpy when the buffers share one float32/float64
dtype: per view numpy's call costs about a third of torch's, which at a model's tensor sizes is most of the
operation (the CNN's transform went from 0.74 ms to 0.47 ms per step with the scalars on the host too, and to
0.40 ms with fewer calls per step: docs/results.md §2).

No per-step primitive synchronises with the host: the segment lengths are built once with the layout (so
``segment_reduce`` runs with ``unsafe=True``, skipping its validation, which reads back from the device), and
``repeat_interleave`` is told its output size. Coefficients are never rounded to the values' dtype: mixed
inputs promote, on both paths, like ``expand(a) * x`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch

from hamu.core.arrays import on_host


@dataclass(frozen=True)
class FlatLayout:
    """Where each named tensor lives in a flat buffer."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    lengths: torch.Tensor  # int64, one entry per segment, on the buffers' device
    numel: int
    strategy: Literal["auto", "fused", "views"] = "auto"  # auto: views on the CPU, fused kernels elsewhere

    @classmethod
    def for_tensors(
        cls,
        names: Sequence[str],
        tensors: Sequence[torch.Tensor],
        device: torch.device | None = None,
        strategy: Literal["auto", "fused", "views"] = "auto",
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
            strategy=strategy,
        )

    @property
    def num_segments(self) -> int:
        return len(self.names)

    @cached_property
    def sizes(self) -> list[int]:
        """Element count of each segment (computed once: the per-view paths use it every step)."""
        return [int(torch.Size(s).numel()) for s in self.shapes]

    def _use_views(self, values: torch.Tensor) -> bool:
        return self.strategy == "views" or (self.strategy == "auto" and values.device.type == "cpu")

    @cached_property
    def bounds(self) -> list[tuple[int, int]]:
        """(start, end) of each segment in the flat buffer."""
        ends = list(itertools.accumulate(self.sizes))
        return list(zip([0, *ends[:-1]], ends, strict=True))

    def on_host(self, *values: torch.Tensor) -> bool:
        """The CPU path with numpy: the per-view strategy and CPU buffers of one float dtype numpy shares
        (see :mod:`hamu.core.arrays`). The per-view loops take it (numpy's call overhead on a view is a third
        of torch's, most of an operation's cost at a model's tensor sizes), and so do the transform's
        scalars: the fused strategy keeps the accelerator's torch path, so a CPU-only test exercises both."""
        return self._use_views(values[0]) and on_host(*values)

    def segment_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of ``values`` over each segment (one entry per tensor)."""
        if self._use_views(values):
            return torch.stack([chunk.sum() for chunk in values.split(self.sizes)])
        # unsafe=True: skip the validation of ``lengths`` (a min() and a sum() read back from the device, one
        # host synchronisation each); the lengths were built from the tensors' sizes and sum to ``numel``.
        return torch.segment_reduce(values, "sum", lengths=self.lengths, unsafe=True)

    def segment_dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-segment dot products ``a_s · b_s`` (one entry per tensor)."""
        if self._use_views(a):
            sizes = self.sizes
            return torch.stack([x @ y for x, y in zip(a.split(sizes), b.split(sizes), strict=True)])
        return self.segment_sum(a * b)

    def segment_gram(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-segment ``(a_s·a_s, b_s·b_s, a_s·b_s)`` in one pass over the segments.

        Why one call: the transform needs all three every step; on the CPU path one loop over the views
        needs one split per operand and one stack instead of three of each.
        """
        if self.on_host(a, b):
            x, y = a.numpy(), b.numpy()
            host = np.array([_gram3(x[s:e], y[s:e]) for s, e in self.bounds], dtype=x.dtype)
            return torch.from_numpy(host[:, 0]), torch.from_numpy(host[:, 1]), torch.from_numpy(host[:, 2])
        if self._use_views(a):
            sizes = self.sizes
            dots = [
                d for x, y in zip(a.split(sizes), b.split(sizes), strict=True) for d in (x @ x, y @ y, x @ y)
            ]
            gram = torch.stack(dots).view(-1, 3)
            return gram[:, 0], gram[:, 1], gram[:, 2]
        return self.segment_dot(a, a), self.segment_dot(b, b), self.segment_dot(a, b)

    def segment_residual_sq(self, a: torch.Tensor, coef: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-segment ``‖a_s − coef_s·b_s‖²``, computed from the vectors (not from the Gram scalars).

        Why from the vectors: for nearly colinear a and b the scalar formula cancels catastrophically. The
        CPU path forms each residual on its own view instead of concatenating a full-size buffer first.
        """
        if self.on_host(a, coef, b):
            x, k, y = a.numpy(), coef.numpy(), b.numpy()
            out = np.empty(len(self.bounds), dtype=x.dtype)
            # One scratch view reused for every segment: no full-size temporaries to allocate and fault in.
            scratch = np.empty(max(self.sizes), dtype=x.dtype)
            for i, (s, e) in enumerate(self.bounds):
                view = scratch[: e - s]
                np.multiply(y[s:e], -k[i], out=view)
                view += x[s:e]
                out[i] = view @ view
            return torch.from_numpy(out)
        if self._use_views(a):
            sizes = self.sizes
            dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), coef.dtype)
            xs, ys = a.to(dtype).split(sizes), b.to(dtype).split(sizes)
            ks = coef.to(dtype).unbind()
            residuals = [xs[i] - ks[i] * ys[i] for i in range(len(sizes))]
            return torch.stack([r @ r for r in residuals])
        residual = a - self.expand(coef) * b
        return self.segment_sum(residual * residual)

    def expand(self, per_segment: torch.Tensor) -> torch.Tensor:
        """Broadcast one value per segment to every element of that segment."""
        return per_segment.repeat_interleave(self.lengths, output_size=self.numel)

    def scale(self, per_segment: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values`` with each segment multiplied by its own scalar (``expand(per_segment) * values``)."""
        if self._use_views(values):
            dtype = torch.promote_types(per_segment.dtype, values.dtype)
            factors = per_segment.to(dtype).unbind()
            chunks = values.to(dtype).split(self.sizes)
            return torch.cat([chunk * f for chunk, f in zip(chunks, factors, strict=True)])
        return self.expand(per_segment) * values

    def combine(self, a: torch.Tensor, x: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per segment ``a_s·x_s + b_s·y_s`` (the HAMU update from its two coefficients per tensor)."""
        if self.on_host(a, x, b, y):
            ka, xs, kb, ys = a.numpy(), x.numpy(), b.numpy(), y.numpy()
            out = np.empty_like(xs)
            for i, (s, e) in enumerate(self.bounds):
                np.multiply(xs[s:e], ka[i], out=out[s:e])
                out[s:e] += ys[s:e] * kb[i]
            return torch.from_numpy(out)
        if self._use_views(x):
            sizes = self.sizes
            dtype = torch.promote_types(torch.promote_types(a.dtype, x.dtype), b.dtype)
            dtype = torch.promote_types(dtype, y.dtype)
            xs, ys = x.to(dtype).split(sizes), y.to(dtype).split(sizes)
            ak, bk = a.to(dtype).unbind(), b.to(dtype).unbind()
            return torch.cat([xs[i] * ak[i] + ys[i] * bk[i] for i in range(len(sizes))])
        return self.expand(a) * x + self.expand(b) * y

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``flat`` shaped like the original tensors."""
        return [chunk.view(shape) for chunk, shape in zip(flat.split(self.sizes), self.shapes, strict=True)]

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


def _gram3(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    return x @ x, y @ y, x @ y
