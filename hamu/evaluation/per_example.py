"""Per-example outputs of one model on one split, computed once and reused by every metric.

Every utility number, attack score and forget-quality test in this package is a function of a handful of
per-example statistics. Computing them in one forward pass per (model, split) makes the three-way comparison
(original / retrained / unlearned) consistent by construction: all metrics see the same numbers, and nothing
is recomputed with a subtly different recipe (the drift between paper and code the field keeps hitting).

All statistics are computed in float64 from the logits, with the numerically stable forms:

* ``loss`` ℓ = −log p_y (cross-entropy);
* ``confidence`` p_y;
* ``entropy`` H(p) = −Σ_c p_c log p_c;
* ``modified_entropy`` (Song & Mittal 2021) Mentr = −(1−p_y) log p_y − Σ_{c≠y} p_c log(1−p_c);
* ``phi``, the logit-scaled confidence of LiRA, φ = log p_y − log(1−p_y);
* ``correct`` = 1[argmax p = y].

log(1−p_c) is taken as logsumexp of the other logits minus logsumexp of all of them for the arg-max class (the
only class whose probability can be close to 1) and as log1p(−p_c) for the others, so neither φ nor Mentr
saturates for confidently classified or confidently misclassified rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

#: One part of a split as the models read it: (inputs, labels). Not :class:`hamu.data.Split`, which is
#: the dataset split these tensors are encoded from.
Rows = tuple[torch.Tensor, torch.Tensor]

FIELDS = ("loss", "confidence", "entropy", "modified_entropy", "phi", "correct")


class NonFiniteOutputError(ValueError):
    """A model produced NaN/Inf logits on a split; the message names both."""


@dataclass(frozen=True)
class PerExample:
    """Per-example statistics of one model on one split (numpy float64 arrays of equal length).

    Held in memory only. These arrays are positional: row i is the split's row i. They carry no record IDs,
    but on the forget split they are still information about the erased rows, so they never go into a
    report (see :mod:`hamu.evaluation.report`).
    """

    targets: np.ndarray
    predictions: np.ndarray
    loss: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    modified_entropy: np.ndarray
    phi: np.ndarray
    correct: np.ndarray
    n_classes: int

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def field(self, name: str) -> np.ndarray:
        """One statistic by name (``loss``, ``confidence``, ...), with a clear error for unknown names."""
        if name not in FIELDS:
            raise ValueError(f"unknown per-example statistic {name!r}; expected one of {FIELDS}")
        value: np.ndarray = getattr(self, name)
        return value


def validate_split(name: str, split: Any) -> Rows:
    """Check that a split is an (inputs, targets) pair of equal, non-zero length with integer targets."""
    if not isinstance(split, tuple | list) or len(split) != 2:
        raise ValueError(f"split {name!r} must be an (inputs, targets) pair, got {type(split).__name__}")
    inputs, targets = split
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise ValueError(f"split {name!r}: inputs and targets must be torch tensors")
    if targets.ndim != 1:
        raise ValueError(
            f"split {name!r}: targets must be a 1-D tensor of class indices, got {tuple(targets.shape)}"
        )
    if inputs.ndim == 0 or inputs.shape[0] != targets.shape[0]:
        n_in = inputs.shape[0] if inputs.ndim else 0
        raise ValueError(
            f"split {name!r}: inputs and targets have different lengths ({n_in} vs {targets.shape[0]})"
        )
    if targets.shape[0] == 0:
        raise ValueError(f"split {name!r} is empty")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"split {name!r}: targets must be integer class indices, got dtype {targets.dtype}")
    return inputs, targets


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def collect_logits(
    model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 1024, device: torch.device | None = None
) -> torch.Tensor:
    """Logits of ``model`` on ``inputs`` in eval mode, batched, on the CPU as float64.

    The module's train/eval flags are restored afterwards: evaluation must not silently change the caller's
    model (a BatchNorm left in eval mode would change the next training run).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = device or _model_device(model)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    chunks: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for start in range(0, inputs.shape[0], batch_size):
                out = model(inputs[start : start + batch_size].to(dev))
                out = out.logits if hasattr(out, "logits") else out
                chunks.append(out.detach().to("cpu", torch.float64))
    finally:
        for m, mode in modes:
            m.training = mode
    return torch.cat(chunks)


def per_example_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> PerExample:
    """The per-example statistics from (already finite) logits; see the module docstring for the formulas."""
    if logits.ndim != 2 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"logits must have shape (n, classes) with n = {targets.shape[0]}, got {tuple(logits.shape)}"
        )
    z = logits.to(torch.float64)
    y = targets.to(torch.long).cpu()
    n_classes = z.shape[1]
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes of logits, got {n_classes}")
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"targets must lie in [0, {n_classes}), got range [{int(y.min())}, {int(y.max())}]")
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    rows = torch.arange(z.shape[0])
    logp_y = logp[rows, y]
    # log(1 − p_c) for every class: exact for the arg-max class, log1p(−p_c) (p_c ≤ ½) for the others.
    log1m = torch.log1p(-p.clamp(max=0.5))
    top = z.argmax(dim=1)
    masked = z.clone()
    masked[rows, top] = -torch.inf
    log1m[rows, top] = torch.logsumexp(masked, dim=1) - torch.logsumexp(z, dim=1)
    log1m_y = log1m[rows, y]
    entropy = -(p * logp).sum(dim=1)
    others = torch.ones_like(p, dtype=torch.bool)
    others[rows, y] = False
    mentr = -(1 - p[rows, y]) * logp_y - (p * log1m * others).sum(dim=1)
    return PerExample(
        targets=y.numpy().astype(np.int64),
        predictions=top.numpy().astype(np.int64),
        loss=(-logp_y).numpy(),
        confidence=logp_y.exp().numpy(),
        entropy=entropy.numpy(),
        modified_entropy=mentr.numpy(),
        phi=(logp_y - log1m_y).numpy(),
        correct=(top == y).numpy().astype(np.float64),
        n_classes=int(n_classes),
    )


def compute_per_example(
    model: nn.Module,
    split: Rows,
    *,
    model_name: str = "model",
    split_name: str = "split",
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> PerExample:
    """Run ``model`` over one split once and return its per-example statistics.

    Raises :class:`NonFiniteOutputError` naming the model and split when any logit is NaN/Inf: a NaN would
    otherwise sort arbitrarily inside an AUC and produce a plausible-looking but meaningless number.
    """
    inputs, targets = validate_split(split_name, split)
    logits = collect_logits(model, inputs, batch_size=batch_size, device=device)
    finite = torch.isfinite(logits).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteOutputError(
            f"model {model_name!r} produced NaN/Inf logits on split {split_name!r} "
            f"({bad} of {logits.shape[0]} rows)"
        )
    try:
        return per_example_from_logits(logits, targets)
    except ValueError as exc:
        raise ValueError(f"model {model_name!r} on split {split_name!r}: {exc}") from None


def compute_all(
    models: Mapping[str, nn.Module], splits: Mapping[str, Rows], *, batch_size: int = 1024
) -> dict[str, dict[str, PerExample]]:
    """Per-example statistics for every (model, split) pair: ``out[model][split]``."""
    return {
        m: {
            s: compute_per_example(model, split, model_name=m, split_name=s, batch_size=batch_size)
            for s, split in splits.items()
        }
        for m, model in models.items()
    }
