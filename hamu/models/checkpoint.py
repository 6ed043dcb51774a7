"""Checkpoints as one safetensors file with JSON metadata in its header; nothing is ever unpickled.

Layout: the model's ``state_dict`` tensors, and in the safetensors header metadata three strings:
``format`` (``hamu-checkpoint/1``), ``metadata`` (JSON: architecture, config, seed, training-data digest,
recipe, ...) and ``tensors_sha256`` (a digest of every tensor's name, dtype, shape and bytes). One file,
written atomically, so metadata and weights cannot drift apart.

:func:`load_checkpoint` refuses, with a :class:`CheckpointError` that says why: a pickle or
``torch.save`` file (pickles run code when loaded), anything that is not a well-formed safetensors file,
a missing or foreign header, tensors whose digest does not match (corruption or tampering), a state dict
that does not fit the recorded architecture, and a training-data digest other than the expected one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hamu.models.registry import architecture_of, build_model

CHECKPOINT_FORMAT = "hamu-checkpoint/1"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


class CheckpointError(ValueError):
    """A checkpoint was refused; the message names the file and the reason."""


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256(b"hamu-tensors-v1\n")
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\t{t.dtype}\t{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's weights exactly as :func:`save_checkpoint` records them (``tensors_sha256``)."""
    return tensors_digest(_state_tensors(model))


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], metadata: Mapping[str, Any]) -> Path:
    """Write ``model``'s weights and ``metadata`` (JSON-able) to ``path`` atomically; returns the path.

    ``metadata`` should hold ``architecture`` and ``config``; for a model from :func:`build_model` they are
    filled in when missing. ``data_digest`` (the training data's digest) is what
    :func:`load_checkpoint` checks against ``expected_data_digest``.
    """
    from safetensors.torch import save as st_save

    meta = dict(metadata)
    built = architecture_of(model)
    if built is not None:
        meta.setdefault("architecture", built[0])
        meta.setdefault("config", built[1])
    for key in ("architecture", "config"):
        if key not in meta:
            raise ValueError(
                f"checkpoint metadata needs {key!r} (or a model made by hamu.models.build_model)"
            )
    try:
        meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {exc}") from None
    tensors = _state_tensors(model)
    header = {"format": CHECKPOINT_FORMAT, "metadata": meta_json, "tensors_sha256": tensors_digest(tensors)}
    blob = st_save(tensors, metadata=header)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _sniff(path: Path, raw: bytes) -> None:
    """Refuse pickles and anything that is not shaped like a safetensors file, before parsing it."""
    if raw[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"refusing {path}: it is a zip archive (torch.save format) holding a pickle; pickles can run "
            "arbitrary code. Only safetensors checkpoints written by hamu.models.save_checkpoint are loaded"
        )
    if raw[:1] == b"\x80" and len(raw) > 1 and raw[1] <= 5:
        raise CheckpointError(
            f"refusing {path}: it is a Python pickle, which can run arbitrary code when loaded. Only "
            "safetensors checkpoints written by hamu.models.save_checkpoint are loaded"
        )
    if len(raw) < 10:
        raise CheckpointError(f"refusing {path}: {len(raw)} bytes is too short to be a safetensors file")
    n = int.from_bytes(raw[:8], "little")
    if n > _MAX_HEADER or 8 + n > len(raw) or raw[8:9] != b"{":
        raise CheckpointError(
            f"refusing {path}: not a safetensors file (bad header; truncated or corrupted?)"
        )


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading or verifying its tensors."""
    p = Path(path)
    raw = _read(p)
    _sniff(p, raw)
    return _parse_header(p, raw)[0]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None


def _parse_header(path: Path, raw: bytes) -> tuple[dict[str, Any], str]:
    n = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"refusing {path}: corrupted safetensors header ({exc})") from None
    st_meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(st_meta, dict) or st_meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"refusing {path}: a safetensors file without {CHECKPOINT_FORMAT!r} metadata (not written by "
            "hamu.models.save_checkpoint)"
        )
    try:
        meta = json.loads(st_meta["metadata"])
        expected = str(st_meta["tensors_sha256"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"refusing {path}: corrupted checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict) or "architecture" not in meta or "config" not in meta:
        raise CheckpointError(f"refusing {path}: metadata lacks architecture/config")
    return meta, expected


def load_checkpoint(
    path: str | os.PathLike[str],
    expected_data_digest: str | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint and return ``(model, metadata)``; see the module docstring.

    With ``expected_data_digest``, the checkpoint must record exactly that training-data digest (the model
    was trained on the data you think it was).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    p = Path(path)
    raw = _read(p)
    _sniff(p, raw)
    meta, expected_tensors = _parse_header(p, raw)
    if expected_data_digest is not None and meta.get("data_digest") != expected_data_digest:
        raise CheckpointError(
            f"refusing {p}: training-data digest mismatch: the checkpoint records "
            f"{meta.get('data_digest')!r}, expected {expected_data_digest!r}"
        )
    try:
        tensors = st_load(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"refusing {p}: corrupted safetensors data ({exc})") from None
    actual = tensors_digest(tensors)
    if actual != expected_tensors:
        raise CheckpointError(
            f"refusing {p}: tensor digest mismatch (recorded {expected_tensors[:16]}…, "
            f"found {actual[:16]}…): the weights were corrupted or changed after saving"
        )
    try:
        model = build_model(str(meta["architecture"]), **dict(meta["config"]))
        model.load_state_dict(tensors, strict=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"refusing {p}: weights do not fit {meta['architecture']!r}: {exc}") from None
    model.to(device)
    model.eval()
    return model, meta
