"""Split pairing on torch.distributed (gloo, 2 CPU processes) must equal sequential pairing, in float32 and
with bfloat16/float16 parameters; and ``device="auto"`` says when it moves a model."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hamu import UnlearnConfig, unlearn

STEPS = 6


def _data() -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(96, 10, generator=gen)
    y = torch.randint(0, 4, (96,), generator=gen)
    retain = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    forget = [(x[i : i + 16], y[i : i + 16]) for i in range(64, 96, 16)]
    return retain, forget


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def _cast(
    batches: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.to(dtype), y) for x, y in batches]


def _config(method: str) -> UnlearnConfig:
    return UnlearnConfig(method=method, lr=0.05, max_steps=STEPS, device="cpu")


def _worker(rank: int, port: int, out_dir: str, method: str, dtype: torch.dtype = torch.float32) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from hamu.distributed import SplitPairing

        retain, forget = (_cast(d, dtype) for d in _data())
        pairing = SplitPairing()
        result = unlearn(
            _model(dtype),
            nn.functional.cross_entropy,
            retain if pairing.role == "retain" else None,
            forget if pairing.role == "forget" else None,
            _config(method),
            pairing=pairing,
        )
        flat = torch.cat([p.detach().reshape(-1) for p in result.model.parameters()])
        np.save(Path(out_dir) / f"rank{rank}.npy", flat.double().numpy())
        losses = [(r.retain_loss, r.forget_loss) for r in result.history]
        np.save(Path(out_dir) / f"losses{rank}.npy", np.array(losses, dtype=np.float64))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hamu-q", "gdiff"])
def test_split_pairing_equals_sequential(tmp_path: Path, method: str) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), method), nprocs=2, join=True)
    retain, forget = _data()
    sequential = unlearn(_model(), nn.functional.cross_entropy, retain, forget, _config(method))
    assert sequential.steps_applied == STEPS
    expected = torch.cat([p.detach().reshape(-1) for p in sequential.model.parameters()]).numpy()
    start = torch.cat([p.detach().reshape(-1) for p in _model().parameters()]).numpy()
    assert not np.allclose(expected, start), "the run must actually move the weights"
    seq_losses = np.array([(r.retain_loss, r.forget_loss) for r in sequential.history])
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npy")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.load(tmp_path / f"losses{rank}.npy"), seq_losses, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_pairing_with_half_precision_parameters(tmp_path: Path, dtype: torch.dtype) -> None:
    """The gathered buffer is float32 (the loss and norm travel with the gradient); the paired gradients
    must come back in the parameters' dtype, or the update cannot be assigned as ``p.grad`` (it raised)."""
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), "hamu-q", dtype), nprocs=2, join=True)
    retain, forget = (_cast(d, dtype) for d in _data())
    sequential = unlearn(_model(dtype), nn.functional.cross_entropy, retain, forget, _config("hamu-q"))
    assert sequential.steps_applied == STEPS
    assert all(p.dtype == dtype for p in sequential.model.parameters())
    expected = torch.cat([p.detach().reshape(-1) for p in sequential.model.parameters()]).double().numpy()
    start = torch.cat([p.detach().reshape(-1) for p in _model(dtype).parameters()]).double().numpy()
    assert not np.allclose(expected, start), "the run must actually move the weights"
    eps = float(torch.finfo(dtype).eps)
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npy")
        assert not np.allclose(got, start)
        # Same computation; allow a few roundings of a half-precision weight.
        np.testing.assert_allclose(got, expected, rtol=4 * eps, atol=4 * eps * np.abs(expected).max())


def test_auto_device_message_names_the_move() -> None:
    from hamu.unlearner import auto_move_message

    model = _model()
    message = auto_move_message(model, "auto", torch.device("cuda", 0))
    assert message is not None
    assert "device='auto'" in message and "from cpu to cuda:0" in message and "device='cpu'" in message
    assert auto_move_message(model, "auto", torch.device("cpu")) is None  # stays where it is
    assert auto_move_message(model, "cuda:0", torch.device("cuda", 0)) is None  # the caller asked for it


def test_auto_device_logs_only_a_real_move(caplog: pytest.LogCaptureFixture) -> None:
    """On CUDA a CPU model moved by ``device="auto"`` is named in a warning on the "hamu" logger; a model
    already where ``auto`` resolves to is not."""
    retain, forget = _data()
    with caplog.at_level(logging.INFO, logger="hamu"):
        unlearn(_model(), nn.functional.cross_entropy, retain, forget, UnlearnConfig(max_steps=1))
    moves = [r for r in caplog.records if r.name == "hamu" and "device='auto' moves the model" in r.message]
    if torch.cuda.is_available():
        assert len(moves) == 1 and moves[0].levelno == logging.WARNING
        assert "from cpu to cuda" in moves[0].message
    else:
        assert moves == []


def test_split_pairing_refuses_without_process_group() -> None:
    from hamu.distributed import SplitPairing

    with pytest.raises(ValueError, match="process group"):
        SplitPairing()
