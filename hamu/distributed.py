"""Split gradient pairing across processes with ``torch.distributed``.

Even ranks compute retain-objective gradients, odd ranks forget-objective gradients, each on its own batch,
each clipped locally. One ``all_gather`` of the flat gradient (with the loss and pre-clip norm appended)
gives every rank all of them; g_r is the mean over even ranks, g_f the mean over odd ranks. Every rank then
applies the same method to the same (g_r, g_f), so replicas stay identical without a DDP all-reduce.

With two ranks this is step-for-step the same computation as :class:`hamu.unlearner.SequentialPairing` on
the same batches, in half the wall time per step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist

from hamu.unlearner import ObjectiveGradient, PairedGradients, Role


class SplitPairing:
    """Pair gradients across an even number of ranks of the default (or given) process group."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("split pairing needs an initialised torch.distributed process group")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if self.world < 2 or self.world % 2:
            raise ValueError(f"split pairing needs an even number of ranks >= 2, got {self.world}")

    @property
    def role(self) -> Role:
        return "retain" if self.rank % 2 == 0 else "forget"

    def roles(self, needs_retain: bool, needs_forget: bool) -> tuple[Role, ...]:
        if not (needs_retain and needs_forget):
            raise ValueError(
                "split pairing needs a method with both a retain and a forget objective "
                "(ft and ga are not paired; run them with plain data parallelism)"
            )
        return (self.role,)

    def pair(self, computed: Mapping[Role, ObjectiveGradient]) -> PairedGradients:
        local = computed[self.role]
        # One buffer in at least float32: half-precision gradients are exact there, the loss and norm keep
        # their precision, and the mean over pairs is not rounded to half precision.
        wire = torch.promote_types(torch.promote_types(local.flat.dtype, local.loss.dtype), torch.float32)
        packed = torch.cat(
            [local.flat.to(wire), local.loss.reshape(1).to(wire), local.norm.reshape(1).to(wire)]
        )
        gathered = [torch.empty_like(packed) for _ in range(self.world)]
        dist.all_gather(gathered, packed, group=self.group)
        # Rows alternate retain, forget, retain, forget, ... → (pairs, 2, n) and average over pairs.
        pairs = torch.stack(gathered).view(self.world // 2, 2, -1).mean(dim=0)
        retain, forget = pairs[0], pairs[1]
        # The gradients go back in the parameters' dtype: the method's update is assigned as ``p.grad``,
        # which must match the parameter's dtype (a float32 grad on a bfloat16 parameter raises).
        grad_dtype = local.flat.dtype
        return PairedGradients(
            retain=retain[:-2].to(grad_dtype),
            forget=forget[:-2].to(grad_dtype),
            retain_loss=retain[-2],
            forget_loss=forget[-2],
            retain_norm=retain[-1],
            forget_norm=forget[-1],
        )
