"""hamu.models: the registry, the architectures, and checkpoints that never unpickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from hamu.models import (
    CheckpointError,
    build_model,
    count_parameters,
    load_checkpoint,
    model_names,
    read_checkpoint_metadata,
    save_checkpoint,
)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("name", "config", "inputs", "params"),
    [
        ("mlp", {"in_features": 64, "hidden": [128, 128]}, torch.randn(4, 1, 8, 8), (20_000, 30_000)),
        ("cnn", {}, torch.randn(4, 1, 28, 28), (50_000, 150_000)),
        ("cnn", {"hidden": 32}, torch.randn(4, 1, 28, 28), (20_000, 40_000)),
        ("resnet20", {}, torch.randn(2, 3, 32, 32), (260_000, 285_000)),
        ("text", {"vocab_size": 5000, "embed_dim": 32}, torch.randint(0, 5000, (4, 12)), (150_000, 200_000)),
    ],
)
def test_build_model_by_name(name: str, config: dict, inputs: torch.Tensor, params: tuple[int, int]) -> None:
    model = build_model(name, **config)
    out = model(inputs)
    assert out.shape == (len(inputs), 10 if name != "text" else 3)
    assert params[0] <= count_parameters(model) <= params[1]
    assert len(list(model.parameters())) >= 5  # several tensors: layer-wise HAMU has blocks to work with


def test_unknown_model_and_bad_config_are_clear() -> None:
    with pytest.raises(ValueError, match="valid names: mlp, cnn, resnet20, text"):
        build_model("vgg")
    with pytest.raises(ValueError, match="bad config for model 'cnn'"):
        build_model("cnn", depth=3)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        build_model("mlp", hidden=object())
    assert model_names() == ["mlp", "cnn", "resnet20", "text"]


def test_text_model_ignores_padding() -> None:
    model = build_model("text", vocab_size=50, embed_dim=8, hidden=8).eval()
    tokens = torch.tensor([[5, 6, 7, 0, 0, 0]])
    assert torch.allclose(model(tokens), model(tokens[:, :3]))


def _trained_resnet() -> torch.nn.Module:
    model = build_model("resnet20", widths=[4, 8, 16])
    model.train()
    model(torch.randn(8, 3, 32, 32))  # moves the BN running statistics away from their defaults
    return model.eval()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _trained_resnet()
    meta = {"seed": 3, "data_digest": "d" * 64, "recipe": {"epochs": 1}}
    path = save_checkpoint(model, tmp_path / "sub" / "m.safetensors", meta)
    loaded, got = load_checkpoint(path, expected_data_digest="d" * 64)
    assert got["architecture"] == "resnet20" and got["config"] == {"widths": [4, 8, 16]}
    assert got["seed"] == 3 and got["recipe"] == {"epochs": 1}
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.stem[1].running_mean, model.stem[1].running_mean)
    assert read_checkpoint_metadata(path)["data_digest"] == "d" * 64
    assert not list(tmp_path.glob("sub/*.tmp"))  # atomic write left nothing behind


def test_digest_mismatch_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(build_model("mlp"), tmp_path / "m.safetensors", {"data_digest": "a" * 64})
    with pytest.raises(CheckpointError, match="training-data digest mismatch"):
        load_checkpoint(path, expected_data_digest="b" * 64)


class _Exploit:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path("/tmp/hamu-pickle-ran"),))


@pytest.mark.parametrize("kind", ["torch-zip", "torch-legacy", "raw-pickle"])
def test_pickle_checkpoints_are_refused(kind: str, tmp_path: Path) -> None:
    model = build_model("mlp")
    path = tmp_path / "model.safetensors"  # the name does not matter, the bytes do
    marker = Path("/tmp/hamu-pickle-ran")
    marker.unlink(missing_ok=True)
    if kind == "torch-zip":
        torch.save({"state": model.state_dict(), "x": _Exploit()}, path)
    elif kind == "torch-legacy":
        torch.save({"state": model.state_dict(), "x": _Exploit()}, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_corrupted_checkpoints_are_refused(tmp_path: Path) -> None:
    model = build_model("cnn", hidden=16)
    good = save_checkpoint(model, tmp_path / "good.safetensors", {"data_digest": "x"})
    raw = good.read_bytes()

    flipped = tmp_path / "flipped.safetensors"
    data = bytearray(raw)
    data[-5] ^= 0xFF  # one byte of the last tensor
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="tensor digest mismatch"):
        load_checkpoint(flipped)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint at all, just text")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(garbage)

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(foreign))
    with pytest.raises(CheckpointError, match="not written by hamu"):
        load_checkpoint(foreign)

    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_header_tampering_is_refused(tmp_path: Path) -> None:
    """A header edited to claim another architecture cannot load its weights."""
    path = save_checkpoint(build_model("mlp"), tmp_path / "m.safetensors", {"data_digest": "x"})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["metadata"])
    meta["config"] = {"in_features": 65}
    header["__metadata__"]["metadata"] = json.dumps(meta)
    blob = json.dumps(header).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n :])
    with pytest.raises(CheckpointError, match="do not fit 'mlp'"):
        load_checkpoint(path)


def test_metadata_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_checkpoint(build_model("mlp"), tmp_path / "m.safetensors", {"when": object()})
    with pytest.raises(ValueError, match="needs 'architecture'"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "m.safetensors", {})
