"""Where HAMU's per-block scalars are computed: numpy on the host, torch on accelerators.

Why two namespaces: a step's scalar work (radii, shares, the closed-form solution, the diagnostics) is about a
hundred elementwise operations on vectors with one entry per tensor (8 for the demo CNN). On the CPU each
torch call on such a vector costs 1–3 µs of dispatch, numpy's 0.4–1.3 µs (measured on the project's 2-core
machine), so the same code run through numpy saves about half a millisecond per step. On an accelerator the
scalars must stay on the device (a host round trip per step is a synchronisation), so torch runs them there.

The scalar code is written once against the small set of functions both modules share (``where``, ``sqrt``,
``maximum``, ``exp``, ``isfinite``, ``nan_to_num``, ``zeros_like``, ``ones_like``, ``full_like`` and the
operators), and takes the namespace as its first argument. Host arrays share memory with their tensors
(``Tensor.numpy`` / ``torch.as_tensor``), so the hand-over copies nothing but 0-d results.

Constants enter as Python scalars (``where(mask, 0.0, x)``), not as allocated fills: Python scalars are weak
in numpy 2 and in torch alike, so they never change an array's dtype, and a ``zeros_like`` costs a call.
Inside the training loop, right after the backward passes, every such call costs about twice its warm time
(docs/results.md §2), so the number of calls is the cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Dtypes numpy computes exactly like torch (bfloat16 has no numpy counterpart; half precision is not a
#: scalar dtype of HAMU's, see :func:`hamu.core.transform.scalar_dtype`).
_HOST_DTYPES = (torch.float32, torch.float64)


def on_host(*tensors: torch.Tensor) -> bool:
    """Whether the scalars of these tensors can be computed with numpy: all on the CPU, one float dtype
    numpy shares, and no autograd history (``Tensor.numpy`` refuses tensors that require grad)."""
    first = tensors[0]
    return first.dtype in _HOST_DTYPES and all(
        t.device.type == "cpu" and t.dtype == first.dtype and not t.requires_grad for t in tensors
    )


def namespace(host: bool) -> Any:
    """The module the scalar code calls: numpy on the host, torch otherwise."""
    return np if host else torch


def to_arrays(host: bool, *tensors: torch.Tensor) -> tuple[Any, ...]:
    """The tensors as the namespace's arrays (views of the same memory on the host)."""
    return tuple(t.numpy() for t in tensors) if host else tensors


def to_tensor(value: Any) -> torch.Tensor:
    """A namespace's array or 0-d result back as a tensor (shares memory with a numpy array)."""
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def to_tensors(*values: Any) -> tuple[torch.Tensor, ...]:
    """Several arrays of one shape and dtype as tensors. On the host one conversion serves them all
    (stacked, then unbound into views): a conversion costs about as much as the arithmetic that made the
    value, and the transform hands back about twenty of them per step."""
    if isinstance(values[0], torch.Tensor):
        return tuple(values)
    return torch.from_numpy(np.stack(values)).unbind()


def int8_codes(xp: Any, values: Any) -> Any:
    """Small integer codes stored as int8 in either namespace."""
    return values.astype(np.int8) if xp is np else values.to(torch.int8)


def clamp0(xp: Any, values: Any) -> Any:
    """``max(values, 0)`` elementwise, NaN kept (torch's ``clamp_min(0)``, which numpy spells otherwise)."""
    return np.maximum(values, 0.0) if xp is np else values.clamp_min(0.0)


def nan_to_zero(xp: Any, values: Any) -> Any:
    """``values`` with NaN replaced by 0 (numpy's ``nan_to_num`` is about ten times slower on tiny arrays,
    and also clips infinities, which HAMU's coefficients never need)."""
    return xp.where(values != values, 0.0, values)
